//! The drain over a cellular-like link: `edge-relay run` (its own process) filled with N
//! Daphnet events, then drained to the reference upstream (its own process) through an
//! emulated link of `--delay-ms` each way and `--mbit` Mbit/s each way, for windows of 1 and
//! of each default (`relay.max_in_flight_plain`, `relay.max_in_flight`) calls in flight, with
//! and without `events_zstd`.
//!
//! `cargo bench --bench wan [-- --events N --delay-ms MS --mbit MBIT]` (defaults 50,000 / 150 /
//! 10). Prints events/s (whole drain, and from the first acknowledgement on) and the bytes
//! that crossed the link per event, each way.
//!
//! The link: every connection through it shares one pipe per direction that carries
//! `mbit` Mbit/s; a chunk leaves the far end `delay` after its last byte went in. Chunks keep
//! their order and several are on their way at once (a long pipe, not a stall per chunk).

use std::net::SocketAddr;
use std::path::Path;
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use edge_relay::cli::local_client;
use edge_relay::demo::daphnet;
use hyper::Method;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};

/// Events per NDJSON body of the fill.
const BODY_EVENTS: usize = 100;
/// Longest a drain may go without progress before the run is reported as stalled.
const STALL: Duration = Duration::from_secs(60);

/// One direction of the link: when its pipe is free again, and the bytes it carried.
struct Pipe {
    free_at: Mutex<Instant>,
    bytes: AtomicU64,
}

/// The emulated link's settings and its two pipes.
struct Link {
    delay: Duration,
    bytes_per_sec: f64,
    up: Pipe,
    down: Pipe,
}

impl Pipe {
    fn new() -> Self {
        Self {
            free_at: Mutex::new(Instant::now()),
            bytes: AtomicU64::new(0),
        }
    }

    /// When `n` bytes handed in now have crossed: after the bytes ahead of them, at the
    /// link's rate, plus the delay.
    fn schedule(&self, n: usize, link: &Link) -> Instant {
        self.bytes.fetch_add(n as u64, Ordering::Relaxed);
        let mut free_at = self.free_at.lock().unwrap();
        let start = (*free_at).max(Instant::now());
        *free_at = start + Duration::from_secs_f64(n as f64 / link.bytes_per_sec);
        *free_at + link.delay
    }
}

/// Forwards `from` to `to` through `pipe`: each chunk is written when it has crossed.
async fn carry(mut from: OwnedReadHalf, mut to: OwnedWriteHalf, link: Arc<Link>, up: bool) {
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(Instant, Vec<u8>)>();
    let writer = tokio::spawn(async move {
        while let Some((at, chunk)) = rx.recv().await {
            tokio::time::sleep_until(at.into()).await;
            if to.write_all(&chunk).await.is_err() {
                return;
            }
        }
    });
    let mut buf = vec![0u8; 16 * 1024];
    while let Ok(n @ 1..) = from.read(&mut buf).await {
        let pipe = if up { &link.up } else { &link.down };
        if tx
            .send((pipe.schedule(n, &link), buf[..n].to_vec()))
            .is_err()
        {
            break;
        }
    }
    drop(tx);
    let _ = writer.await;
}

/// Serves the link on a free port, to `peer`; returns its address.
async fn serve_link(peer: SocketAddr, link: Arc<Link>) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            let Ok(server) = TcpStream::connect(peer).await else {
                continue;
            };
            let _ = (client.set_nodelay(true), server.set_nodelay(true));
            let (cr, cw) = client.into_split();
            let (sr, sw) = server.into_split();
            tokio::spawn(carry(cr, sw, link.clone(), true));
            tokio::spawn(carry(sr, cw, link.clone(), false));
        }
    });
    addr
}

fn free_port() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .unwrap()
}

fn spawn(args: &[&str]) -> tokio::process::Child {
    tokio::process::Command::new(env!("CARGO_BIN_EXE_edge-relay"))
        .args(args)
        .env("RUST_LOG", "warn")
        .env_remove("JOURNAL_STREAM")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn edge-relay")
}

async fn wait_listening(addr: SocketAddr) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while TcpStream::connect(addr).await.is_err() {
        assert!(Instant::now() < deadline, "nothing listens on {addr}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The relay's `backlog_events` (`GET /v1/status`).
async fn backlog(addr: SocketAddr) -> u64 {
    let (code, text) = local_client::request(addr, Method::GET, "/v1/status", Vec::new())
        .await
        .expect("GET /v1/status");
    assert_eq!(code, 200, "{text}");
    let status: serde_json::Value = serde_json::from_str(&text).expect("status JSON");
    status["backlog_events"].as_u64().expect("backlog_events")
}

/// Result of one drain.
struct Run {
    events: u64,
    took: Duration,
    /// From the first event acknowledged to the last: `(events, time)`; the session start
    /// (`server/discover`, `edge_cursor`, `tools/list`: three round trips) left out.
    after_first: (u64, Duration),
    up: u64,
    down: u64,
}

/// Fills a fresh relay whose upstream is the link, then starts the reference upstream
/// behind it and times the drain.
async fn run(dir: &Path, lines: &[String], n: usize, link: &Arc<Link>, relay_extra: &str) -> Run {
    let sink_addr = free_port();
    let link_addr = serve_link(sink_addr, link.clone()).await;
    let ingest = free_port();
    std::fs::create_dir_all(dir).unwrap();
    let config = dir.join("edge-relay.toml");
    std::fs::write(
        &config,
        format!(
            "gateway_id = \"wan\"\ndata_dir = {:?}\n[ingest.http]\nlisten = \"{ingest}\"\n\
             [upstream]\nurl = \"http://{link_addr}/mcp\"\n[relay]\nbackoff_initial_ms = 50\n\
             backoff_max_ms = 100\n{relay_extra}\n",
            dir.join("data").display().to_string()
        ),
    )
    .unwrap();
    let mut relay = spawn(&["run", "--config", config.to_str().unwrap()]);
    wait_listening(ingest).await;
    for body in lines[..n].chunks(BODY_EVENTS) {
        let (code, text) = local_client::request(
            ingest,
            Method::POST,
            "/v1/events",
            body.join("\n").into_bytes(),
        )
        .await
        .expect("POST /v1/events");
        assert_eq!(code, 200, "{text}");
    }
    let (up0, down0) = (
        link.up.bytes.load(Ordering::Relaxed),
        link.down.bytes.load(Ordering::Relaxed),
    );
    let sink_dir = dir.join("sink");
    let mut sink = spawn(&[
        "sink",
        "--listen",
        &sink_addr.to_string(),
        "--data-dir",
        sink_dir.to_str().unwrap(),
    ]);
    let start = Instant::now();
    let mut last = (backlog(ingest).await, Instant::now());
    let mut first: Option<(u64, Instant)> = None;
    while last.0 > 0 {
        tokio::time::sleep(Duration::from_millis(20)).await;
        let now = backlog(ingest).await;
        if now != last.0 {
            last = (now, Instant::now());
            first.get_or_insert(last);
        }
        assert!(last.1.elapsed() < STALL, "drain stalled at backlog {now}");
    }
    let took = start.elapsed();
    let (left, at) = first.unwrap_or((n as u64, start));
    let _ = (relay.kill().await, sink.kill().await);
    Run {
        events: n as u64,
        took,
        after_first: (left, at.elapsed()),
        up: link.up.bytes.load(Ordering::Relaxed) - up0,
        down: link.down.bytes.load(Ordering::Relaxed) - down0,
    }
}

#[tokio::main]
async fn main() {
    let (mut n, mut delay_ms, mut mbit) = (50_000usize, 150u64, 10.0f64);
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = || args.next().unwrap_or_else(|| panic!("{arg} needs a value"));
        match arg.as_str() {
            "--events" => n = value().parse().expect("--events N"),
            "--delay-ms" => delay_ms = value().parse().expect("--delay-ms MS"),
            "--mbit" => mbit = value().parse().expect("--mbit MBIT"),
            "--bench" => {}
            other => panic!("unknown argument {other}"),
        }
    }
    let lines: Vec<String> = daphnet::samples()
        .expect("embedded recording")
        .iter()
        .flat_map(|s| s.events.iter().map(|e| e.to_string()))
        .cycle()
        .take(n)
        .collect();
    let defaults = edge_relay::config::RelayConfig::default();
    println!(
        "edge-relay WAN drain: {n} Daphnet events through a link of {delay_ms} ms each way, \
         {mbit} Mbit/s each way; relay and reference upstream in their own processes\n"
    );
    println!(
        "{:<34} {:>10} {:>9} {:>16} {:>11} {:>12}",
        "relay", "events/s", "seconds", "after 1st ack/s", "up B/event", "down B/event"
    );
    // The defaults: `max_in_flight_plain` for plain events, `max_in_flight` for events_zstd.
    for window in [1, defaults.max_in_flight_plain, defaults.max_in_flight] {
        for compress in [false, true] {
            let link = Arc::new(Link {
                delay: Duration::from_millis(delay_ms),
                bytes_per_sec: mbit * 1e6 / 8.0,
                up: Pipe::new(),
                down: Pipe::new(),
            });
            let tmp = tempfile::tempdir().unwrap();
            let extra = format!(
                "max_in_flight = {window}\nmax_in_flight_plain = {window}\ncompress = {compress}"
            );
            let r = run(tmp.path(), &lines, n, &link, &extra).await;
            let label = format!(
                "max_in_flight {window}, {}",
                if compress {
                    "events_zstd"
                } else {
                    "plain events"
                }
            );
            println!(
                "{label:<34} {:>10.0} {:>9.1} {:>16.0} {:>11.0} {:>12.1}",
                r.events as f64 / r.took.as_secs_f64(),
                r.took.as_secs_f64(),
                r.after_first.0 as f64 / r.after_first.1.as_secs_f64(),
                r.up as f64 / r.events as f64,
                r.down as f64 / r.events as f64
            );
        }
    }
}
