//! The processes around the relay: the idle relay, the reference upstream, the drain to it.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use edge_relay::daemon::Daemon;
use edge_relay::outbox::Outbox;

use super::*;

/// Asks a child to stop (SIGTERM), waits up to [`CHILD_STOP_TIMEOUT`], then kills it.
pub(crate) async fn stop_child(child: &mut tokio::process::Child, what: &str) {
    if let Some(pid) = child.id() {
        // SAFETY: kill(2) on our own child's pid, which is not reaped before the wait below.
        unsafe { libc::kill(pid as libc::pid_t, libc::SIGTERM) };
    }
    if tokio::time::timeout(CHILD_STOP_TIMEOUT, child.wait())
        .await
        .is_err()
    {
        eprintln!("{what} did not stop within {CHILD_STOP_TIMEOUT:?} of SIGTERM; killing it");
        let _ = child.kill().await;
    }
}

/// RSS of `edge-relay run` (its own process) with an empty store and no upstream, after
/// `settle`: (VmRSS then, VmHWM then) in MiB.
pub(crate) async fn idle_rss(dir: &Path, settle: Duration) -> (f64, f64) {
    // Nothing listens on this port: the relay keeps retrying, as it does without an upstream.
    let closed = reserve_port();
    let config = relay_config(dir, "bench-idle", "127.0.0.1:0", closed, "");
    let mut child = spawn_relay(&config);
    let pid = child.id().expect("relay pid").to_string();
    tokio::time::sleep(settle).await;
    if let Some(status) = child.try_wait().expect("relay status") {
        panic!("edge-relay run exited while idle: {status}");
    }
    let rss = (
        proc_status_mib(&pid, "VmRSS:"),
        proc_status_mib(&pid, "VmHWM:"),
    );
    stop_child(&mut child, "idle edge-relay run").await;
    rss
}

/// A loopback address nothing listens on now (bound, then released).
pub(crate) fn reserve_port() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("reserve a port")
}

/// Writes `dir/edge-relay.toml` for a relay with its data in `dir/data`, ingest on `listen`,
/// the upstream at `upstream`, and `extra` TOML appended; returns its path.
pub(crate) fn relay_config(
    dir: &Path,
    gateway: &str,
    listen: &str,
    upstream: SocketAddr,
    extra: &str,
) -> PathBuf {
    std::fs::create_dir_all(dir).expect("relay dir");
    let config = dir.join("edge-relay.toml");
    std::fs::write(
        &config,
        format!(
            "gateway_id = \"{gateway}\"\ndata_dir = {:?}\n[ingest.http]\nlisten = \
             \"{listen}\"\n[upstream]\nurl = \"http://{upstream}/mcp\"\n{extra}",
            dir.join("data").display().to_string()
        ),
    )
    .expect("write relay config");
    config
}

/// Starts `edge-relay run --config CONFIG`, its output discarded.
pub(crate) fn spawn_relay(config: &Path) -> tokio::process::Child {
    tokio::process::Command::new(env!("CARGO_BIN_EXE_edge-relay"))
        .arg("run")
        .arg("--config")
        .arg(config)
        .env("RUST_LOG", "warn")
        .env_remove("JOURNAL_STREAM")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn edge-relay run")
}

/// Waits until `child` accepts TCP connections on `addr` ([`SINK_START_TIMEOUT`] at most).
pub(crate) async fn wait_listening(
    child: &mut tokio::process::Child,
    addr: SocketAddr,
    what: &str,
) {
    let deadline = Instant::now() + SINK_START_TIMEOUT;
    while tokio::net::TcpStream::connect(addr).await.is_err() {
        if let Some(status) = child.try_wait().expect("child status") {
            panic!("{what} exited at start: {status}");
        }
        assert!(
            Instant::now() < deadline,
            "{what} did not accept connections on {addr} within {SINK_START_TIMEOUT:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Starts `edge-relay sink` on `addr` and waits until it accepts TCP connections.
pub(crate) async fn spawn_sink(addr: SocketAddr, dir: &Path) -> tokio::process::Child {
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
    wait_listening(&mut child, addr, "edge-relay sink").await;
    child
}

/// One drain of the whole backlog to the reference upstream.
pub(crate) struct Drained {
    pub(crate) events: u64,
    pub(crate) took: Duration,
    /// Relay bytes written from the upstream's start to [`DRAIN_SETTLE`] after the end.
    pub(crate) written: u64,
    /// Relay VmHWM since just before the drain (since the relay's start if it cannot be reset).
    pub(crate) relay_peak: f64,
    pub(crate) peak_reset: bool,
    pub(crate) sink_peak: f64,
    pub(crate) sink_rss: f64,
    pub(crate) sink_written: u64,
}

impl Drained {
    pub(crate) fn rate(&self) -> f64 {
        self.events as f64 / self.took.as_secs_f64()
    }
}

/// Starts the reference upstream, waits until the relay delivered (and deleted) its whole
/// backlog, then stops the upstream.
pub(crate) async fn drain(relay: &Daemon, upstream: SocketAddr, sink_dir: &Path) -> Drained {
    let events = relay.outbox.stats().backlog_events;
    let peak_reset = reset_peak_rss("self");
    let written = write_bytes("self");
    let mut sink = spawn_sink(upstream, sink_dir).await;
    let sink_pid = sink.id().expect("sink pid").to_string();
    let start = Instant::now();
    let mut changes = relay.outbox.watch();
    while relay.outbox.stats().backlog_events > 0 {
        tokio::time::timeout(DRAIN_STALL_TIMEOUT, changes.changed())
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "drain stalled: no outbox commit in {DRAIN_STALL_TIMEOUT:?}, {} events left",
                    relay.outbox.stats().backlog_events
                )
            })
            .expect("outbox open");
    }
    let took = start.elapsed();
    tokio::time::sleep(DRAIN_SETTLE).await;
    let written = write_bytes("self") - written;
    let drained = Drained {
        events,
        took,
        written,
        relay_peak: proc_status_mib("self", "VmHWM:"),
        peak_reset,
        sink_peak: proc_status_mib(&sink_pid, "VmHWM:"),
        sink_rss: proc_status_mib(&sink_pid, "VmRSS:"),
        sink_written: write_bytes(&sink_pid),
    };
    stop_child(&mut sink, "edge-relay sink").await;
    drained
}

/// Mean encoded size (JSON of [`Event`], as stored and sent) of stored events sampled in
/// [`SAMPLE_WINDOWS`] windows spread over the backlog; (mean, events sampled).
pub(crate) fn encoded_size(outbox: &Outbox) -> (f64, u64) {
    let stats = outbox.stats();
    let span = stats.next_seq.saturating_sub(stats.acked_seq + 1);
    let (mut bytes, mut count) = (0u64, 0u64);
    for w in 0..SAMPLE_WINDOWS {
        let after = stats.acked_seq + span * w / SAMPLE_WINDOWS;
        for event in outbox
            .batch_after(after, SAMPLE_PER_WINDOW, usize::MAX)
            .expect("read stored events")
        {
            bytes += serde_json::to_vec(&event).expect("encode").len() as u64;
            count += 1;
        }
    }
    (per(bytes, count), count)
}
