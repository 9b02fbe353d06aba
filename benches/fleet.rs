//! The fleet upstream's capacity: at least 100 gateway streams calling `edge_ingest` directly
//! (MCP Streamable HTTP, one batch in flight per stream, in seq order) through 1, then 2
//! `edge-relay sink --store postgres` nodes into one PostgreSQL on this machine.
//!
//! `cargo bench --bench fleet [-- --streams N --batch N --secs S]` (defaults 128, 200, 10).
//! Needs Debian's `postgresql` (the cluster runs in a temp dir, as the `postgres` user under
//! root). Prints, per phase: events/s stored (acked), p50/p99 `edge_ingest` answer latency;
//! a paced phase at half the 2-node rate; and the database's bytes per stored event.

#[allow(dead_code)]
#[path = "../tests/support/postgres.rs"]
mod postgres;

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use edge_relay::contract::{CURSOR_TOOL, INGEST_TOOL, IngestArgs};
use edge_relay::event::Event;
use edge_relay::tls::ClientTls;
use edge_relay::uplink::Connector;
use edge_relay::uplink::http::HttpConnector;
use edge_relay::uplink::{EraChoice, SessionConfig};
use uuid::Uuid;

/// Timeout of each session start and call.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

struct Args {
    streams: usize,
    batch: u64,
    secs: u64,
}

fn args() -> Args {
    let mut out = Args {
        streams: 128,
        batch: 200,
        secs: 10,
    };
    let argv: Vec<String> = std::env::args().collect();
    for pair in argv.windows(2) {
        let value = || pair[1].parse().expect("a number after the flag");
        match pair[0].as_str() {
            "--streams" => out.streams = value() as usize,
            "--batch" => out.batch = value(),
            "--secs" => out.secs = value(),
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

fn events(from: u64, n: u64) -> Vec<Event> {
    (from..from + n)
        .map(|seq| Event {
            id: Uuid::now_v7(),
            seq,
            source: "ankle".into(),
            kind: "sensor".into(),
            time: "2026-11-21T05:00:00.015Z".into(),
            data: serde_json::json!({"t": seq, "vert": 1000 + seq % 97, "fwd": -32, "lat": 18}),
        })
        .collect()
}

/// `streams` streams spread over `nodes`, each sending batches of `batch` in seq order for
/// `secs`; with `pace`, each stream sends one batch per `pace` at most.
async fn phase(nodes: &[SocketAddr], a: &Args, pace: Option<Duration>) -> Phase {
    let started = Instant::now();
    let deadline = started + Duration::from_secs(a.secs);
    let mut tasks = Vec::new();
    for i in 0..a.streams {
        let url = format!("http://{}/mcp", nodes[i % nodes.len()]);
        let batch = a.batch;
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
            let (gateway, stream) = (format!("gw-{i}"), Uuid::new_v4());
            let (mut next, mut latencies) = (1, Vec::new());
            let mut tick = pace.map(tokio::time::interval);
            while Instant::now() < deadline {
                if let Some(tick) = &mut tick {
                    tick.tick().await;
                }
                let args = IngestArgs {
                    gateway: gateway.clone(),
                    stream,
                    events: events(next, batch),
                    events_zstd: None,
                    gap: None,
                };
                let sent = Instant::now();
                let ack = session.ingest(&args).await.expect("an ack");
                latencies.push(sent.elapsed());
                assert_eq!(ack.acked_seq, Some(next + batch - 1));
                next += batch;
            }
            session.close().await;
            (next - 1, latencies)
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

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let a = args();
    let pg = postgres::Postgres::start();
    let url = pg.create_db("fleet").await;
    let (_n1, addr1) = node(&url).await;
    let (_n2, addr2) = node(&url).await;
    println!(
        "fleet bench: {} streams, batches of {} events, {} s a phase",
        a.streams, a.batch, a.secs
    );
    println!("| phase | events/s stored | events | p50 ms | p99 ms |\n|---|---|---|---|---|");
    let one = phase(&[addr1], &a, None).await;
    report("1 node, flat out", &one);
    let two = phase(&[addr1, addr2], &a, None).await;
    report("2 nodes, flat out", &two);
    // Half the 2-node rate: each stream one batch per (streams * batch / (rate / 2)).
    let per_stream = two.rate() / 2.0 / a.streams as f64;
    let pace = Duration::from_secs_f64(a.batch as f64 / per_stream);
    let half = phase(&[addr1, addr2], &a, Some(pace)).await;
    report("2 nodes, half load", &half);

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
}
