//! The records that matter carry the journal fields operators filter on (`GATEWAY`, `STREAM`,
//! `SEQ`, `ACKED_SEQ`, `UPSTREAM`, `ERROR`).
//!
//! systemd-journal-logger sends to the fixed path `/run/systemd/journal/socket` (no override),
//! so instead of capturing its datagrams this test installs a capturing `log::Log` in its own
//! process, runs the real daemon against the real upstream, and checks the key-values of the
//! records. A key becomes a journal field by the logger's documented rule (`JournalLog` docs,
//! `escape_journal_key`): ASCII upper case, characters outside `A-Z0-9_` replaced by `_`, an
//! `ESCAPED_` prefix before a leading `_` or digit. The test holds every key to `[a-z][a-z0-9_]*`,
//! for which that rule is exactly `to_ascii_uppercase`.

use edge_relay_testkit as support;

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Instant;

use log::kv::{Key, Value, VisitSource};
use support::process::POLL;
use support::*;

/// One captured record: its message and its fields as the journal would name them.
#[derive(Debug, Clone)]
struct Captured {
    message: String,
    fields: BTreeMap<String, String>,
}

static RECORDS: Mutex<Vec<Captured>> = Mutex::new(Vec::new());
/// Keys the journal logger would escape rather than just upper-case (checked at the end: a
/// panic inside `log` on some runtime thread could go unnoticed).
static ESCAPED_KEYS: Mutex<Vec<String>> = Mutex::new(Vec::new());

struct Capture;

struct Fields<'a>(&'a mut BTreeMap<String, String>);

impl<'kvs> VisitSource<'kvs> for Fields<'_> {
    fn visit_pair(&mut self, key: Key<'kvs>, value: Value<'kvs>) -> Result<(), log::kv::Error> {
        let key = key.as_str();
        let mut chars = key.chars();
        let plain = chars.next().is_some_and(|c| c.is_ascii_lowercase())
            && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
        if !plain {
            ESCAPED_KEYS.lock().unwrap().push(key.to_owned());
        }
        self.0.insert(key.to_ascii_uppercase(), value.to_string());
        Ok(())
    }
}

impl log::Log for Capture {
    fn enabled(&self, metadata: &log::Metadata) -> bool {
        metadata.target().starts_with("edge_relay")
    }

    fn log(&self, record: &log::Record) {
        if !self.enabled(record.metadata()) {
            return;
        }
        let mut fields = BTreeMap::new();
        record.key_values().visit(&mut Fields(&mut fields)).unwrap();
        RECORDS.lock().unwrap().push(Captured {
            message: record.args().to_string(),
            fields,
        });
    }

    fn flush(&self) {}
}

/// The first record whose message contains `text`, waiting (bounded by [`WAIT`]) for it.
async fn record(text: &str) -> Captured {
    let deadline = Instant::now() + WAIT;
    loop {
        let found = RECORDS
            .lock()
            .unwrap()
            .iter()
            .find(|r| r.message.contains(text))
            .cloned();
        if let Some(r) = found {
            return r;
        }
        assert!(
            Instant::now() < deadline,
            "no record {text:?}; got {:?}",
            RECORDS.lock().unwrap()
        );
        tokio::time::sleep(POLL).await;
    }
}

fn assert_fields(r: &Captured, expected: &[(&str, Option<&str>)]) {
    for (field, value) in expected {
        let got = r
            .fields
            .get(*field)
            .unwrap_or_else(|| panic!("{:?} has no {field} field: {:?}", r.message, r.fields));
        match value {
            Some(v) => assert_eq!(got, v, "{field} of {:?}", r.message),
            None => assert!(!got.is_empty(), "{field} of {:?} is empty", r.message),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_and_ingest_records_carry_gateway_stream_seq_upstream_and_error_fields() {
    log::set_logger(&Capture).unwrap();
    log::set_max_level(log::LevelFilter::Debug);
    let tmp = tempfile::tempdir().unwrap();
    let sink = Sink::start(&tmp.path().join("sink")).await;
    let url = sink.url();
    let relay = start_relay(relay_config(&tmp.path().join("relay"), &url)).await;
    let (code, answer) = post(relay.ingest_addr, event("journal", 1).to_string()).await;
    assert_eq!(code, 200, "{answer}");
    drained(&relay).await;
    let stream = relay.outbox.stats().stream.to_string();
    let gw = Some("test-gw");

    let open = record("outbox open in").await;
    assert_fields(
        &open,
        &[
            ("GATEWAY", gw),
            ("STREAM", Some(&stream)),
            ("NEXT_SEQ", Some("1")),
            ("ACKED_SEQ", Some("0")),
        ],
    );
    let session = record("upstream session opened").await;
    assert_fields(&session, &[("GATEWAY", gw), ("UPSTREAM", Some(&url))]);
    let resumed = record("resuming after the upstream's acked seq").await;
    assert_fields(
        &resumed,
        &[
            ("GATEWAY", gw),
            ("STREAM", Some(&stream)),
            ("ACKED_SEQ", None),
        ],
    );
    let committed = record("events committed").await;
    assert_fields(
        &committed,
        &[
            ("GATEWAY", gw),
            ("STREAM", Some(&stream)),
            ("SEQ", Some("1")),
            ("LAST_SEQ", Some("1")),
        ],
    );
    let acked = record("batch acknowledged").await;
    assert_fields(
        &acked,
        &[
            ("GATEWAY", gw),
            ("STREAM", Some(&stream)),
            ("SEQ", Some("1")),
            ("ACKED_SEQ", Some("1")),
        ],
    );

    // The upstream goes away: the next batch fails and the retry record names the error.
    sink.stop().await;
    let (code, _) = post(relay.ingest_addr, event("journal", 2).to_string()).await;
    assert_eq!(code, 200);
    let retry = record("; retry in").await;
    assert_fields(
        &retry,
        &[("GATEWAY", gw), ("UPSTREAM", Some(&url)), ("ERROR", None)],
    );
    relay.stop().await;
    let stopped = record("outbox writer stopped").await;
    assert_fields(
        &stopped,
        &[("NEXT_SEQ", Some("3")), ("ACKED_SEQ", Some("1"))],
    );
    let escaped = ESCAPED_KEYS.lock().unwrap();
    assert!(
        escaped.is_empty(),
        "keys not plain [a-z][a-z0-9_]*: {escaped:?}"
    );
}
