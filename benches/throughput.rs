//! Throughput, memory and disk of the real daemon, on real sensor data (Daphnet, 64 Hz).
//!
//! `cargo bench --bench throughput` (or `-- --events N` to change the buffered count).
//! Measures, on this machine:
//! 1. durable ingest through `POST /v1/events`: single events (1 and 16 concurrent producers)
//!    and NDJSON batches of 100 (4 producers), with no upstream so nothing drains meanwhile;
//! 2. peak RSS (VmHWM) and disk bytes per event with N (default 1,000,000) events of ~200 bytes
//!    buffered;
//! 3. drain throughput of that backlog to the reference upstream on loopback, which runs as a
//!    separate process (`edge-relay sink`) so that each side's peak RSS is its own.
//!
//! The bench process hosts the relay daemon and the load generator; the generator builds each
//! request body when it sends it, so its own footprint is a few MiB (the parsed recording).

use std::net::SocketAddr;
use std::path::Path;
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use edge_relay::config::Config;
use edge_relay::demo::daphnet;
use http_body_util::{BodyExt, Full};
use hyper::Request;
use hyper_util::rt::TokioIo;
use serde_json::Value;

/// Longest the reference upstream may take to accept TCP connections after it is spawned.
const SINK_START_TIMEOUT: Duration = Duration::from_secs(30);

/// Real events: one cycle of the Daphnet recording, one JSON object per line (~200 bytes once
/// stored with id/seq/time), kept as one buffer. Bodies cycle through it.
struct Lines {
    text: String,
    /// Start of each line in `text`, plus its end.
    starts: Vec<usize>,
}

impl Lines {
    /// Parses the recording on a scratch thread: its parsed JSON (~35 MiB) lives and dies in
    /// that thread's malloc arena, which glibc hands back, instead of fragmenting the heap
    /// that the relay's peak RSS is measured on. The kept buffers are large enough to be mmaps.
    fn load() -> Self {
        std::thread::spawn(|| {
            let samples = daphnet::samples().expect("embedded recording");
            let lines: Vec<String> = samples
                .iter()
                .flat_map(|s| s.events.iter())
                .map(Value::to_string)
                .collect();
            let mut text = String::with_capacity(lines.iter().map(String::len).sum());
            let mut starts = Vec::with_capacity(lines.len() + 1);
            for line in &lines {
                starts.push(text.len());
                text.push_str(line);
            }
            starts.push(text.len());
            Self { text, starts }
        })
        .join()
        .expect("parsing the recording")
    }

    /// NDJSON body of events `from..to` of the endless cycle.
    fn body(&self, from: usize, to: usize) -> Bytes {
        let count = self.starts.len() - 1;
        let mut body = String::with_capacity((to - from) * 128);
        for i in from..to {
            if i > from {
                body.push('\n');
            }
            let j = i % count;
            body.push_str(&self.text[self.starts[j]..self.starts[j + 1]]);
        }
        Bytes::from(body)
    }
}

/// One producer: a keep-alive connection posting bodies `first, first + step, ...` of `n`
/// events cut into bodies of `per_body`; returns events accepted.
async fn producer(
    addr: SocketAddr,
    lines: Arc<Lines>,
    n: usize,
    per_body: usize,
    first: usize,
    step: usize,
) -> u64 {
    let stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .expect("handshake");
    tokio::spawn(conn);
    let mut accepted = 0;
    for body_no in (first..n.div_ceil(per_body)).step_by(step) {
        let from = body_no * per_body;
        let to = (from + per_body).min(n);
        let req = Request::post("/v1/events")
            .header("host", addr.to_string())
            .header("content-type", "application/x-ndjson")
            .body(Full::new(lines.body(from, to)))
            .expect("request");
        let resp = sender.send_request(req).await.expect("send");
        let status = resp.status();
        let answer = resp.into_body().collect().await.expect("body").to_bytes();
        assert!(
            status.is_success(),
            "{status}: {}",
            String::from_utf8_lossy(&answer)
        );
        accepted += (to - from) as u64;
    }
    accepted
}

/// Posts `n` events as bodies of `per_body` NDJSON lines over `producers` connections.
async fn ingest(
    addr: SocketAddr,
    lines: &Arc<Lines>,
    n: usize,
    per_body: usize,
    producers: usize,
) -> (u64, Duration) {
    let start = Instant::now();
    let tasks: Vec<_> = (0..producers)
        .map(|p| tokio::spawn(producer(addr, lines.clone(), n, per_body, p, producers)))
        .collect();
    let mut total = 0;
    for t in tasks {
        total += t.await.expect("producer");
    }
    (total, start.elapsed())
}

/// A `/proc/<pid>/status` field in MiB (0 when unreadable).
fn proc_status_mib(pid: &str, field: &str) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
        .unwrap_or(0) as f64
        / 1024.0
}

/// Resets this process's VmHWM to its current RSS (Linux >= 4.0); false if not supported.
fn reset_peak_rss() -> bool {
    std::fs::write("/proc/self/clear_refs", "5").is_ok()
}

fn dir_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .flatten()
                .map(|e| match e.metadata() {
                    Ok(m) if m.is_dir() => dir_bytes(&e.path()),
                    Ok(m) => m.len(),
                    Err(_) => 0,
                })
                .sum()
        })
        .unwrap_or(0)
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1 << 20) as f64
}

fn report(label: &str, n: u64, took: Duration) {
    println!(
        "{label:<48} {n:>9} {:>9.2} {:>11.0}",
        took.as_secs_f64(),
        n as f64 / took.as_secs_f64()
    );
}

/// Starts `edge-relay sink` on `addr` and waits until it accepts TCP connections.
async fn spawn_sink(addr: SocketAddr, dir: &Path) -> tokio::process::Child {
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_edge-relay"))
        .arg("sink")
        .arg("--listen")
        .arg(addr.to_string())
        .arg("--data-dir")
        .arg(dir)
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn edge-relay sink");
    let deadline = Instant::now() + SINK_START_TIMEOUT;
    while tokio::net::TcpStream::connect(addr).await.is_err() {
        if let Some(status) = child.try_wait().expect("sink status") {
            panic!("edge-relay sink exited at start: {status}");
        }
        assert!(
            Instant::now() < deadline,
            "edge-relay sink did not accept connections on {addr} within {SINK_START_TIMEOUT:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    child
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let buffered: usize = args
        .iter()
        .position(|a| a == "--events")
        .and_then(|i| args.get(i + 1)?.parse().ok())
        .unwrap_or(1_000_000);
    let tmp = tempfile::tempdir().expect("tempdir");
    let (relay_dir, sink_dir) = (tmp.path().join("relay"), tmp.path().join("sink"));
    // The upstream's port is reserved now and served only for the drain phase.
    let reserved = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let upstream = reserved.local_addr().expect("addr");
    drop(reserved);
    let mut config = Config {
        gateway_id: "bench-gw".into(),
        data_dir: relay_dir.clone(),
        ..Config::default()
    };
    config.ingest.http.listen = "127.0.0.1:0".parse().expect("addr");
    config.upstream.url = format!("http://{upstream}/mcp");
    config.buffer.max_bytes = 4 << 30;
    config.relay.backoff_initial_ms = 50;
    config.relay.backoff_max_ms = 100;
    let (cache, batch) = (config.buffer.cache_bytes, config.relay.batch_max_events);
    let lines = Arc::new(Lines::load());
    reset_peak_rss();
    let relay = edge_relay::start(config, None).await.expect("relay");
    let addr = relay.ingest_addr;
    println!(
        "edge-relay throughput bench: {buffered} buffered events; buffer.cache_bytes {cache}, \
         relay.batch_max_events {batch} (debug assertions: {})",
        cfg!(debug_assertions)
    );
    println!(
        "RSS at start (relay + load generator): {:.1} MiB",
        proc_status_mib("self", "VmRSS:")
    );
    println!();
    println!(
        "{:<48} {:>9} {:>9} {:>11}",
        "phase", "events", "seconds", "events/s"
    );

    let (n, t) = ingest(addr, &lines, 5_000, 1, 1).await;
    report("ingest, single events, 1 producer", n, t);
    let (n, t) = ingest(addr, &lines, 40_000, 1, 16).await;
    report("ingest, single events, 16 producers", n, t);
    let (n, t) = ingest(addr, &lines, 200_000, 100, 4).await;
    report("ingest, NDJSON batches of 100, 4 producers", n, t);
    let already = relay.outbox.stats().backlog_events as usize;
    let (n, t) = ingest(addr, &lines, buffered.saturating_sub(already), 100, 4).await;
    report("ingest to fill the backlog (batches of 100)", n, t);
    let stats = relay.outbox.stats();
    let disk_buffered = dir_bytes(&relay_dir);
    let relay_peak_buffering = proc_status_mib("self", "VmHWM:");
    let relay_rss_buffered = proc_status_mib("self", "VmRSS:");

    let peak_reset = reset_peak_rss();
    let mut sink = spawn_sink(upstream, &sink_dir).await;
    let sink_pid = sink.id().expect("sink pid").to_string();
    let start = Instant::now();
    let mut changes = relay.outbox.watch();
    while relay.outbox.stats().backlog_events > 0 {
        changes.changed().await.expect("outbox open");
    }
    let drain = start.elapsed();
    report(
        "drain to the reference upstream (loopback)",
        stats.backlog_events,
        drain,
    );
    let relay_peak_drain = proc_status_mib("self", "VmHWM:");
    let sink_peak = proc_status_mib(&sink_pid, "VmHWM:");
    let sink_rss = proc_status_mib(&sink_pid, "VmRSS:");
    sink.kill().await.expect("kill sink");
    relay.stop().await;
    let disk_drained = dir_bytes(&relay_dir);
    let disk_sink = dir_bytes(&sink_dir);

    let per_event = |bytes: u64| bytes as f64 / stats.backlog_events.max(1) as f64;
    println!();
    println!(
        "buffered {} events: budget {:.0} B/event; disk {:.1} MiB = {:.0} B/event",
        stats.backlog_events,
        per_event(stats.backlog_bytes),
        mib(disk_buffered),
        per_event(disk_buffered)
    );
    println!(
        "after the drain (0 buffered): relay disk {:.1} MiB = {:.0} B per drained event \
         (sled files do not shrink; freed space is reused by later events); \
         upstream disk {:.1} MiB = {:.0} B/event stored",
        mib(disk_drained),
        per_event(disk_drained),
        mib(disk_sink),
        per_event(disk_sink)
    );
    println!();
    println!("{:<62} {:>9}", "memory", "MiB");
    println!(
        "{:<62} {relay_peak_buffering:>9.1}",
        "relay + load generator: peak RSS while buffering (VmHWM)"
    );
    println!(
        "{:<62} {relay_rss_buffered:>9.1}",
        "relay + load generator: RSS with the backlog buffered"
    );
    let drain_label = if peak_reset {
        "relay: peak RSS during the drain (VmHWM reset before it)"
    } else {
        "relay: peak RSS up to the end of the drain (VmHWM)"
    };
    println!("{drain_label:<62} {relay_peak_drain:>9.1}");
    println!(
        "{:<62} {sink_peak:>9.1}",
        "reference upstream (own process): peak RSS during the drain"
    );
    println!(
        "{:<62} {sink_rss:>9.1}",
        "reference upstream (own process): RSS at the end of the drain"
    );
}
