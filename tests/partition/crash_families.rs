//! Crash loops with real processes: `kill -9` of the relay daemon (each transport), of the
//! reference upstream and of Mosquitto, at random moments during ingest and relay.

use std::path::Path;
use std::time::{Duration, Instant};

use edge_relay::daemon::Daemon;
use edge_relay::demo::audit::audit;
use edge_relay::demo::mosquitto::Mosquitto;
use edge_relay::event::Event;
use edge_relay::outbox::Outbox;
use edge_relay::sink::SinkStore;
use rand::RngExt;
use rand::rngs::StdRng;
use uuid::Uuid;

use crate::real_net::*;
use crate::summary::FamilySummary;
use crate::support::mcp_mqtt::{MqttSink, SERVER_NAME, relay_config_mqtt};
use crate::support::process::{
    all_acked, binary, free_port, kill_9, poll_until, spawn_listening, status, write_config_with,
};
use crate::support::{Sink, WAIT, acked_at_least, drained_within, relay_config, start_relay};

/// Sets the kills of both peer families (upstream, Mosquitto) and the fleet's (sink node,
/// PostgreSQL).
pub(crate) const PEER_CYCLES_VAR: &str = "PARTITION_CRASH_PEER_CYCLES";
/// Kills of the relay daemon per family in CI; `PARTITION_CRASH_CYCLES` raises it.
const CYCLES: u64 = 50;
/// Kills of the upstream process in CI; `PARTITION_CRASH_PEER_CYCLES` sets both peer families.
const UPSTREAM_CYCLES: u64 = 50;
/// Kills of the legacy-era upstream in CI (the era variant of `crash-upstream`).
const LEGACY_UPSTREAM_CYCLES: u64 = 10;
/// Kills of Mosquitto in CI. The test sink's reconnect backoff is capped at 300 ms
/// (`tests/support/mcp_mqtt.rs`), so its reconnect does not pace a cycle.
const BROKER_CYCLES: u64 = 50;
/// Pace of the producer while a peer is killed (and of the MQTT relay family), ms between
/// batches of up to [`PEER_BATCH`]: slower than the relay delivers, so the backlog stays small.
pub(crate) const PEER_PACE_MS: std::ops::Range<u64> = 10..40;
/// Largest producer batch of a paced producer.
pub(crate) const PEER_BATCH: u64 = 20;
/// Kills per run (a run is one setup, one producer, one audit).
const CYCLES_PER_RUN: u64 = 25;
/// Liveness bound after the last restart: reconnect, acked seq, then the backlog that built up
/// while the victim was down (≈10 s measured for Mosquitto on a loaded 2-core box).
const DRAIN_BOUND: Duration = Duration::from_secs(45);
/// Bound on a producer's last batch.
const PRODUCER_STOP: Duration = Duration::from_secs(30);
/// A kill lands this many ms (random) after the victim showed progress.
pub(crate) const KILL_AFTER_MS: std::ops::Range<u64> = 0..150;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_relay_http() {
    relay_family("crash-relay-http", false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_relay_mqtt() {
    relay_family("crash-relay-mqtt", true).await;
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

/// What a run leaves for its verdict.
pub(crate) struct RunEnd {
    /// `(seq, id)` of every event the producer was told "accepted".
    pub accepted: Vec<(u64, Uuid)>,
    /// The upstream's events of the relay's stream.
    pub stored: Vec<Event>,
    /// From the last restart until the backlog drained.
    pub drain: Duration,
}

/// A crash family: runs of up to `CYCLES_PER_RUN` kills (`cycles` in all, `var` overrides it),
/// each `run(rng, dir, kills)` in a fresh temp dir, then its verdict; publishes the summary.
pub(crate) async fn family(
    name: &str,
    var: &str,
    cycles: u64,
    mut run: impl AsyncFnMut(&mut StdRng, &Path, u64) -> RunEnd,
) {
    // The test function is named like its family.
    let mut rng = seeded(name, &name.replace('-', "_"));
    let mut summary = FamilySummary::new(name);
    for (i, kills) in runs(var, cycles).into_iter().enumerate() {
        let tmp = tempfile::tempdir().unwrap();
        let end = run(&mut rng, tmp.path(), kills).await;
        let result = audit(&end.accepted, &end.stored);
        let label = format!("run={i} kills={kills}");
        verdict(&mut summary, &label, &result, kills, end.drain, DRAIN_BOUND);
    }
    summary.publish();
}

/// The daemon binary `kill -9`ed at random moments while a producer posts and it relays (over
/// MCP Streamable HTTP, or MCP over MQTT), restarted on its outbox each time.
async fn relay_family(name: &str, mqtt: bool) {
    family(
        name,
        "PARTITION_CRASH_CYCLES",
        CYCLES,
        async |rng, dir, kills| relay_run(rng, dir, kills, mqtt).await,
    )
    .await;
}

async fn relay_run(rng: &mut StdRng, dir: &Path, cycles: u64, mqtt: bool) -> RunEnd {
    let broker = mqtt
        .then(|| Mosquitto::start(&dir.join("broker"), false).unwrap_or_else(|e| panic!("{e:#}")));
    let (upstream, keys) = match &broker {
        Some(b) => {
            let keys = format!(
                "transport = \"mqtt\"\nurl = \"{}\"\nserver_name = \"{SERVER_NAME}\"",
                b.url()
            );
            (
                Upstream::Mqtt(MqttSink::open(&dir.join("sink"), &b.url()).await),
                keys,
            )
        }
        None => {
            let sink = Sink::start(&dir.join("sink")).await;
            let keys = format!("url = \"{}\"", sink.url());
            (Upstream::Http(sink), keys)
        }
    };
    let store = upstream.store();
    let port = free_port();
    let config = write_config_with(
        dir,
        GATEWAY,
        port,
        &keys,
        "backoff_initial_ms = 10\nbackoff_max_ms = 200\nbatch_max_events = 50\n\
         request_timeout_ms = 2000",
    );
    let start = async || {
        let mut cmd = family_child(binary());
        cmd.args(["run", "--config"]).arg(&config);
        spawn_listening(&mut cmd, port, "the relay daemon").await
    };
    let mut child = start().await;
    // Over MQTT the relay delivers slower than a free-running producer posts: pace it.
    let producer = if mqtt {
        http_producer(port, rng.random(), PEER_BATCH, PEER_PACE_MS)
    } else {
        http_producer(port, rng.random(), 40, 0..10)
    };
    let sampler = AckedSeqSampler::start(
        move || async move { status(port).await.map(|s| (s.stream, s.acked_seq)) },
        stored_acked_seq(store.clone()),
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
        hold(rng, KILL_AFTER_MS).await;
        kill_9(&mut child);
        child = start().await;
    }
    let restarted = Instant::now();
    let accepted = producer.finish(PRODUCER_STOP).await;
    let report = status(port).await.expect("the daemon is up");
    poll_until(
        DRAIN_BOUND,
        "liveness: backlog drained",
        || status(port),
        all_acked,
    )
    .await;
    let drain = restarted.elapsed();
    sampler.finish().await;
    kill_9(&mut child);
    let stored = store.events(GATEWAY, report.stream).unwrap();
    upstream.stop().await;
    RunEnd {
        accepted,
        stored,
        drain,
    }
}

/// Relay acked seqs in the sampler's form, for an in-process relay.
pub(crate) fn outbox_acked_seq(
    outbox: Outbox,
) -> impl Fn() -> std::future::Ready<Option<(Uuid, u64)>> {
    move || {
        let s = outbox.stats();
        std::future::ready(Some((s.stream, s.acked_seq)))
    }
}

/// The end of a run whose relay is in the test process, after the last restart of its peer:
/// stops the producer, waits (bounded) for the relay to drain, stops the sampler and the relay.
/// Returns what was accepted, the relay's stream and the drain time.
pub(crate) async fn settle(
    relay: Daemon,
    producer: Producer<(u64, Uuid)>,
    sampler: AckedSeqSampler,
) -> (Vec<(u64, Uuid)>, Uuid, Duration) {
    let restarted = Instant::now();
    let accepted = producer.finish(PRODUCER_STOP).await;
    drained_within(&relay, DRAIN_BOUND).await;
    let drain = restarted.elapsed();
    sampler.finish().await;
    let stream = relay.outbox.stats().stream;
    relay.stop().await;
    (accepted, stream, drain)
}

/// The reference upstream as its own process (`edge-relay sink`), `kill -9`ed while the relay
/// delivers to it and restarted on its store; the relay runs in the test process. The sink
/// serves both eras (its default), so the relay speaks the current one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_upstream() {
    family(
        "crash-upstream",
        PEER_CYCLES_VAR,
        UPSTREAM_CYCLES,
        async |rng, dir, kills| upstream_run(rng, dir, kills, "both").await,
    )
    .await;
}

/// The same with `edge-relay sink --eras legacy` (initialize, sessions), fewer kills.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_upstream_legacy() {
    family(
        "crash-upstream-legacy",
        PEER_CYCLES_VAR,
        LEGACY_UPSTREAM_CYCLES,
        async |rng, dir, kills| upstream_run(rng, dir, kills, "legacy").await,
    )
    .await;
}

/// `eras` is the sink's `--eras` value.
async fn upstream_run(rng: &mut StdRng, dir: &Path, cycles: u64, eras: &str) -> RunEnd {
    let sink_dir = dir.join("sink");
    let listen = free_port();
    let start = async || {
        let mut cmd = family_child(binary());
        cmd.args(["sink", "--eras", eras, "--listen", &listen.to_string()])
            .arg("--data-dir")
            .arg(&sink_dir);
        spawn_listening(&mut cmd, listen, "the sink").await
    };
    let mut sink = start().await;
    let url = format!("http://{listen}/mcp");
    let relay = start_relay(relay_config(&dir.join("relay"), &url)).await;
    let producer = http_producer(relay.ingest_addr, rng.random(), PEER_BATCH, PEER_PACE_MS);
    let sampler =
        AckedSeqSampler::start(outbox_acked_seq(relay.outbox.clone()), mcp_acked_seq(url));
    for _ in 0..cycles {
        // A random moment while the relay delivers to this life of the upstream.
        acked_at_least(&relay, relay.outbox.stats().acked_seq + 1).await;
        hold(rng, KILL_AFTER_MS).await;
        kill_9(&mut sink);
        sink = start().await;
    }
    let want = if eras == "legacy" {
        "2025-11-25"
    } else {
        "2026-07-28"
    };
    let negotiated = relay.status.report(GATEWAY, &relay.outbox.stats());
    assert_eq!(negotiated.protocol_version.as_deref(), Some(want));
    let (accepted, stream, drain) = settle(relay, producer, sampler).await;
    kill_9(&mut sink);
    let store = SinkStore::open(&sink_dir).unwrap();
    RunEnd {
        accepted,
        stored: store.events(GATEWAY, stream).unwrap(),
        drain,
    }
}

/// Mosquitto `kill -9`ed while it carries MCP over MQTT between the relay and the reference
/// upstream (both in the test process, both reconnecting on their own), restarted on its port.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_mosquitto() {
    family(
        "crash-mosquitto",
        PEER_CYCLES_VAR,
        BROKER_CYCLES,
        mosquitto_run,
    )
    .await;
}

async fn mosquitto_run(rng: &mut StdRng, dir: &Path, cycles: u64) -> RunEnd {
    let mut broker =
        Mosquitto::start(&dir.join("broker"), false).unwrap_or_else(|e| panic!("{e:#}"));
    let sink = MqttSink::open(&dir.join("sink"), &broker.url()).await;
    let relay = start_relay(relay_config_mqtt(&dir.join("relay"), &broker.url())).await;
    let sampler = AckedSeqSampler::start(
        outbox_acked_seq(relay.outbox.clone()),
        stored_acked_seq(sink.store().clone()),
    );
    let producer = http_producer(relay.ingest_addr, rng.random(), PEER_BATCH, PEER_PACE_MS);
    for _ in 0..cycles {
        acked_at_least(&relay, relay.outbox.stats().acked_seq + 1).await;
        hold(rng, KILL_AFTER_MS).await;
        broker.kill();
        broker
            .restart()
            .unwrap_or_else(|e| panic!("restarting mosquitto: {e:#}"));
    }
    let (accepted, stream, drain) = settle(relay, producer, sampler).await;
    let store = sink.stop().await;
    RunEnd {
        accepted,
        stored: store.events(GATEWAY, stream).unwrap(),
        drain,
    }
}
