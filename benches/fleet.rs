//! The fleet upstream's capacity: at least 100 gateway streams calling `edge_ingest` directly
//! (MCP Streamable HTTP, in seq order) through 1, then 2 `edge-relay sink --store postgres`
//! nodes into one PostgreSQL on this machine.
//!
//! `cargo bench --bench fleet [-- --streams N --batch N --secs S --window N]` (defaults 128,
//! 200, 10, 1). Each stream speaks as the shipped relay does ([`Session::ingest_batch`] of
//! NDJSON lines): first plain `events` (every event a JSON value on the wire), then
//! `events_zstd` when the node's `inputSchema` offers it, with up to `--window` calls in flight
//! per stream. Needs Debian's `postgresql` (the cluster runs in a temp dir, as the `postgres`
//! user under root). Prints, per encoding: events/s stored (acked), p50/p99 `edge_ingest`
//! answer latency through 1 and 2 nodes flat out and 2 nodes paced at half the 2-node rate;
//! then the database's bytes per stored event and the load average before and after.

#[allow(dead_code)]
#[path = "../tests/support/postgres.rs"]
mod postgres;

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use edge_relay::contract::{CURSOR_TOOL, INGEST_TOOL, IngestBatch};
use edge_relay::event::Event;
use edge_relay::tls::ClientTls;
use edge_relay::uplink::http::HttpConnector;
use edge_relay::uplink::{Connector, Session};
use edge_relay::uplink::{EraChoice, SessionConfig};
use futures::StreamExt as _;
use futures::stream::FuturesOrdered;
use uuid::Uuid;

/// Timeout of each session start and call.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Clone, Copy)]
struct Args {
    streams: usize,
    batch: u64,
    secs: u64,
    /// Most `edge_ingest` calls in flight per stream (the relay's `window`).
    window: usize,
}

fn args() -> Args {
    let mut out = Args {
        streams: 128,
        batch: 200,
        secs: 10,
        window: 1,
    };
    let argv: Vec<String> = std::env::args().collect();
    for pair in argv.windows(2) {
        let value = || pair[1].parse().expect("a number after the flag");
        match pair[0].as_str() {
            "--streams" => out.streams = value() as usize,
            "--batch" => out.batch = value(),
            "--secs" => out.secs = value(),
            "--window" => out.window = (value() as usize).max(1),
            _ => {}
        }
    }
    out
}

/// A sink node process; killed when dropped.
struct Node(Child);

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

async fn node(url: &str) -> (Node, SocketAddr) {
    let addr = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_edge-relay"))
        .args(["sink", "--listen", &addr.to_string(), "--store", url])
        .env("RUST_LOG", "error")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .spawn()
        .expect("spawn a sink node");
    let started = Instant::now();
    while tokio::net::TcpStream::connect(addr).await.is_err() {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "node never listened"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    (Node(child), addr)
}

/// One phase's figures.
struct Phase {
    events: u64,
    elapsed: Duration,
    latencies: Vec<Duration>,
}

impl Phase {
    fn rate(&self) -> f64 {
        self.events as f64 / self.elapsed.as_secs_f64()
    }

    fn quantile(&self, q: f64) -> Duration {
        let i = ((self.latencies.len() as f64 - 1.0) * q).round() as usize;
        self.latencies[i]
    }
}

/// Events `from..from + n` as the outbox stores them: one JSON object a line.
fn ndjson(from: u64, n: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(n as usize * 160);
    for seq in from..from + n {
        let event = Event {
            id: Uuid::now_v7(),
            seq,
            source: "ankle".into(),
            kind: "sensor".into(),
            time: "2026-11-21T05:00:00.015Z".into(),
            data: serde_json::json!({"t": seq, "vert": 1000 + seq % 97, "fwd": -32, "lat": 18}),
        };
        serde_json::to_writer(&mut out, &event).unwrap();
        out.push(b'\n');
    }
    out
}

/// How the load generator sends events.
#[derive(Clone, Copy, PartialEq)]
enum Encoding {
    /// `events`: every event a JSON value in the request.
    Plain,
    /// `events_zstd` (when the node offers it, else the bench stops).
    Zstd,
}

/// One stream's `edge_ingest` calls until `deadline`, up to `window` in flight, in seq order;
/// with `pace` = (period, offset), one call per period from `offset` on. Returns the stream's
/// final acked seq and each call's answer latency.
async fn stream_calls(
    session: &Session,
    gateway: String,
    (batch, window): (u64, usize),
    packed: bool,
    deadline: Instant,
    pace: Option<(Duration, Duration)>,
) -> (u64, Vec<Duration>) {
    let stream = Uuid::new_v4();
    let (mut next, mut acked_seq, mut latencies) = (1, 0, Vec::new());
    // Paced streams start spread over one period (`offset`), as independent gateways do;
    // all ticking at once would send 128 batches in the same instant every period.
    let mut tick = pace.map(|(period, offset)| {
        tokio::time::interval_at(tokio::time::Instant::now() + offset, period)
    });
    let mut in_flight = FuturesOrdered::new();
    loop {
        let sending = Instant::now() < deadline;
        if sending && in_flight.len() < window {
            if let Some(tick) = &mut tick {
                tick.tick().await;
            }
            let call = IngestBatch {
                gateway: gateway.clone(),
                stream,
                ndjson: ndjson(next, batch),
                gap: None,
            };
            let last = next + batch - 1;
            next += batch;
            in_flight.push_back(async move {
                let sent = Instant::now();
                let ack = session.ingest_batch(&call, packed).await.expect("an ack");
                (ack, last, sent.elapsed())
            });
            continue;
        }
        let Some((ack, last, latency)) = in_flight.next().await else {
            break;
        };
        latencies.push(latency);
        // Calls answered in order, but a later one may commit first (another pooled
        // connection): its answer is then below its last seq, never above.
        let seq = ack.acked_seq.expect("an acked seq");
        assert!(seq < next && seq >= acked_seq, "acked_seq {seq}");
        acked_seq = seq;
        if window == 1 {
            assert_eq!(seq, last);
        }
    }
    assert_eq!(acked_seq, next - 1, "every sent event acked at the end");
    (acked_seq, latencies)
}

/// `streams` streams spread over `nodes`, each sending batches of `batch` in seq order for
/// `secs`; with `pace`, each stream sends one batch per `pace`, stream `i` first at
/// `i / streams` of it.
async fn phase(
    nodes: &[SocketAddr],
    a: &Args,
    encoding: Encoding,
    pace: Option<Duration>,
) -> Phase {
    let started = Instant::now();
    let deadline = started + Duration::from_secs(a.secs);
    let mut tasks = Vec::new();
    for i in 0..a.streams {
        let url = format!("http://{}/mcp", nodes[i % nodes.len()]);
        let sizes = (a.batch, a.window);
        let pace = pace.map(|period| (period, period.mul_f64(i as f64 / a.streams as f64)));
        tasks.push(tokio::spawn(async move {
            let tls = ClientTls::new("upstream.tls", Default::default());
            let connector = HttpConnector::new(&url, None, tls, REQUEST_TIMEOUT).unwrap();
            let config = SessionConfig {
                ingest_tool: INGEST_TOOL.to_owned(),
                cursor_tool: CURSOR_TOOL.to_owned(),
                request_timeout: REQUEST_TIMEOUT,
                era: EraChoice::PreferCurrent,
            };
            let session = connector.connect(config).await.expect("a session");
            let packed = encoding == Encoding::Zstd;
            if packed {
                assert!(
                    session.offers_packed().await.expect("tools/list"),
                    "the node does not offer events_zstd"
                );
            }
            let gateway = format!("gw-{i}");
            let out = stream_calls(&session, gateway, sizes, packed, deadline, pace).await;
            session.close().await;
            out
        }));
    }
    let mut out = Phase {
        events: 0,
        elapsed: Duration::ZERO,
        latencies: Vec::new(),
    };
    for task in tasks {
        let (events, latencies) = task.await.unwrap();
        out.events += events;
        out.latencies.extend(latencies);
    }
    out.elapsed = started.elapsed();
    out.latencies.sort();
    out
}

fn report(name: &str, p: &Phase) {
    println!(
        "| {name} | {:.0} | {} | {:.1} | {:.1} |",
        p.rate(),
        p.events,
        p.quantile(0.5).as_secs_f64() * 1000.0,
        p.quantile(0.99).as_secs_f64() * 1000.0
    );
}

/// `/proc/loadavg`'s 1, 5 and 15 minute load averages.
fn load_average() -> String {
    let text = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    text.split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let a = args();
    let pg = postgres::Postgres::start();
    let url = pg.create_db("fleet").await;
    let (_n1, addr1) = node(&url).await;
    let (_n2, addr2) = node(&url).await;
    println!(
        "fleet bench: {} streams, batches of {} events, {} s a phase, load average {}",
        a.streams,
        a.batch,
        a.secs,
        load_average()
    );
    println!("| phase | events/s stored | events | p50 ms | p99 ms |\n|---|---|---|---|---|");
    for (encoding, name, window) in [
        (Encoding::Plain, "events", 1),
        (Encoding::Zstd, "events_zstd", a.window),
    ] {
        let a = Args { window, ..a };
        let name = format!("{name}, window {window}");
        let one = phase(&[addr1], &a, encoding, None).await;
        report(&format!("{name}: 1 node, flat out"), &one);
        let two = phase(&[addr1, addr2], &a, encoding, None).await;
        report(&format!("{name}: 2 nodes, flat out"), &two);
        // Half the 2-node rate: each stream one batch per (streams * batch / (rate / 2)).
        let per_stream = two.rate() / 2.0 / a.streams as f64;
        let pace = Duration::from_secs_f64(a.batch as f64 / per_stream);
        let half = phase(&[addr1, addr2], &a, encoding, Some(pace)).await;
        report(&format!("{name}: 2 nodes, half load"), &half);
    }

    let (client, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    let row = client
        .query_one(
            "SELECT count(*), pg_total_relation_size('events'), pg_database_size(current_database())
             FROM events",
            &[],
        )
        .await
        .unwrap();
    let (count, table, db): (i64, i64, i64) = (row.get(0), row.get(1), row.get(2));
    println!(
        "database: {count} events; table events + index {:.0} bytes/event; whole database {:.0} bytes/event",
        table as f64 / count as f64,
        db as f64 / count as f64
    );
    println!("load average at the end: {}", load_average());
}
