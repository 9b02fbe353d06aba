//! Throughput, memory and disk of the real daemon, on real sensor data (Daphnet, 64 Hz).
//!
//! `cargo bench --bench throughput` (or `-- --events N` to change the buffered count).
//! Measures, on this machine:
//! 1. durable ingest through `POST /v1/events`: single events (1 and 16 concurrent producers)
//!    and NDJSON batches of 100 (4 producers), with no upstream so nothing drains meanwhile;
//! 2. peak RSS (VmHWM) and disk bytes per event with N (default 1,000,000) events of ~200 bytes
//!    buffered;
//! 3. drain throughput of that backlog to the reference upstream on loopback.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use edge_relay::config::Config;
use edge_relay::demo::daphnet;
use edge_relay::sink::{SinkStore, serve_http};
use http_body_util::{BodyExt, Full};
use hyper::Request;
use hyper_util::rt::TokioIo;
use serde_json::Value;
use tokio_util::sync::CancellationToken;

/// One producer: a keep-alive connection posting `bodies` in turn; returns events accepted.
async fn producer(addr: SocketAddr, bodies: Vec<(Bytes, u64)>) -> u64 {
    let stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .expect("handshake");
    tokio::spawn(conn);
    let mut accepted = 0;
    for (body, count) in bodies {
        let req = Request::post("/v1/events")
            .header("host", addr.to_string())
            .body(Full::new(body))
            .expect("request");
        let resp = sender.send_request(req).await.expect("send");
        let status = resp.status();
        let answer = resp.into_body().collect().await.expect("body").to_bytes();
        assert!(
            status.is_success(),
            "{status}: {}",
            String::from_utf8_lossy(&answer)
        );
        accepted += count;
    }
    accepted
}

/// Real events: Daphnet samples, one JSON object each (~200 bytes once stored with id/seq/time).
fn events(n: usize) -> Vec<String> {
    let samples = daphnet::samples().expect("embedded recording");
    samples
        .iter()
        .flat_map(|s| s.events.iter())
        .cycle()
        .take(n)
        .map(Value::to_string)
        .collect()
}

/// Posts `n` events as bodies of `per_body` NDJSON lines over `producers` connections.
async fn ingest(addr: SocketAddr, n: usize, per_body: usize, producers: usize) -> (u64, Duration) {
    let lines = events(n);
    let bodies: Vec<(Bytes, u64)> = lines
        .chunks(per_body)
        .map(|c| (Bytes::from(c.join("\n")), c.len() as u64))
        .collect();
    let mut shares: Vec<Vec<(Bytes, u64)>> = vec![Vec::new(); producers];
    for (i, b) in bodies.into_iter().enumerate() {
        shares[i % producers].push(b);
    }
    let start = Instant::now();
    let tasks: Vec<_> = shares
        .into_iter()
        .map(|share| tokio::spawn(producer(addr, share)))
        .collect();
    let mut total = 0;
    for t in tasks {
        total += t.await.expect("producer");
    }
    (total, start.elapsed())
}

fn proc_status_kib(field: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        .unwrap_or(0)
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

fn report(label: &str, n: u64, took: Duration) {
    println!(
        "{label:<44} {n:>9} events in {:>7.2} s = {:>9.0} events/s",
        took.as_secs_f64(),
        n as f64 / took.as_secs_f64()
    );
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
    // The upstream's port is reserved now and served only for the drain phase.
    let reserved = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let upstream = reserved.local_addr().expect("addr");
    drop(reserved);
    let mut config = Config {
        gateway_id: "bench-gw".into(),
        data_dir: tmp.path().join("relay"),
        ..Config::default()
    };
    config.ingest.http.listen = "127.0.0.1:0".parse().expect("addr");
    config.upstream.url = format!("http://{upstream}/mcp");
    config.buffer.max_bytes = 4 << 30;
    config.relay.backoff_initial_ms = 50;
    config.relay.backoff_max_ms = 100;
    let relay = edge_relay::start(config, None).await.expect("relay");
    let addr = relay.ingest_addr;
    println!(
        "edge-relay throughput bench (debug assertions: {})",
        cfg!(debug_assertions)
    );

    let (n, t) = ingest(addr, 5_000, 1, 1).await;
    report("ingest, single events, 1 producer", n, t);
    let (n, t) = ingest(addr, 40_000, 1, 16).await;
    report("ingest, single events, 16 producers", n, t);
    let (n, t) = ingest(addr, 200_000, 100, 4).await;
    report("ingest, NDJSON batches of 100, 4 producers", n, t);

    let already = relay.outbox.stats().backlog_events as usize;
    let rest = buffered.saturating_sub(already);
    let (n, t) = ingest(addr, rest, 100, 4).await;
    report("ingest to fill the backlog (batches of 100)", n, t);
    let stats = relay.outbox.stats();
    let disk = dir_bytes(&tmp.path().join("relay"));
    println!(
        "buffered {} events, {} budget bytes ({:.0} B/event); disk {:.1} MiB = {:.0} B/event",
        stats.backlog_events,
        stats.backlog_bytes,
        stats.backlog_bytes as f64 / stats.backlog_events as f64,
        disk as f64 / (1 << 20) as f64,
        disk as f64 / stats.backlog_events as f64
    );
    println!(
        "peak RSS (VmHWM) {:.1} MiB, current RSS {:.1} MiB",
        proc_status_kib("VmHWM:") as f64 / 1024.0,
        proc_status_kib("VmRSS:") as f64 / 1024.0
    );

    let listener = tokio::net::TcpListener::bind(upstream)
        .await
        .expect("bind upstream");
    let store = Arc::new(SinkStore::open(&tmp.path().join("sink")).expect("sink store"));
    let stop = CancellationToken::new();
    let sink = tokio::spawn(serve_http(listener, store.clone(), stop.clone()));
    let start = Instant::now();
    let mut changes = relay.outbox.watch();
    while relay.outbox.stats().backlog_events > 0 {
        changes.changed().await.expect("outbox open");
    }
    report(
        "drain to the reference upstream (loopback)",
        stats.backlog_events,
        start.elapsed(),
    );
    println!(
        "peak RSS after drain (relay + upstream in one process) {:.1} MiB",
        proc_status_kib("VmHWM:") as f64 / 1024.0
    );
    relay.stop().await;
    stop.cancel();
    let _ = sink.await;
}
