//! `edge-relay demo`: the reference upstream and the relay in one process, fed the Daphnet
//! recording, with upstream outages and a relay restart, audited against the upstream's store.

pub mod audit;
pub mod daphnet;
pub mod mosquitto;

use std::net::SocketAddr;
use std::path::Path;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::Context;
use hyper::Method;
use serde_json::Value;
use uuid::Uuid;

use crate::cli::local_client;
use crate::config::{Config, Transport};
use crate::contract::IngestAnswer;
use crate::daemon::Daemon;
use crate::sink::mqtt::MqttServe;
use crate::sink::{SinkHandle, SinkSpec, StoppedSink};
use audit::audit;
use mosquitto::Mosquitto;

/// Wall time between producer posts (each posts every sample that is due).
pub const TICK: Duration = Duration::from_millis(100);
/// Longest the demo waits for the backlog to drain after the last sample.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(120);
/// Attempts to post one body before the demo gives up (one per [`TICK`]).
pub const POST_ATTEMPTS: u32 = 600;
/// server-name of the demo's upstream over MQTT.
pub const SERVER_NAME: &str = "demo/ingest";
/// Gateway id the demo relay uses.
pub const GATEWAY: &str = "demo-gw";

/// Flags of `edge-relay demo`.
#[derive(Debug, Clone, clap::Args)]
pub struct DemoOptions {
    /// Replay speed relative to real time (the recording lasts 110 s).
    #[arg(long, default_value_t = 2.5)]
    pub speed: f64,
    /// Upstream outages to inject (stop the upstream, restart it on its store and port).
    #[arg(long, default_value_t = 2)]
    pub outages: u32,
    /// Length of each outage, milliseconds of wall time.
    #[arg(long, default_value_t = 3000)]
    pub outage_ms: u64,
    /// Keep the demo's data directories (their path is printed).
    #[arg(long)]
    pub keep: bool,
    /// Upstream transport: MCP Streamable HTTP, or MCP over MQTT through a private Mosquitto
    /// (started on a free port; needs `mosquitto` installed).
    #[arg(long, value_enum, default_value = "http")]
    pub transport: Transport,
}

/// The demo's upstream: HTTP on `127.0.0.1:0` and, with a `broker` URL, MCP over MQTT too,
/// on the store in `dir`.
async fn start_upstream(dir: &Path, broker: Option<String>) -> anyhow::Result<SinkHandle> {
    let mqtt = broker.map(|url| MqttServe {
        url,
        server_name: SERVER_NAME.into(),
        password: None,
        reconnect_max: crate::sink::mqtt::BACKOFF.1,
    });
    SinkHandle::start(
        dir,
        SinkSpec {
            mqtt,
            ..SinkSpec::http()
        },
    )
    .await
}

async fn start_relay(
    dir: &Path,
    ingest: SocketAddr,
    upstream: &SinkHandle,
) -> anyhow::Result<Daemon> {
    let mut config = Config {
        gateway_id: GATEWAY.into(),
        data_dir: dir.to_owned(),
        ..Config::default()
    };
    config.ingest.http.listen = ingest;
    match &upstream.spec().mqtt {
        Some(mqtt) => {
            config.upstream.transport = Transport::Mqtt;
            config.upstream.url = mqtt.url.clone();
            config.upstream.server_name = SERVER_NAME.into();
        }
        None => config.upstream.url = upstream.url(),
    }
    config.relay.backoff_max_ms = 1_000;
    config.relay.request_timeout_ms = 3_000;
    crate::daemon::start(config, crate::daemon::Seams::default()).await
}

/// Runs the demo; exit code 0 only if the audit is clean.
///
/// # Errors
/// Setup failures (ports, temp dirs, stores); an unclean audit is a non-zero exit, not an error.
pub async fn run(opts: DemoOptions) -> anyhow::Result<ExitCode> {
    anyhow::ensure!(opts.speed > 0.0, "--speed must be positive");
    let samples = daphnet::samples().map_err(anyhow::Error::msg)?;
    let total: usize = samples.iter().map(|s| s.events.len()).sum();
    let tmp = tempfile::Builder::new()
        .prefix("edge-relay-demo-")
        .tempdir()?;
    let (sink_dir, relay_dir) = (tmp.path().join("upstream"), tmp.path().join("relay"));
    let broker = match opts.transport {
        Transport::Mqtt => Some(Mosquitto::start(&tmp.path().join("mosquitto"), false)?),
        Transport::Http => None,
    };
    let first = start_upstream(&sink_dir, broker.as_ref().map(Mosquitto::url)).await?;
    let mut relay = start_relay(&relay_dir, "127.0.0.1:0".parse()?, &first).await?;
    let ingest = relay.ingest_addr;
    let via = match &broker {
        Some(b) => format!("MCP over MQTT via Mosquitto at {}", b.url()),
        None => format!("MCP Streamable HTTP at {}", first.url()),
    };
    let mut upstream = Some(first);
    println!(
        "demo: replaying {} samples ({total} events) of the Daphnet recording at {}x; upstream: {via}; relay ingest http://{ingest}",
        samples.len(),
        opts.speed
    );

    // Fault schedule, as fractions of the replay: outages first, then one relay restart.
    let slots = f64::from(opts.outages + 2);
    let replay = Duration::from_secs_f64(
        samples.last().map_or(0, |s| s.offset_ms) as f64 / 1000.0 / opts.speed,
    );
    let outage_at: Vec<Duration> = (1..=opts.outages)
        .map(|i| replay.mul_f64(f64::from(i) / slots))
        .collect();
    let restart_at = replay.mul_f64((slots - 1.0) / slots);
    let outage_len = Duration::from_millis(opts.outage_ms);

    let started = Instant::now();
    let mut accepted: Vec<(u64, Uuid)> = Vec::with_capacity(total);
    let mut next = 0usize;
    let mut outages_done = 0u32;
    let mut down_since: Option<(Instant, StoppedSink)> = None;
    let mut restarted = false;
    let mut last_progress = Instant::now();
    while next < samples.len() {
        let now = started.elapsed();
        // Faults due now.
        if down_since.is_none()
            && outages_done < opts.outages
            && now >= outage_at[outages_done as usize]
            && let Some(up) = upstream.take()
        {
            let stopped = up.stop().await?;
            outages_done += 1;
            println!(
                "demo: t={:.1}s upstream DOWN (outage {outages_done}/{})",
                now.as_secs_f64(),
                opts.outages
            );
            down_since = Some((Instant::now(), stopped));
        }
        if let Some((since, stopped)) = down_since.take() {
            if since.elapsed() >= outage_len {
                upstream = Some(stopped.start().await?);
                println!(
                    "demo: t={:.1}s upstream UP again on the same store",
                    started.elapsed().as_secs_f64()
                );
            } else {
                down_since = Some((since, stopped));
            }
        }
        if !restarted && down_since.is_none() && now >= restart_at {
            relay.stop().await;
            let up = upstream
                .as_ref()
                .context("upstream down during the relay restart")?;
            relay = start_relay(&relay_dir, ingest, up).await?;
            restarted = true;
            println!(
                "demo: t={:.1}s relay restarted on its outbox",
                started.elapsed().as_secs_f64()
            );
        }
        // Everything due by now, as one JSON array; retried as is (same ids) until accepted.
        let due_ms = (now.as_secs_f64() * opts.speed * 1000.0) as u64;
        let mut body = Vec::new();
        while next < samples.len() && samples[next].offset_ms <= due_ms {
            for event in &samples[next].events {
                let mut event = event.clone();
                event["id"] = Value::String(Uuid::now_v7().to_string());
                body.push(event);
            }
            next += 1;
        }
        if !body.is_empty() {
            post_until_accepted(ingest, Value::Array(body), &mut accepted).await?;
        }
        if last_progress.elapsed() >= Duration::from_secs(5) {
            last_progress = Instant::now();
            progress(started, &relay, accepted.len(), outages_done);
        }
        tokio::time::sleep(TICK).await;
    }
    if let Some((_, stopped)) = down_since.take() {
        upstream = Some(stopped.start().await?);
    }
    println!(
        "demo: t={:.1}s replay done; draining the backlog",
        started.elapsed().as_secs_f64()
    );
    let deadline = Instant::now() + DRAIN_TIMEOUT;
    let mut changes = relay.outbox.watch();
    while relay.outbox.stats().backlog_events > 0 && Instant::now() < deadline {
        let _ = tokio::time::timeout(Duration::from_secs(5), changes.changed()).await;
        progress(started, &relay, accepted.len(), outages_done);
    }
    let stream = relay.outbox.stats().stream;
    relay.stop().await;
    let upstream = upstream.context("upstream not running at the end")?;
    let stored = upstream.store().events(GATEWAY, stream)?;
    upstream.stop().await?;
    let result = audit(&accepted, &stored);
    if opts.keep {
        println!("demo: data kept in {}", tmp.keep().display());
    }
    println!("demo: {result} outages={outages_done}");
    Ok(if result.is_clean() && outages_done == opts.outages {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn progress(started: Instant, relay: &Daemon, produced: usize, outages: u32) {
    let s = relay.outbox.stats();
    println!(
        "demo: t={:.1}s produced={produced} acked={} backlog={} upstream={} outages={outages}",
        started.elapsed().as_secs_f64(),
        s.acked_seq,
        s.backlog_events,
        relay.status.upstream()
    );
}

/// Posts `body` to the relay until it answers 200 (a restarting relay refuses connections);
/// records the `(seq, id)` pairs it was told.
async fn post_until_accepted(
    ingest: SocketAddr,
    body: Value,
    accepted: &mut Vec<(u64, Uuid)>,
) -> anyhow::Result<()> {
    let bytes = body.to_string().into_bytes();
    let mut attempts = 0;
    loop {
        attempts += 1;
        match local_client::request(ingest, Method::POST, "/v1/events", bytes.clone()).await {
            Ok((200, answer)) => {
                let answer: IngestAnswer = serde_json::from_str(&answer)?;
                accepted.extend(answer.pairs().map_err(anyhow::Error::msg)?);
                return Ok(());
            }
            Ok((code, answer)) if code < 500 => {
                anyhow::bail!("relay refused the demo's events: HTTP {code}: {answer}")
            }
            other if attempts >= POST_ATTEMPTS => {
                anyhow::bail!("relay kept failing after {attempts} attempts: {other:?}")
            }
            _ => tokio::time::sleep(TICK).await,
        }
    }
}
