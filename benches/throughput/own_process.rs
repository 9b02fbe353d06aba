//! The relay as an operator runs it: `edge-relay run` in its own process, filled with N events
//! by this process's producers, then drained to the reference upstream; its RSS and bytes
//! written are read from its own `/proc/<pid>`, so nothing of the load generator counts.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use http_body_util::{BodyExt, Empty};
use hyper::Request;
use hyper_util::rt::TokioIo;

use super::*;

/// How often the drain's end is polled on `GET /v1/status`.
const STATUS_POLL: Duration = Duration::from_millis(100);

/// Figures of one fill and drain of the relay in its own process.
pub(crate) struct OwnProcess {
    pub(crate) fill: Ingested,
    /// VmHWM (MiB) from the start of the fill to its end, and VmRSS (MiB) at its end.
    pub(crate) buffered_peak: f64,
    pub(crate) buffered_rss: f64,
    /// Whether the VmHWM could be reset before each phase (else: peaks since the start).
    pub(crate) peak_reset: bool,
    pub(crate) drain_events: u64,
    pub(crate) drain_took: Duration,
    /// VmHWM (MiB) of the relay and of the reference upstream during the drain.
    pub(crate) drain_peak: f64,
    pub(crate) sink_peak: f64,
}

/// Fills a fresh `edge-relay run` in `dir` with `n` events (NDJSON batches of [`BATCH`] over
/// [`BATCH_PRODUCERS`] connections), no upstream up; then starts the reference upstream on
/// `upstream` and waits until the relay's backlog is 0.
pub(crate) async fn own_process(
    dir: &Path,
    lines: &Arc<Lines>,
    n: usize,
    upstream: SocketAddr,
) -> OwnProcess {
    let ingest_addr = reserve_port();
    let extra = format!(
        "[buffer]\nmax_bytes = {}\n[relay]\nbackoff_initial_ms = 50\nbackoff_max_ms = 100\n",
        4u64 << 30
    );
    let config = relay_config(dir, "bench-own", &ingest_addr.to_string(), upstream, &extra);
    let mut relay = spawn_relay(&config);
    let pid = relay.id().expect("relay pid").to_string();
    wait_listening(&mut relay, ingest_addr, "edge-relay run").await;

    let mut peak_reset = reset_peak_rss(&pid);
    let written = write_bytes(&pid);
    let mut fill = ingest(ingest_addr, lines, n, BATCH, BATCH_PRODUCERS).await;
    fill.written = write_bytes(&pid) - written;
    let buffered_peak = proc_status_mib(&pid, "VmHWM:");
    let buffered_rss = proc_status_mib(&pid, "VmRSS:");

    peak_reset &= reset_peak_rss(&pid);
    let mut sink = spawn_sink(upstream, &dir.join("sink")).await;
    let sink_pid = sink.id().expect("sink pid").to_string();
    let start = Instant::now();
    let mut last_change = (backlog(ingest_addr).await, Instant::now());
    while last_change.0 > 0 {
        tokio::time::sleep(STATUS_POLL).await;
        let now = backlog(ingest_addr).await;
        if now != last_change.0 {
            last_change = (now, Instant::now());
        }
        assert!(
            last_change.1.elapsed() < DRAIN_STALL_TIMEOUT,
            "own-process drain stalled: backlog {now} for {DRAIN_STALL_TIMEOUT:?}"
        );
    }
    let own = OwnProcess {
        fill,
        buffered_peak,
        buffered_rss,
        peak_reset,
        drain_events: fill.events,
        drain_took: start.elapsed(),
        drain_peak: proc_status_mib(&pid, "VmHWM:"),
        sink_peak: proc_status_mib(&sink_pid, "VmHWM:"),
    };
    stop_child(&mut sink, "edge-relay sink").await;
    stop_child(&mut relay, "edge-relay run (own process)").await;
    own
}

/// `backlog_events` of the relay's `GET /v1/status`.
async fn backlog(addr: SocketAddr) -> u64 {
    let stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .expect("handshake");
    tokio::spawn(conn);
    let req = Request::get("/v1/status")
        .header("host", addr.to_string())
        .body(Empty::<bytes::Bytes>::new())
        .expect("request");
    let resp = sender.send_request(req).await.expect("GET /v1/status");
    let body = resp.into_body().collect().await.expect("body").to_bytes();
    let status: serde_json::Value = serde_json::from_slice(&body).expect("status JSON");
    status["backlog_events"]
        .as_u64()
        .unwrap_or_else(|| panic!("no backlog_events in {status}"))
}
