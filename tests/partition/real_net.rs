//! Shared harness of the families over real sockets and processes: seeds, producers, the
//! acked seq sampler and the per-run verdict.

use std::future::Future;
use std::net::SocketAddr;
use std::ops::Range;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use edge_relay::cli::local_client;
use edge_relay::contract::{CURSOR_TOOL, CursorArgs, INGEST_TOOL};
use edge_relay::demo::audit::Audit;
use edge_relay::event::Event;
use edge_relay::sink::{SinkBackend, SinkStore};
use edge_relay::tls::ClientTls;
use edge_relay::uplink::Connector;
use edge_relay::uplink::http::HttpConnector;
use edge_relay::uplink::{EraChoice, SessionConfig};
use futures::future::BoxFuture;
use hyper::Method;
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use serde_json::{Value, json};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::summary::FamilySummary;
use crate::support::mcp_mqtt::MqttSink;
use crate::support::mosquitto::publish_qos1;
use crate::support::process::child_command;
use crate::support::{Sink, accepted, event};

/// Gateway id of every family's relay.
pub const GATEWAY: &str = "test-gw";
/// Pause between a producer's attempts while the daemon is down (a producer's own retry pace).
pub const RETRY_PAUSE: Duration = Duration::from_millis(20);
/// How often the sampler compares the relay's acked seq with the upstream's acked seq.
const SAMPLE_EVERY: Duration = Duration::from_millis(20);

/// The run's seed: `PARTITION_SEED` if set, else a fresh one; printed with the command that
/// replays it (`test` is the test's name filter).
///
/// # Panics
/// `PARTITION_SEED` is not a u64.
pub fn seeded(family: &str, test: &str) -> StdRng {
    let seed = match std::env::var("PARTITION_SEED") {
        Ok(s) => s
            .parse()
            .unwrap_or_else(|_| panic!("PARTITION_SEED={s} is not a u64")),
        Err(_) => rand::random(),
    };
    eprintln!(
        "partition: family={family} seed={seed} (replay: PARTITION_SEED={seed} cargo test --test partition {test} -- --nocapture)"
    );
    StdRng::seed_from_u64(seed)
}

/// A count from the environment variable `var`, else `default`.
///
/// # Panics
/// The variable is set but not a u64.
pub fn count_from_env(var: &str, default: u64) -> u64 {
    std::env::var(var).map_or(default, |s| {
        s.parse()
            .unwrap_or_else(|_| panic!("{var}={s} is not a u64"))
    })
}

/// Sleeps a random number of milliseconds in `range`: how long a fault lasts or when a kill
/// lands, never a wait for a condition.
pub async fn hold(rng: &mut StdRng, range_ms: Range<u64>) {
    tokio::time::sleep(Duration::from_millis(rng.random_range(range_ms))).await;
}

/// `program` as a family's child process: `RUST_LOG` from `PARTITION_CHILD_LOG` (default
/// `error`), no stdin, stdout discarded, stderr inherited.
pub fn family_child(program: &str) -> Command {
    let log = std::env::var("PARTITION_CHILD_LOG").unwrap_or_else(|_| "error".into());
    child_command(program, &log)
}

/// A run's reference upstream in the test process: over MCP Streamable HTTP or MCP over MQTT.
pub enum Upstream {
    /// Served over MCP Streamable HTTP on loopback.
    Http(Sink),
    /// Served over MCP over MQTT through a broker.
    Mqtt(MqttSink),
}

impl Upstream {
    /// The upstream's own store.
    pub fn store(&self) -> Arc<SinkStore> {
        match self {
            Upstream::Http(sink) => sink.store().clone(),
            Upstream::Mqtt(sink) => sink.store().clone(),
        }
    }

    /// Stops serving (the store stays readable through [`Upstream::store`]'s handles).
    pub async fn stop(self) {
        match self {
            Upstream::Http(sink) => {
                sink.stop().await;
            }
            Upstream::Mqtt(sink) => {
                sink.stop().await;
            }
        }
    }
}

/// A producer in its own task; [`Producer::finish`] stops it after its current batch and
/// returns what it was told "accepted".
pub struct Producer<T> {
    stop: CancellationToken,
    batches: Arc<AtomicUsize>,
    task: JoinHandle<Vec<T>>,
}

/// Called by a producer after each batch answered "accepted".
pub type Counted = Box<dyn Fn() + Send + Sync>;

impl<T: Send + 'static> Producer<T> {
    /// Runs `body(stopped, counted)` in a task: it produces until `stopped` is cancelled,
    /// calls `counted()` after each accepted batch and returns what was accepted.
    pub fn spawn<F, Fut>(body: F) -> Self
    where
        F: FnOnce(CancellationToken, Counted) -> Fut,
        Fut: Future<Output = Vec<T>> + Send + 'static,
    {
        let stop = CancellationToken::new();
        let batches = Arc::new(AtomicUsize::new(0));
        let counter = batches.clone();
        let counted: Counted = Box::new(move || {
            counter.fetch_add(1, Ordering::SeqCst);
        });
        let task = tokio::spawn(body(stop.clone(), counted));
        Self {
            stop,
            batches,
            task,
        }
    }

    /// Batches answered "accepted" so far.
    pub fn batches(&self) -> usize {
        self.batches.load(Ordering::SeqCst)
    }

    /// Stops after the batch in progress (bounded by `bound`); returns everything accepted.
    ///
    /// # Panics
    /// The producer failed (a refusal it cannot retry) or did not stop within `bound`.
    pub async fn finish(self, bound: Duration) -> Vec<T> {
        self.stop.cancel();
        tokio::time::timeout(bound, self.task)
            .await
            .unwrap_or_else(|_| panic!("producer did not finish within {bound:?}"))
            .expect("producer task")
    }
}

/// Posts batches of 1..=`max_batch` events to the HTTP ingest at `addr`, one every `pace_ms`
/// (random in the range), retrying each batch (same ids) until it gets a 200; a 4xx is a
/// failure. Returns `(seq, id)` as answered.
pub fn http_producer(
    addr: SocketAddr,
    seed: u64,
    max_batch: u64,
    pace_ms: Range<u64>,
) -> Producer<(u64, Uuid)> {
    Producer::spawn(move |stopped, counted| async move {
        let mut rng = StdRng::seed_from_u64(seed);
        let mut log = Vec::new();
        let mut n = 0;
        while !stopped.is_cancelled() {
            let size = rng.random_range(1..=max_batch);
            let body: Vec<Value> = (0..size).map(|i| event("partition", n + i)).collect();
            n += size;
            let body = Value::Array(body).to_string().into_bytes();
            loop {
                match local_client::request(addr, Method::POST, "/v1/events", body.clone()).await {
                    Ok((200, text)) => {
                        log.extend(accepted(&serde_json::from_str(&text).unwrap()));
                        counted();
                        break;
                    }
                    Ok((code, text)) if code < 500 => panic!("refused: {code} {text}"),
                    _ => tokio::time::sleep(RETRY_PAUSE).await,
                }
            }
            hold(&mut rng, pace_ms.clone()).await;
        }
        log
    })
}

/// Publishes batches of 1..=`max_batch` QoS 1 messages `{"id": uuid, "n": i}` on `topic`
/// straight to the broker at `url`; every one must be PUBACKed with Success. Returns the ids
/// in publish order.
pub fn mqtt_producer(url: String, topic: &str, seed: u64, max_batch: u64) -> Producer<Uuid> {
    let topic = topic.to_owned();
    Producer::spawn(move |stopped, counted| async move {
        let mut rng = StdRng::seed_from_u64(seed);
        let mut ids = Vec::new();
        while !stopped.is_cancelled() {
            let size = rng.random_range(1..=max_batch) as usize;
            let batch: Vec<Uuid> = (0..size).map(|_| Uuid::now_v7()).collect();
            let messages = batch
                .iter()
                .enumerate()
                .map(|(i, id)| {
                    let payload = json!({"id": id, "n": ids.len() + i});
                    (topic.clone(), payload.to_string().into_bytes())
                })
                .collect();
            let acked = publish_qos1(&url, "partition-producer", messages).await;
            assert_eq!(acked, size, "the broker PUBACKed {acked} of {size}");
            ids.extend(batch);
            counted();
            hold(&mut rng, 0..10).await;
        }
        ids
    })
}

/// `(seq, id)` pairs for producers that are not told seqs (MQTT ingest): each id in publish
/// order with the seq the upstream stored it under, so [`audit`] checks that the upstream's
/// order is the publish order. An id the upstream lacks gets the previous seq, so a loss also
/// shows as broken order.
pub fn seqs_from_upstream(ids: &[Uuid], stored: &[Event]) -> Vec<(u64, Uuid)> {
    let by_id: std::collections::HashMap<Uuid, u64> =
        stored.iter().map(|e| (e.id, e.seq)).collect();
    let mut last = 0;
    ids.iter()
        .map(|id| {
            last = by_id.get(id).copied().unwrap_or(last);
            (last, *id)
        })
        .collect()
}

/// Checks, every [`SAMPLE_EVERY`] while a run lasts, that the relay's acked seq never passes
/// the upstream's own acked seq (read after it, so the acked seq can only have grown).
pub struct AckedSeqSampler {
    stop: CancellationToken,
    task: JoinHandle<Result<u64, String>>,
}

impl AckedSeqSampler {
    /// Starts sampling; `relay` answers the relay's `(stream, acked_seq)` and `upstream` the
    /// upstream's acked seq of a stream, each `None` while that side is down.
    pub fn start<R, RF, U, UF>(relay: R, upstream: U) -> Self
    where
        R: Fn() -> RF + Send + 'static,
        RF: Future<Output = Option<(Uuid, u64)>> + Send,
        U: Fn(Uuid) -> UF + Send + 'static,
        UF: Future<Output = Option<u64>> + Send,
    {
        let stop = CancellationToken::new();
        let stopped = stop.clone();
        let task = tokio::spawn(async move {
            let mut samples = 0;
            while !stopped.is_cancelled() {
                if let Some((stream, acked)) = relay().await
                    && let Some(acked_seq) = upstream(stream).await
                {
                    if acked > acked_seq {
                        return Err(format!(
                            "relay acked_seq {acked} passed the upstream's acked seq {acked_seq}"
                        ));
                    }
                    samples += 1;
                }
                tokio::select! {
                    () = stopped.cancelled() => {}
                    () = tokio::time::sleep(SAMPLE_EVERY) => {}
                }
            }
            Ok(samples)
        });
        Self { stop, task }
    }

    /// Stops sampling; returns how many samples were compared.
    ///
    /// # Panics
    /// A sample found the relay ahead of the upstream, or none was taken.
    pub async fn finish(self) -> u64 {
        self.stop.cancel();
        let samples = self
            .task
            .await
            .expect("sampler task")
            .unwrap_or_else(|e| panic!("safety: {e}"));
        assert!(samples > 0, "the acked seq sampler took no sample");
        samples
    }
}

/// The upstream's acked seq read from its store in this process (`edge_cursor`'s answer, durable):
/// a sled store, or the PostgreSQL database of a fleet.
pub fn stored_acked_seq(
    store: impl Into<SinkBackend>,
) -> impl Fn(Uuid) -> BoxFuture<'static, Option<u64>> {
    let store: SinkBackend = store.into();
    move |stream| {
        let store = store.clone();
        Box::pin(async move {
            Some(
                store
                    .cursor(GATEWAY, stream)
                    .await
                    .ok()?
                    .acked_seq_or_zero(),
            )
        })
    }
}

/// The upstream's acked seq asked over MCP (session start, `edge_cursor`) on a fresh session, for an
/// upstream in another process; `None` while it does not answer.
pub fn mcp_acked_seq(url: String) -> impl Fn(Uuid) -> BoxFuture<'static, Option<u64>> {
    move |stream| {
        let url = url.clone();
        Box::pin(async move {
            let timeout = Duration::from_secs(2);
            let connector = HttpConnector::new(
                &url,
                None,
                ClientTls::new("upstream.tls", Default::default()),
                timeout,
            )
            .ok()?;
            let session = connector
                .connect(SessionConfig {
                    ingest_tool: INGEST_TOOL.to_owned(),
                    cursor_tool: CURSOR_TOOL.to_owned(),
                    request_timeout: timeout,
                    era: EraChoice::PreferCurrent,
                })
                .await
                .ok()?;
            let args = CursorArgs {
                gateway: GATEWAY.to_owned(),
                stream,
            };
            let ack = session.cursor(&args).await;
            session.close().await;
            Some(ack.ok()?.acked_seq_or_zero())
        })
    }
}

/// The verdict of one run: exactly once, in order, drained within `bound`; then it counts in
/// `summary`.
///
/// # Panics
/// Any invariant broken (the message has the audit and the drain time).
pub fn verdict(
    summary: &mut FamilySummary,
    run: &str,
    audit: &Audit,
    faults: u64,
    drain: Duration,
    bound: Duration,
) {
    eprintln!(
        "partition: family={} {run}: {audit} faults={faults} drain={drain:?}",
        summary.family
    );
    assert!(audit.is_clean(), "{} {run}: {audit}", summary.family);
    assert!(
        audit.produced > 0,
        "{} {run}: nothing accepted",
        summary.family
    );
    assert!(
        drain <= bound,
        "{} {run}: liveness: drained in {drain:?}, bound {bound:?}",
        summary.family
    );
    summary.add_run(audit, faults, drain);
}
