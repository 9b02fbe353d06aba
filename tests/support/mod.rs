//! Shared test harness (package `edge-relay-testkit`, a dev-dependency): the real reference
//! upstream, the real relay, and an HTTP producer; each test crate imports it as `support`.

pub mod certs;
/// The sink store contract cases (also run on sled by the library's unit tests), here for the
/// PostgreSQL store's test crate.
#[path = "../../src/sink/contract_cases.rs"]
pub mod contract_cases;
pub mod fault_proxy;
pub mod mcp_mqtt;
pub mod mosquitto;
pub mod postgres;
pub mod process;
pub mod recording;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use edge_relay::cli::local_client;
use edge_relay::config::Config;
use edge_relay::contract::IngestAnswer;
use edge_relay::daemon::Daemon;
use edge_relay::event::Event;
use edge_relay::sink::{Eras, SinkHandle, SinkSpec, SinkStore};
use edge_relay::tls::server::ServerTls;
use hyper::Method;
use serde_json::Value;
use uuid::Uuid;

/// Upper bound for any wait on the system under test; a hang fails the test instead.
pub const WAIT: Duration = Duration::from_secs(60);

/// The reference upstream on loopback ([`SinkHandle`]), restartable on the same store, port
/// and eras; the constructors panic on failure.
pub struct Sink(SinkHandle);

impl std::ops::Deref for Sink {
    type Target = SinkHandle;
    fn deref(&self) -> &SinkHandle {
        &self.0
    }
}

impl Sink {
    /// Serving both MCP eras (the relay then negotiates the current one).
    pub async fn start(dir: &Path) -> Sink {
        Self::start_eras(dir, Eras::Both).await
    }

    /// Serving only the MCP revisions of `eras`.
    pub async fn start_eras(dir: &Path, eras: Eras) -> Sink {
        Self::start_with("127.0.0.1:0".parse().unwrap(), dir, eras).await
    }

    /// On `addr` (a fixed port to take over, or port 0).
    pub async fn start_on(addr: SocketAddr, dir: &Path) -> Sink {
        Self::start_with(addr, dir, Eras::Both).await
    }

    /// On `addr`, serving only the MCP revisions of `eras`.
    pub async fn start_with(addr: SocketAddr, dir: &Path, eras: Eras) -> Sink {
        Self::start_tls(addr, dir, eras, None).await
    }

    /// Serving HTTPS with `tls` (plain HTTP without).
    pub async fn start_tls(
        addr: SocketAddr,
        dir: &Path,
        eras: Eras,
        tls: Option<ServerTls>,
    ) -> Sink {
        let spec = SinkSpec {
            listen: Some(addr),
            tls,
            eras,
            ..SinkSpec::http()
        };
        Sink(SinkHandle::start(dir, spec).await.unwrap())
    }

    /// Stops abruptly (connections dropped) and releases the store; returns its address and
    /// data dir.
    pub async fn stop(self) -> (SocketAddr, PathBuf) {
        let stopped = self.0.stop().await.unwrap();
        (stopped.addr().unwrap(), stopped.dir().unwrap().to_owned())
    }

    /// Stop, then start again on the same port and store: sessions are forgotten.
    pub async fn restart(self) -> Sink {
        Sink(self.0.restart().await.unwrap())
    }

    /// The events stored for `stream` of `gateway`, in seq order.
    pub fn events(&self, gateway: &str, stream: Uuid) -> Vec<Event> {
        self.store().events(gateway, stream).unwrap()
    }
}

/// A relay config for tests: loopback, port 0, fast backoff, short timeouts.
pub fn relay_config(data_dir: &Path, upstream_url: &str) -> Config {
    let mut c = Config {
        gateway_id: "test-gw".into(),
        data_dir: data_dir.to_owned(),
        ..Config::default()
    };
    c.ingest.http.listen = "127.0.0.1:0".parse().unwrap();
    c.upstream.url = upstream_url.to_owned();
    c.relay.backoff_initial_ms = 20;
    c.relay.backoff_max_ms = 200;
    c.relay.request_timeout_ms = 2_000;
    c.relay.batch_max_events = 200;
    c
}

pub async fn start_relay(config: Config) -> Daemon {
    edge_relay::daemon::start(config, edge_relay::daemon::Seams::default())
        .await
        .unwrap()
}

/// POSTs a body to `/v1/events`; returns the status and parsed JSON answer.
pub async fn post(addr: SocketAddr, body: impl Into<Vec<u8>>) -> (u16, Value) {
    let (code, text) = local_client::request(addr, Method::POST, "/v1/events", body.into())
        .await
        .unwrap();
    let value = serde_json::from_str(&text).unwrap_or(Value::String(text));
    (code, value)
}

/// `(seq, id)` pairs of a 200 answer ([`IngestAnswer`]).
pub fn accepted(answer: &Value) -> Vec<(u64, Uuid)> {
    let answer: IngestAnswer =
        serde_json::from_value(answer.clone()).unwrap_or_else(|e| panic!("{e}: {answer}"));
    answer.pairs().unwrap()
}

/// A sensor event with a fresh producer id.
pub fn event(source: &str, n: u64) -> Value {
    serde_json::json!({"id": Uuid::now_v7(), "source": source, "kind": "sensor", "data": {"n": n}})
}

/// The relay's `/v1/status` report (gateway `test-gw`).
pub fn report(relay: &Daemon) -> edge_relay::status::StatusReport {
    relay.status.report("test-gw", &relay.outbox.stats())
}

/// Waits (on the outbox's commit signal, bounded by [`WAIT`]) until everything is acknowledged.
pub async fn drained(relay: &Daemon) {
    drained_within(relay, WAIT).await;
}

/// Waits (on the outbox's commit signal) until everything is acknowledged; returns how long
/// that took.
///
/// # Panics
/// Not drained within `bound`.
pub async fn drained_within(relay: &Daemon, bound: Duration) -> Duration {
    let started = std::time::Instant::now();
    let mut changes = relay.outbox.watch();
    let done = async {
        loop {
            let s = relay.outbox.stats();
            if s.backlog_events == 0 && s.acked_seq + 1 == s.next_seq {
                return;
            }
            changes.changed().await.unwrap();
        }
    };
    tokio::time::timeout(bound, done).await.unwrap_or_else(|_| {
        panic!(
            "backlog not drained within {bound:?}: {:?}",
            relay.outbox.stats()
        )
    });
    started.elapsed()
}

/// Waits until the relay's acknowledged seq reaches `seq`.
pub async fn acked_at_least(relay: &Daemon, seq: u64) {
    let mut changes = relay.outbox.watch();
    let reached = async {
        while relay.outbox.stats().acked_seq < seq {
            changes.changed().await.unwrap();
        }
    };
    tokio::time::timeout(WAIT, reached)
        .await
        .unwrap_or_else(|_| panic!("acked_seq never reached {seq}: {:?}", relay.outbox.stats()));
}

/// Waits (on the status board's change signal, bounded by [`WAIT`]) until the relay's
/// `last_error` contains every one of `needles`; returns it.
pub async fn error_containing(relay: &Daemon, needles: &[&str]) -> String {
    let mut changes = relay.status.watch();
    let found = async {
        loop {
            if let Some(e) = report(relay).last_error
                && needles.iter().all(|n| e.contains(n))
            {
                return e;
            }
            changes.changed().await.unwrap();
        }
    };
    tokio::time::timeout(WAIT, found).await.unwrap_or_else(|_| {
        panic!(
            "no error with {needles:?} within {WAIT:?}; last: {:?}",
            report(relay).last_error
        )
    })
}

/// Posts `n` events (one request) and returns their `(seq, id)`s.
pub async fn post_events(relay: &Daemon, source: &str, n: u64) -> Vec<(u64, Uuid)> {
    let body: Vec<Value> = (0..n).map(|i| event(source, i)).collect();
    let (code, answer) = post(relay.ingest_addr, serde_json::to_vec(&body).unwrap()).await;
    assert_eq!(code, 200, "{answer}");
    accepted(&answer)
}

/// The ids the upstream stored for this relay's stream, in seq order, are exactly `sent`'s.
pub fn assert_stored_exactly_once(store: &SinkStore, relay: &Daemon, sent: &[(u64, Uuid)]) {
    assert_stream_holds(store, relay.outbox.stats().stream, sent);
}

/// The ids the upstream stored for `stream` of gateway `test-gw`, in seq order, are exactly
/// `sent`'s.
pub fn assert_stream_holds(store: &SinkStore, stream: Uuid, sent: &[(u64, Uuid)]) {
    let stored = store.events("test-gw", stream).unwrap();
    let got: Vec<(u64, Uuid)> = stored.iter().map(|e| (e.seq, e.id)).collect();
    assert_eq!(
        got, sent,
        "exactly the accepted events, once each, in order"
    );
}

/// Nothing of the relay's stream reached `store` and its acked seq did not move.
pub fn assert_nothing_delivered(store: &SinkStore, relay: &Daemon) {
    assert_eq!(relay.outbox.stats().acked_seq, 0, "the acked seq moved");
    let stream = relay.outbox.stats().stream;
    assert!(
        store.events("test-gw", stream).unwrap().is_empty(),
        "the upstream stored events"
    );
}
