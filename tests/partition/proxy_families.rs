//! Families over real sockets: the fault proxy between the relay and its peer, randomized
//! schedules from a seed, the relay's timeouts made small by config.

use std::sync::Arc;
use std::time::{Duration, Instant};

use edge_relay::config::{Config, MqttIngestConfig};
use edge_relay::demo::audit::audit;
use edge_relay::demo::mosquitto::Mosquitto;
use edge_relay::event::Event;
use edge_relay::mqtt::link::KEEP_ALIVE;
use edge_relay::sink::{Eras, SinkStore};
use edge_relay::tls::server::ServerTls;
use rand::RngExt;
use rand::rngs::StdRng;
use uuid::Uuid;

use crate::real_net::*;
use crate::summary::FamilySummary;
use crate::support::certs::{Ca, Validity, client_tls};
use crate::support::fault_proxy::{FaultProxy, Mode};
use crate::support::mcp_mqtt::{MqttSink, relay_config_mqtt};
use crate::support::mosquitto::wait_subscribed;
use crate::support::process::poll_until;
use crate::support::{Sink, drained_within, relay_config, start_relay};

/// Runs per family in CI; `PARTITION_PROXY_RUNS` raises it.
const RUNS: u64 = 4;
/// Runs of the legacy-era variant of `proxy-http` in CI.
const LEGACY_RUNS: u64 = 2;
/// Runs of the mutual-TLS variant of `proxy-http` in CI.
const TLS_RUNS: u64 = 2;
/// Relay request timeout in these families, ms: how fast a blackholed uplink is detected.
const REQUEST_TIMEOUT_MS: u64 = 1_000;
/// Liveness bound of the uplink families: after the last heal, a few timeouts and backoffs.
const UPLINK_DRAIN_BOUND: Duration = Duration::from_secs(20);
/// Liveness bound of the ingest family: a blackholed broker link is only noticed by the MQTT
/// keepalive (a PINGREQ after `KEEP_ALIVE` idle, its answer due one `KEEP_ALIVE` later).
const INGEST_DRAIN_BOUND: Duration = Duration::from_secs(2 * KEEP_ALIVE.as_secs() + 20);
/// Bound on a producer's last batch.
const PRODUCER_STOP: Duration = Duration::from_secs(30);
/// Topic filter of the ingest family and the topic its producer publishes on.
const INGEST_FILTER: &str = "f/#";
const INGEST_TOPIC: &str = "f/data";
/// Topic of the ingest family's readiness probe.
const PROBE_TOPIC: &str = "f/probe";

/// Which link of the relay the proxy sits on.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Link {
    /// Relay ↔ reference upstream, MCP Streamable HTTP.
    HttpUplink,
    /// The same over HTTPS with mutual TLS (a private CA, a device certificate).
    HttpsUplink,
    /// Relay ↔ Mosquitto carrying MCP over MQTT (the sink on the same broker, unproxied).
    MqttUplink,
    /// Relay's MQTT ingest ↔ the gateway's Mosquitto (uplink HTTP, unproxied).
    MqttIngest,
}

/// The upstream serves both eras, so the relay speaks the current one (MCP 2026-07-28).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_http() {
    family("proxy-http", "proxy_http", Link::HttpUplink, Eras::Both).await;
}

/// `proxy-http` over HTTPS with mutual TLS: every reconnect is a new handshake (the
/// certificate files read again), through the same faults; fewer runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_https() {
    family("proxy-https", "proxy_https", Link::HttpsUplink, Eras::Both).await;
}

/// The same through an upstream serving only the legacy era (initialize, sessions), with
/// fewer runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_http_legacy() {
    family(
        "proxy-http-legacy",
        "proxy_http_legacy",
        Link::HttpUplink,
        Eras::Legacy,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_mqtt_uplink() {
    family(
        "proxy-mqtt-uplink",
        "proxy_mqtt_uplink",
        Link::MqttUplink,
        Eras::Both,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_mqtt_ingest() {
    family(
        "proxy-mqtt-ingest",
        "proxy_mqtt_ingest",
        Link::MqttIngest,
        Eras::Both,
    )
    .await;
}

/// Runs of a family, `PARTITION_PROXY_RUNS` if set: [`RUNS`], or [`LEGACY_RUNS`] for the
/// legacy-era variant, [`TLS_RUNS`] for the TLS one.
fn runs(link: Link, eras: Eras) -> u64 {
    let default = if eras == Eras::Legacy {
        LEGACY_RUNS
    } else if link == Link::HttpsUplink {
        TLS_RUNS
    } else {
        RUNS
    };
    count_from_env("PARTITION_PROXY_RUNS", default)
}

async fn family(name: &str, test: &str, link: Link, eras: Eras) {
    let mut rng = seeded(name, test);
    let mut summary = FamilySummary::new(name);
    // A blackholed ingest link costs up to two keepalives to notice: one such fault per family.
    let mut blackholes = if link == Link::MqttIngest {
        1
    } else {
        u64::MAX
    };
    for run in 0..runs(link, eras) {
        one_run(&mut summary, &mut rng, (link, eras), run, &mut blackholes).await;
    }
    summary.publish();
}

/// The peers of one run, kept alive until its end.
struct Peers {
    store: Arc<SinkStore>,
    proxy: FaultProxy,
    broker: Option<Mosquitto>,
    upstream: Upstream,
}

async fn peers(dir: &std::path::Path, link: Link, eras: Eras) -> (Peers, Config) {
    let relay_dir = dir.join("relay");
    let broker = matches!(link, Link::MqttUplink | Link::MqttIngest)
        .then(|| Mosquitto::start(&dir.join("broker"), false).unwrap_or_else(|e| panic!("{e:#}")));
    let (upstream, proxy, mut config) = match link {
        Link::HttpUplink => {
            let sink = Sink::start_eras(&dir.join("sink"), eras).await;
            let proxy = FaultProxy::start(sink.addr()).await;
            let config = relay_config(&relay_dir, &format!("http://{}/mcp", proxy.addr));
            (Upstream::Http(sink), proxy, config)
        }
        Link::HttpsUplink => {
            let pki = dir.join("pki");
            std::fs::create_dir_all(&pki).unwrap();
            let ca = Ca::new(&pki, "fleet");
            let server = ca.server(&pki, "upstream", &["127.0.0.1"]);
            let device = ca.client(&pki, "device", "gw-01", Validity::Current);
            let tls = ServerTls {
                cert_file: server.cert,
                key_file: server.key,
                client_ca_file: Some(ca.cert.clone()),
            };
            let any_port = "127.0.0.1:0".parse().unwrap();
            let sink = Sink::start_tls(any_port, &dir.join("sink"), eras, Some(tls)).await;
            let proxy = FaultProxy::start(sink.addr()).await;
            let mut config = relay_config(&relay_dir, &format!("https://{}/mcp", proxy.addr));
            config.upstream.tls = client_tls(&ca.cert, Some(&device));
            (Upstream::Http(sink), proxy, config)
        }
        Link::MqttUplink => {
            let b = broker.as_ref().unwrap();
            let sink = MqttSink::open(&dir.join("sink"), &b.url()).await;
            let proxy = FaultProxy::start(b.addr).await;
            let config = relay_config_mqtt(&relay_dir, &format!("mqtt://{}", proxy.addr));
            (Upstream::Mqtt(sink), proxy, config)
        }
        Link::MqttIngest => {
            let sink = Sink::start(&dir.join("sink")).await;
            let proxy = FaultProxy::start(broker.as_ref().unwrap().addr).await;
            let mut config = relay_config(&relay_dir, &sink.url());
            config.ingest.mqtt = Some(MqttIngestConfig {
                url: format!("mqtt://{}", proxy.addr),
                topics: vec![INGEST_FILTER.to_owned()],
                ..MqttIngestConfig::default()
            });
            (Upstream::Http(sink), proxy, config)
        }
    };
    let peers = Peers {
        store: upstream.store(),
        proxy,
        broker,
        upstream,
    };
    config.relay.request_timeout_ms = REQUEST_TIMEOUT_MS;
    config.relay.backoff_initial_ms = 10;
    config.relay.backoff_max_ms = 200;
    (peers, config)
}

/// A fault drawn from `rng`; blackholes only while `blackholes` lasts.
fn draw_fault(rng: &mut StdRng, blackholes: &mut u64) -> Mode {
    loop {
        let mode = match rng.random_range(0..7) {
            0 => Mode::Refuse,
            1 => Mode::Reset,
            2 => Mode::Blackhole,
            3 => Mode::Delay(Duration::from_millis(rng.random_range(20..1_500))),
            4 => Mode::Throttle(rng.random_range(1_000..50_000)),
            5 => Mode::CutAfter(rng.random_range(0..2_000)),
            _ => Mode::Pass,
        };
        if mode == Mode::Blackhole {
            if *blackholes == 0 {
                continue;
            }
            *blackholes -= 1;
        }
        return mode;
    }
}

async fn one_run(
    summary: &mut FamilySummary,
    rng: &mut StdRng,
    (link, eras): (Link, Eras),
    run: u64,
    blackholes: &mut u64,
) {
    let tmp = tempfile::tempdir().unwrap();
    let (peers, config) = peers(tmp.path(), link, eras).await;
    let relay = start_relay(config).await;
    let stream = relay.outbox.stats().stream;
    let outbox = relay.outbox.clone();
    let sampler = AckedSeqSampler::start(
        move || {
            let s = outbox.stats();
            async move { Some((s.stream, s.acked_seq)) }
        },
        stored_acked_seq(peers.store.clone()),
    );
    let seed = rng.random();
    let (http, mqtt) = match link {
        Link::MqttIngest => {
            let url = peers.broker.as_ref().unwrap().url();
            wait_subscribed(&url, PROBE_TOPIC).await;
            (None, Some(mqtt_producer(url, INGEST_TOPIC, seed, 30)))
        }
        _ => (
            Some(http_producer(relay.ingest_addr, seed, 40, 0..10)),
            None,
        ),
    };

    let mut schedule = Vec::new();
    for step in 0..rng.random_range(2..=4) {
        let mode = if link == Link::MqttIngest && run == 0 && step == 0 {
            // The ingest family's one blackhole, while its broker link is surely up.
            *blackholes -= 1;
            Mode::Blackhole
        } else {
            draw_fault(rng, blackholes)
        };
        schedule.push(format!("{mode:?}"));
        peers.proxy.set(mode);
        hold(rng, 150..700).await;
        peers.proxy.set(Mode::Pass);
        hold(rng, 50..300).await;
    }
    // The last fault healed; from here the relay must drain on its own.
    let healed = Instant::now();
    let (ids, accepted) = match (http, mqtt) {
        (Some(producer), _) => {
            let accepted = producer.finish(PRODUCER_STOP).await;
            drained_within(&relay, UPLINK_DRAIN_BOUND).await;
            (Vec::new(), accepted)
        }
        (_, Some(producer)) => {
            let ids = producer.finish(PRODUCER_STOP).await;
            upstream_holds(&peers.store, stream, ids.len(), INGEST_DRAIN_BOUND).await;
            drained_within(&relay, INGEST_DRAIN_BOUND).await;
            (ids, Vec::new())
        }
        _ => unreachable!("one producer per run"),
    };
    let drain = healed.elapsed();
    sampler.finish().await;
    let stored = produced_events(&peers.store, stream);
    let accepted = match link {
        Link::MqttIngest => seqs_from_upstream(&ids, &stored),
        _ => accepted,
    };
    let audit = audit(&accepted, &stored);
    let bound = match link {
        Link::MqttIngest => INGEST_DRAIN_BOUND,
        _ => UPLINK_DRAIN_BOUND,
    };
    let faults = peers.proxy.faults();
    // The era the family is about is the one every session of the run spoke.
    let want = if eras == Eras::Legacy {
        "2025-11-25"
    } else {
        "2026-07-28"
    };
    let report = relay.status.report(GATEWAY, &relay.outbox.stats());
    assert_eq!(report.protocol_version.as_deref(), Some(want), "run {run}");
    let run = format!("run={run} schedule={schedule:?} mcp={want}");
    relay.stop().await;
    peers.upstream.stop().await;
    verdict(summary, &run, &audit, faults, drain, bound);
}

/// The upstream's events of `stream` that a producer sent (the ingest family's readiness
/// probe is left out: no producer was told about it).
fn produced_events(store: &SinkStore, stream: Uuid) -> Vec<Event> {
    let mut events = store.events(GATEWAY, stream).unwrap();
    events.retain(|e| e.source != PROBE_TOPIC);
    events
}

/// Waits (polling the upstream's store, bounded) until it holds `n` producer events.
async fn upstream_holds(store: &SinkStore, stream: Uuid, n: usize, bound: Duration) {
    let what = format!("liveness: upstream holds {n} ingested events");
    let held = || async { Some(produced_events(store, stream).len()) };
    poll_until(bound, &what, held, |held| *held >= n).await;
}
