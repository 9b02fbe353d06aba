//! Local MQTT ingest against a real Mosquitto, the real relay and the reference upstream.

use edge_relay_testkit as support;

use std::collections::BTreeMap;
use std::path::Path;

use edge_relay::config::{Config, MqttIngestConfig, Overflow};
use edge_relay::daemon::Daemon;
use edge_relay::event::{Event, MAX_SOURCE_LEN, now_rfc3339};
use edge_relay::ingest::mqtt::{KIND, KIND_REJECTED};
use edge_relay::outbox::OutboxStats;
use serde_json::{Value, json};
use support::mosquitto::{Mosquitto, publish_qos1, wait_subscribed};
use support::*;
use uuid::Uuid;

const GATEWAY: &str = "test-gw";
/// Topic of the readiness probe; every test's stream starts with exactly one event from it.
const PROBE: &str = "t/probe";

fn mqtt_config(data_dir: &Path, upstream_url: &str, broker_url: &str) -> Config {
    let mut c = relay_config(data_dir, upstream_url);
    c.ingest.mqtt = Some(MqttIngestConfig {
        url: broker_url.to_owned(),
        topics: vec!["t/#".to_owned()],
        ..MqttIngestConfig::default()
    });
    c
}

/// `per_topic` messages `{"n": i}` on each topic, interleaved across topics.
fn numbered(topics: &[&str], per_topic: u64) -> Vec<(String, Vec<u8>)> {
    (0..per_topic)
        .flat_map(|n| {
            topics
                .iter()
                .map(move |t| (t.to_string(), json!({"n": n}).to_string().into_bytes()))
        })
        .collect()
}

/// Waits on the outbox's commit signal (bounded by `WAIT`) until `done` holds.
async fn wait_outbox(relay: &Daemon, what: &str, done: impl Fn(&OutboxStats) -> bool) {
    let mut changes = relay.outbox.watch();
    let reached = async {
        while !done(&relay.outbox.stats()) {
            changes.changed().await.unwrap();
        }
    };
    tokio::time::timeout(WAIT, reached)
        .await
        .unwrap_or_else(|_| panic!("{what} within {WAIT:?}: {:?}", relay.outbox.stats()));
}

async fn committed_at_least(relay: &Daemon, n: u64) {
    wait_outbox(relay, &format!("{n} events committed"), |s| s.next_seq > n).await;
}

/// Asserts that each `(topic, n)` arrived as exactly `{"n": 0}`..`{"n": n-1}` in order, that
/// no other topic but one probe arrived, and that every event has kind `mqtt`.
fn assert_exactly_once_in_order(stored: &[Event], expected: &[(&str, u64)]) {
    let mut got: BTreeMap<&str, Vec<u64>> = BTreeMap::new();
    for e in stored {
        assert_eq!(e.kind, KIND, "{e:?}");
        got.entry(e.source.as_str())
            .or_default()
            .push(e.data["n"].as_u64().unwrap_or(u64::MAX));
    }
    assert_eq!(got.remove(PROBE).map(|p| p.len()), Some(1), "one probe");
    for (topic, n) in expected {
        let seq = got.remove(topic).unwrap_or_default();
        if let Some(i) = (0..seq.len().max(*n as usize)).find(|&i| seq.get(i) != Some(&(i as u64)))
        {
            panic!(
                "{topic}: {} events for {n} messages; first wrong at index {i}: {:?}",
                seq.len(),
                &seq[i.saturating_sub(3)..(i + 3).min(seq.len())]
            );
        }
    }
    assert!(got.is_empty(), "unexpected topics: {:?}", got.keys());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_text_and_binary_payloads_arrive_with_their_topic_as_source() {
    let tmp = tempfile::tempdir().unwrap();
    let broker = Mosquitto::start(false).await;
    let sink = Sink::start(&tmp.path().join("sink")).await;
    let relay = start_relay(mqtt_config(
        &tmp.path().join("relay"),
        &sink.url(),
        &broker.url(),
    ))
    .await;
    wait_subscribed(&broker.url(), PROBE).await;

    let long_topic = format!("t/{}", "x".repeat(300));
    let messages: Vec<(String, Vec<u8>)> = vec![
        ("t/json".into(), br#"{"temp": 21.5, "unit": "C"}"#.to_vec()),
        ("t/number".into(), b"42".to_vec()),
        ("t/text".into(), "héllo, not json".as_bytes().to_vec()),
        ("t/empty".into(), Vec::new()),
        ("t/binary".into(), vec![0x00, 0x9f, 0x92, 0x96, 0xff]),
        ("t/big".into(), vec![b'a'; 70_000]),
        (long_topic.clone(), b"1".to_vec()),
    ];
    let count = messages.len() as u64;
    assert_eq!(
        publish_qos1(&broker.url(), "pub", messages).await,
        count as usize
    );
    committed_at_least(&relay, 1 + count).await;
    drained(&relay).await;

    let stored = sink.events(GATEWAY, relay.outbox.stats().stream);
    assert_eq!(stored.len() as u64, 1 + count);
    let by_source: BTreeMap<&str, &Event> = stored.iter().map(|e| (e.source.as_str(), e)).collect();
    let expect = |source: &str, kind: &str, data: Value| {
        let e = by_source
            .get(source)
            .unwrap_or_else(|| panic!("no event from {source}"));
        assert_eq!((e.kind.as_str(), &e.data), (kind, &data), "{source}");
    };
    expect(PROBE, KIND, json!("probe"));
    expect("t/json", KIND, json!({"temp": 21.5, "unit": "C"}));
    expect("t/number", KIND, json!(42));
    expect("t/text", KIND, json!("héllo, not json"));
    expect("t/empty", KIND, json!(""));
    expect(
        "t/binary",
        KIND,
        json!({"encoding": "base64", "base64": "AJ+Slv8="}),
    );
    let big = by_source["t/big"];
    assert_eq!(big.kind, KIND_REJECTED);
    assert_eq!(
        (&big.data["topic"], &big.data["bytes"]),
        (&json!("t/big"), &json!(70_000))
    );
    assert!(
        big.data["reason"].as_str().unwrap().contains("65536"),
        "{}",
        big.data
    );
    let long = by_source[&long_topic[..MAX_SOURCE_LEN]];
    assert_eq!(long.kind, KIND_REJECTED);
    assert_eq!(long.data["bytes"], 1);
    relay.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_thousand_pubacked_messages_arrive_exactly_once_in_topic_order() {
    let tmp = tempfile::tempdir().unwrap();
    let broker = Mosquitto::start(false).await;
    let sink = Sink::start(&tmp.path().join("sink")).await;
    let relay = start_relay(mqtt_config(
        &tmp.path().join("relay"),
        &sink.url(),
        &broker.url(),
    ))
    .await;
    wait_subscribed(&broker.url(), PROBE).await;

    let topics = ["t/imu/0", "t/imu/1", "t/env", "t/door"];
    let acked = publish_qos1(&broker.url(), "pub", numbered(&topics, 500)).await;
    assert_eq!(acked, 2000);
    committed_at_least(&relay, 2001).await;
    drained(&relay).await;

    let stored = sink.events(GATEWAY, relay.outbox.stats().stream);
    let seqs: Vec<u64> = stored.iter().map(|e| e.seq).collect();
    assert_eq!(seqs, (1..=2001).collect::<Vec<_>>());
    let expected: Vec<(&str, u64)> = topics.iter().map(|t| (*t, 500)).collect();
    assert_exactly_once_in_order(&stored, &expected);
    relay.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_relay_restart_mid_stream_loses_and_duplicates_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let broker = Mosquitto::start(false).await;
    let url = broker.url();
    let sink = Sink::start(&tmp.path().join("sink")).await;
    let config = mqtt_config(&tmp.path().join("relay"), &sink.url(), &url);
    let relay = start_relay(config.clone()).await;
    wait_subscribed(&url, PROBE).await;

    // A keeps publishing while the relay stops; B publishes while it is down; C while it starts.
    let a = tokio::spawn(publish_qos1_owned(
        url.clone(),
        "pub-a",
        numbered(&["t/a0", "t/a1"], 1000),
    ));
    committed_at_least(&relay, 300).await;
    relay.stop().await;
    let b = publish_qos1(&url, "pub-b", numbered(&["t/b0"], 300)).await;
    let c = tokio::spawn(publish_qos1_owned(
        url.clone(),
        "pub-c",
        numbered(&["t/c0", "t/c1"], 500),
    ));
    let relay = start_relay(config).await;
    assert_eq!((a.await.unwrap(), b, c.await.unwrap()), (2000, 300, 1000));
    committed_at_least(&relay, 3301).await;
    drained(&relay).await;

    // A graceful stop acks everything it committed, so not even the documented redelivery
    // duplicate may appear.
    let stored = sink.events(GATEWAY, relay.outbox.stats().stream);
    assert_eq!(stored.len(), 3301, "exactly once");
    assert_exactly_once_in_order(
        &stored,
        &[
            ("t/a0", 1000),
            ("t/a1", 1000),
            ("t/b0", 300),
            ("t/c0", 500),
            ("t/c1", 500),
        ],
    );
    relay.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_buffer_with_reject_leaves_messages_unacked_until_they_fit() {
    let tmp = tempfile::tempdir().unwrap();
    let broker = Mosquitto::start(false).await;
    // No upstream yet: reserve its port and store, start it later.
    let (upstream, sink_dir) = Sink::start(&tmp.path().join("sink")).await.stop().await;
    let mut config = mqtt_config(
        &tmp.path().join("relay"),
        &format!("http://{upstream}/mcp"),
        &broker.url(),
    );
    config.buffer.max_bytes = 1024 * 1024;
    config.buffer.overflow = Overflow::Reject;
    config.ingest.http.max_body_bytes = 256 * 1024;
    let max_bytes = config.buffer.max_bytes;
    let relay = start_relay(config).await;
    wait_subscribed(&broker.url(), PROBE).await;

    // ~4 KiB events: about 250 fit in the buffer, 600 are published.
    let pad = "x".repeat(4000);
    let messages: Vec<(String, Vec<u8>)> = (0..200u64)
        .flat_map(|n| {
            ["t/d0", "t/d1", "t/d2"].map(|t| {
                (
                    t.to_owned(),
                    json!({"n": n, "pad": pad}).to_string().into_bytes(),
                )
            })
        })
        .collect();
    assert_eq!(publish_qos1(&broker.url(), "pub", messages).await, 600);

    // The outbox's budget for one such event (its key, id index entry and JSON), rounded up.
    let largest = Event {
        id: Uuid::now_v7(),
        seq: 99_999,
        source: "t/d0".into(),
        kind: KIND.into(),
        time: now_rfc3339(),
        data: json!({"n": 9_999, "pad": pad}),
    };
    let record = 34 + serde_json::to_vec(&largest).unwrap().len() as u64;
    wait_outbox(&relay, "buffer full", |s| {
        max_bytes - s.backlog_bytes < record
    })
    .await;
    let committed = relay.outbox.stats().next_seq - 1;
    assert!(
        committed < 601,
        "the buffer took all {committed} events; the test proves nothing"
    );

    let sink = Sink::start_on(upstream, &sink_dir).await;
    committed_at_least(&relay, 601).await;
    drained(&relay).await;
    let stored = sink.events(GATEWAY, relay.outbox.stats().stream);
    assert_eq!(stored.len(), 601);
    assert_exactly_once_in_order(&stored, &[("t/d0", 200), ("t/d1", 200), ("t/d2", 200)]);
    relay.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_restart_resumes_the_session_and_loses_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let mut broker = Mosquitto::start(true).await;
    let url = broker.url();
    let sink = Sink::start(&tmp.path().join("sink")).await;
    let relay = start_relay(mqtt_config(&tmp.path().join("relay"), &sink.url(), &url)).await;
    wait_subscribed(&url, PROBE).await;

    assert_eq!(
        publish_qos1(&url, "pub", numbered(&["t/r0"], 500)).await,
        500
    );
    committed_at_least(&relay, 200).await;
    broker.restart().await;
    // The persisted session takes these even before the ingest has reconnected.
    assert_eq!(
        publish_qos1(&url, "pub", numbered(&["t/r1"], 500)).await,
        500
    );

    // The broker died between some commits and their PUBACKs: those may come back as the
    // documented duplicates, so wait for content, not a count: every message, and each topic's
    // first copies in order.
    let expected: BTreeMap<&str, Vec<u64>> =
        [("t/r0", (0..500).collect()), ("t/r1", (0..500).collect())].into();
    let mut changes = relay.outbox.watch();
    loop {
        drained(&relay).await;
        let stored = sink.events(GATEWAY, relay.outbox.stats().stream);
        let firsts = first_copies(&stored);
        if firsts == expected {
            break;
        }
        tokio::time::timeout(WAIT, changes.changed())
            .await
            .unwrap_or_else(|_| panic!("incomplete after {WAIT:?}: {firsts:?}"))
            .unwrap();
    }
    relay.stop().await;
}

/// Per topic (probe excluded), the `n`s in order of their first arrival.
fn first_copies(stored: &[Event]) -> BTreeMap<&str, Vec<u64>> {
    let mut firsts: BTreeMap<&str, Vec<u64>> = BTreeMap::new();
    for e in stored.iter().filter(|e| e.source != PROBE) {
        let n = e.data["n"].as_u64().unwrap_or(u64::MAX);
        let seen = firsts.entry(e.source.as_str()).or_default();
        if !seen.contains(&n) {
            seen.push(n);
        }
    }
    firsts
}

async fn publish_qos1_owned(
    url: String,
    id: &'static str,
    messages: Vec<(String, Vec<u8>)>,
) -> usize {
    publish_qos1(&url, id, messages).await
}
