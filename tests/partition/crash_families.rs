//! Crash loops with real processes: `kill -9` of the relay daemon (each transport), of the
//! reference upstream and of Mosquitto, at random moments during ingest and relay.

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use edge_relay::audit::audit;
use edge_relay::local_client;
use edge_relay::mosquitto::Mosquitto;
use edge_relay::outbox::Outbox;
use edge_relay::sink::SinkStore;
use edge_relay::status::StatusReport;
use hyper::Method;
use rand::RngExt;
use uuid::Uuid;

use crate::real_net::*;
use crate::summary::FamilySummary;
use crate::support::mcp_mqtt::{MqttSink, SERVER_NAME, relay_config_mqtt};
use crate::support::{Sink, WAIT, acked_at_least, drained_within, relay_config, start_relay};

/// Kills of the relay daemon per family in CI; `PARTITION_CRASH_CYCLES` raises it.
const CYCLES: u64 = 50;
/// Kills of the upstream process in CI; `PARTITION_CRASH_PEER_CYCLES` sets both peer families.
const UPSTREAM_CYCLES: u64 = 35;
/// Kills of Mosquitto in CI (50 peer kills with the upstream's). Fewer: after each, the sink's
/// own MQTT reconnect backoff (capped at 5 s, reset only after 30 s healthy) paces a cycle.
const BROKER_CYCLES: u64 = 15;
/// Pace of the producer while a peer is killed (and of the MQTT relay family), ms between
/// batches of up to [`PEER_BATCH`]: slower than the relay delivers, so the backlog stays small.
const PEER_PACE_MS: std::ops::Range<u64> = 10..40;
/// Largest producer batch of a paced producer.
const PEER_BATCH: u64 = 20;
/// Kills per run (a run is one setup, one producer, one audit).
const CYCLES_PER_RUN: u64 = 25;
/// Liveness bound after the last restart: reconnect, cursor, then the backlog that built up
/// while the victim was down (≈10 s measured for Mosquitto on a loaded 2-core box).
const DRAIN_BOUND: Duration = Duration::from_secs(45);
/// Bound on a producer's last batch.
const PRODUCER_STOP: Duration = Duration::from_secs(30);
/// A kill lands this many ms (random) after the victim showed progress.
const KILL_AFTER_MS: std::ops::Range<u64> = 0..150;

fn binary() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_edge-relay"));
    command
        .env(
            "RUST_LOG",
            std::env::var("PARTITION_CHILD_LOG").unwrap_or_else(|_| "error".into()),
        )
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit());
    command
}

fn free_port() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

/// `kill -9` and reap.
fn kill_9(child: &mut Child) {
    child.kill().unwrap();
    child.wait().unwrap();
}

/// Polls (bounded by [`WAIT`]) until `addr` accepts TCP connections.
async fn wait_listening(addr: SocketAddr, what: &str) {
    let deadline = Instant::now() + WAIT;
    while tokio::net::TcpStream::connect(addr).await.is_err() {
        assert!(Instant::now() < deadline, "{what} not up within {WAIT:?}");
        tokio::time::sleep(RETRY_PAUSE).await;
    }
}

/// The daemon's `/v1/status`, or `None` while it is down.
async fn status(addr: SocketAddr) -> Option<StatusReport> {
    let (code, body) = local_client::request(addr, Method::GET, "/v1/status", vec![])
        .await
        .ok()?;
    (code == 200).then(|| serde_json::from_str(&body).ok())?
}

/// Polls (bounded) until `done` holds for what `probe` answers; returns the elapsed time.
async fn poll_until<T, F, Fut>(
    bound: Duration,
    what: &str,
    probe: F,
    done: impl Fn(&T) -> bool,
) -> Duration
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let started = Instant::now();
    loop {
        if probe().await.is_some_and(|v| done(&v)) {
            return started.elapsed();
        }
        assert!(started.elapsed() < bound, "{what} within {bound:?}");
        tokio::time::sleep(RETRY_PAUSE).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_relay_http() {
    relay_family("crash-relay-http", "crash_relay_http", false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_relay_mqtt() {
    relay_family("crash-relay-mqtt", "crash_relay_mqtt", true).await;
}

/// Runs of `CYCLES_PER_RUN` kills until the family's cycles are done.
fn runs(var: &str, cycles: u64) -> Vec<u64> {
    let mut left = count_from_env(var, cycles);
    let mut runs = Vec::new();
    while left > 0 {
        runs.push(left.min(CYCLES_PER_RUN));
        left -= runs[runs.len() - 1];
    }
    runs
}

/// The daemon binary `kill -9`ed at random moments while a producer posts and it relays (over
/// MCP Streamable HTTP, or MCP over MQTT), restarted on its outbox each time.
async fn relay_family(name: &str, test: &str, mqtt: bool) {
    let mut rng = seeded(name, test);
    let mut summary = FamilySummary::new(name);
    for (run, cycles) in runs("PARTITION_CRASH_CYCLES", CYCLES)
        .into_iter()
        .enumerate()
    {
        let tmp = tempfile::tempdir().unwrap();
        let broker = mqtt.then(|| {
            Mosquitto::start(&tmp.path().join("broker"), false).unwrap_or_else(|e| panic!("{e:#}"))
        });
        let (mut mqtt_sink, mut http_sink) = (None::<MqttSink>, None::<Sink>);
        let (upstream, store) = match &broker {
            Some(b) => {
                let sink = MqttSink::open(&tmp.path().join("sink"), &b.url());
                let store = sink.store.clone();
                mqtt_sink = Some(sink);
                let keys = format!(
                    "transport = \"mqtt\"\nurl = \"{}\"\nserver_name = \"{SERVER_NAME}\"",
                    b.url()
                );
                (keys, store)
            }
            None => {
                let sink = Sink::start(&tmp.path().join("sink")).await;
                let (keys, store) = (format!("url = \"{}\"", sink.url()), sink.store.clone());
                http_sink = Some(sink);
                (keys, store)
            }
        };
        let port = free_port();
        let config = tmp.path().join("edge-relay.toml");
        std::fs::write(
            &config,
            format!(
                "gateway_id = \"{GATEWAY}\"\ndata_dir = \"{}\"\n[ingest.http]\nlisten = \"{port}\"\n\
                 [upstream]\n{upstream}\n[relay]\nbackoff_initial_ms = 10\nbackoff_max_ms = 200\n\
                 batch_max_events = 50\nrequest_timeout_ms = 2000\n",
                tmp.path().join("relay").display(),
            ),
        )
        .unwrap();
        let spawn = || {
            binary()
                .args(["run", "--config"])
                .arg(&config)
                .spawn()
                .expect("spawn edge-relay run")
        };
        let mut child = spawn();
        wait_listening(port, "the relay daemon").await;
        // Over MQTT the relay delivers slower than a free-running producer posts: pace it.
        let producer = if mqtt {
            http_producer(port, rng.random(), PEER_BATCH, PEER_PACE_MS)
        } else {
            http_producer(port, rng.random(), 40, 0..10)
        };
        let sampler = CursorSampler::start(
            move || async move { status(port).await.map(|s| (s.stream, s.acked_seq)) },
            store_mark(store.clone()),
        );
        for cycle in 0..cycles {
            // A random moment after this life accepted a batch or, every third kill, after it
            // delivered one.
            if cycle % 3 == 2 {
                let before = status(port).await.map_or(0, |s| s.acked_seq);
                poll_until(
                    WAIT,
                    "a batch delivered",
                    || status(port),
                    |s| s.acked_seq > before,
                )
                .await;
            } else {
                let before = producer.batches();
                poll_until(
                    WAIT,
                    "a batch accepted",
                    || async { Some(producer.batches()) },
                    |n| *n > before,
                )
                .await;
            }
            hold(&mut rng, KILL_AFTER_MS).await;
            kill_9(&mut child);
            child = spawn();
            wait_listening(port, "the relay daemon").await;
        }
        let restarted = Instant::now();
        let accepted = producer.finish(PRODUCER_STOP).await;
        let report = status(port).await.expect("the daemon is up");
        poll_until(
            DRAIN_BOUND,
            "liveness: backlog drained",
            || status(port),
            |s| s.backlog_events == 0 && s.acked_seq + 1 == s.next_seq,
        )
        .await;
        let drain = restarted.elapsed();
        sampler.finish().await;
        kill_9(&mut child);
        let result = audit(&accepted, &store.events(GATEWAY, report.stream).unwrap());
        let label = format!("run={run} kills={cycles}");
        if let Some(sink) = mqtt_sink {
            sink.stop().await;
        }
        if let Some(sink) = http_sink {
            sink.stop().await;
        }
        verdict(&mut summary, &label, &result, cycles, drain, DRAIN_BOUND);
    }
    summary.publish();
}

/// Relay acked seqs in the sampler's form, for an in-process relay.
fn outbox_cursor(outbox: Outbox) -> impl Fn() -> std::future::Ready<Option<(Uuid, u64)>> {
    move || {
        let s = outbox.stats();
        std::future::ready(Some((s.stream, s.acked_seq)))
    }
}

/// The reference upstream as its own process (`edge-relay sink`), `kill -9`ed while the relay
/// delivers to it and restarted on its store; the relay runs in the test process.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_upstream() {
    let mut rng = seeded("crash-upstream", "crash_upstream");
    let mut summary = FamilySummary::new("crash-upstream");
    for (run, cycles) in runs("PARTITION_CRASH_PEER_CYCLES", UPSTREAM_CYCLES)
        .into_iter()
        .enumerate()
    {
        let tmp = tempfile::tempdir().unwrap();
        let sink_dir = tmp.path().join("sink");
        let listen = free_port();
        let spawn = || {
            binary()
                .args(["sink", "--listen", &listen.to_string(), "--data-dir"])
                .arg(&sink_dir)
                .spawn()
                .expect("spawn edge-relay sink")
        };
        let mut sink = spawn();
        wait_listening(listen, "the sink").await;
        let relay = start_relay(relay_config(
            &tmp.path().join("relay"),
            &format!("http://{listen}/mcp"),
        ))
        .await;
        let producer = http_producer(relay.ingest_addr, rng.random(), PEER_BATCH, PEER_PACE_MS);
        let sampler = CursorSampler::start(
            outbox_cursor(relay.outbox.clone()),
            mcp_mark(format!("http://{listen}/mcp")),
        );
        for _ in 0..cycles {
            // A random moment while the relay delivers to this life of the upstream.
            acked_at_least(&relay, relay.outbox.stats().acked_seq + 1).await;
            hold(&mut rng, KILL_AFTER_MS).await;
            kill_9(&mut sink);
            sink = spawn();
            wait_listening(listen, "the sink").await;
        }
        let restarted = Instant::now();
        let accepted = producer.finish(PRODUCER_STOP).await;
        drained_within(&relay, DRAIN_BOUND).await;
        let drain = restarted.elapsed();
        sampler.finish().await;
        let stream = relay.outbox.stats().stream;
        relay.stop().await;
        kill_9(&mut sink);
        let store = SinkStore::open(&sink_dir).unwrap();
        let result = audit(&accepted, &store.events(GATEWAY, stream).unwrap());
        let label = format!("run={run} kills={cycles}");
        verdict(&mut summary, &label, &result, cycles, drain, DRAIN_BOUND);
    }
    summary.publish();
}

/// Mosquitto `kill -9`ed while it carries MCP over MQTT between the relay and the reference
/// upstream (both in the test process, both reconnecting on their own), restarted on its port.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_mosquitto() {
    let mut rng = seeded("crash-mosquitto", "crash_mosquitto");
    let mut summary = FamilySummary::new("crash-mosquitto");
    for (run, cycles) in runs("PARTITION_CRASH_PEER_CYCLES", BROKER_CYCLES)
        .into_iter()
        .enumerate()
    {
        let tmp = tempfile::tempdir().unwrap();
        let mut broker =
            Mosquitto::start(&tmp.path().join("broker"), false).unwrap_or_else(|e| panic!("{e:#}"));
        let sink = MqttSink::open(&tmp.path().join("sink"), &broker.url());
        let relay = start_relay(relay_config_mqtt(&tmp.path().join("relay"), &broker.url())).await;
        let sampler = CursorSampler::start(
            outbox_cursor(relay.outbox.clone()),
            store_mark(sink.store.clone()),
        );
        let producer = http_producer(relay.ingest_addr, rng.random(), PEER_BATCH, PEER_PACE_MS);
        for _ in 0..cycles {
            acked_at_least(&relay, relay.outbox.stats().acked_seq + 1).await;
            hold(&mut rng, KILL_AFTER_MS).await;
            broker.kill();
            broker
                .restart()
                .unwrap_or_else(|e| panic!("restarting mosquitto: {e:#}"));
        }
        let restarted = Instant::now();
        let accepted = producer.finish(PRODUCER_STOP).await;
        drained_within(&relay, DRAIN_BOUND).await;
        let drain = restarted.elapsed();
        sampler.finish().await;
        let stream = relay.outbox.stats().stream;
        relay.stop().await;
        let store: Arc<SinkStore> = sink.stop().await;
        let result = audit(&accepted, &store.events(GATEWAY, stream).unwrap());
        let label = format!("run={run} kills={cycles}");
        verdict(&mut summary, &label, &result, cycles, drain, DRAIN_BOUND);
    }
    summary.publish();
}
