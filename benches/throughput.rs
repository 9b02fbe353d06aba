//! Throughput, memory, flash writes and disk of the real daemon, on real sensor data (Daphnet,
//! 64 Hz), each figure printed beside its goal (issue 9, "Outbox v2", targets table).
//!
//! `cargo bench --bench throughput [-- FLAGS]`:
//! - `--events N` (default 1,000,000): events per fill; the buffered backlog, each cycle's fill
//!   and the floor's event count;
//! - `--cycles C` (default 10): fill/drain cycles; cycle 1 carries the main figures;
//! - `--idle-secs S` (default 10): how long the idle relay settles before its RSS is read.
//!
//! Quick run: `cargo bench --bench throughput -- --events 100000 --cycles 2` (a few minutes
//! after the build). The default run took 41 min on the shared 2-core VM under a load average of
//! 6-8 (about 3.5 min per 1M-event cycle, mostly the drain); a quiet box needs roughly half that.
//!
//! Measures, on this machine, in this order:
//! 1. a floor: the stored bytes of N events (each event's JSON and a newline) appended to a plain
//!    file with one `fdatasync` per group of 400 events, and again per group of 100;
//! 2. idle RSS of `edge-relay run` (its own process; empty store, no upstream);
//! 3. cycle 1, relay in process with no upstream: durable ingest through `POST /v1/events` of
//!    single events (1 and 16 producers), then NDJSON batches of 100 (4 producers) up to N
//!    buffered; peak RSS and disk with N buffered; then the drain of that backlog to the
//!    reference upstream (`edge-relay sink`, its own process, so each side's RSS is its own);
//! 4. cycles 2..C: the same NDJSON fill of N events and drain; disk after each fill and drain;
//! 5. the relay's close.
//!
//! Bytes written are `write_bytes` of `/proc/self/io` read right before and after each phase
//! (nothing is printed inside a phase). The bench process hosts the relay and the load generator,
//! which writes nothing to disk, so the delta is the relay's. `write_bytes` counts page-cache
//! pages dirtied (a partial page rewritten after each fsync counts again each time); the ext4
//! journal, written by a kernel thread, is not in it, so the device sees somewhat more.
//! The machine is shared (2 cores, other builds running): rates are indicative, RSS and bytes
//! are steadier.

use std::io::Write;
use std::net::SocketAddr;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use edge_relay::Daemon;
use edge_relay::config::Config;
use edge_relay::demo::daphnet;
use edge_relay::event::{Event, NewEvent, now_rfc3339};
use edge_relay::outbox::Outbox;
use http_body_util::{BodyExt, Full};
use hyper::Request;
use hyper_util::rt::TokioIo;
use serde_json::Value;

/// Longest the reference upstream may take to accept TCP connections after it is spawned.
const SINK_START_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest a spawned process may take to exit after SIGTERM before it is killed.
const CHILD_STOP_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest a drain may go without any outbox commit before the bench gives up.
const DRAIN_STALL_TIMEOUT: Duration = Duration::from_secs(120);
/// Wait after the backlog reaches 0, counted in the drain's bytes written: sled flushes in the
/// background (every 500 ms by default), and the last acks' pruning lands then.
const DRAIN_SETTLE: Duration = Duration::from_secs(2);
/// Sampling of stored events for their encoded size: windows spread over the backlog, events
/// per window.
const SAMPLE_WINDOWS: u64 = 100;
const SAMPLE_PER_WINDOW: usize = 100;
/// NDJSON events per request, and concurrent producers, of the batch ingest.
const BATCH: usize = 100;
const BATCH_PRODUCERS: usize = 4;

/// Command-line flags (see the file's top comment).
struct Args {
    events: usize,
    cycles: usize,
    idle_secs: u64,
}

impl Args {
    /// Parses `--events`, `--cycles` and `--idle-secs`; ignores the `--bench` cargo adds.
    fn parse() -> Self {
        let mut args = Args {
            events: 1_000_000,
            cycles: 10,
            idle_secs: 10,
        };
        let mut it = std::env::args().skip(1);
        while let Some(flag) = it.next() {
            let mut value = |name: &str| -> u64 {
                it.next()
                    .and_then(|v| v.replace('_', "").parse().ok())
                    .unwrap_or_else(|| panic!("{name} needs a number"))
            };
            match flag.as_str() {
                "--events" => args.events = value("--events") as usize,
                "--cycles" => args.cycles = value("--cycles") as usize,
                "--idle-secs" => args.idle_secs = value("--idle-secs"),
                "--bench" => {}
                other => panic!("unknown flag {other}; flags: --events N --cycles C --idle-secs S"),
            }
        }
        assert!(args.events >= 1_000, "--events must be at least 1000");
        assert!(args.cycles >= 1, "--cycles must be at least 1");
        args
    }
}

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

    fn count(&self) -> usize {
        self.starts.len() - 1
    }

    /// Line `i` of the endless cycle.
    fn line(&self, i: usize) -> &str {
        let j = i % self.count();
        &self.text[self.starts[j]..self.starts[j + 1]]
    }

    /// NDJSON body of events `from..to` of the endless cycle.
    fn body(&self, from: usize, to: usize) -> Bytes {
        let mut body = String::with_capacity((to - from) * 128);
        for i in from..to {
            if i > from {
                body.push('\n');
            }
            body.push_str(self.line(i));
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

/// One measured ingest phase.
#[derive(Clone, Copy)]
struct Ingested {
    events: u64,
    took: Duration,
    /// Bytes the process wrote meanwhile (`write_bytes`).
    written: u64,
}

impl Ingested {
    fn rate(&self) -> f64 {
        self.events as f64 / self.took.as_secs_f64()
    }
}

/// Posts `n` events as bodies of `per_body` NDJSON lines over `producers` connections.
async fn ingest(
    addr: SocketAddr,
    lines: &Arc<Lines>,
    n: usize,
    per_body: usize,
    producers: usize,
) -> Ingested {
    let written = write_bytes("self");
    let start = Instant::now();
    let tasks: Vec<_> = (0..producers)
        .map(|p| tokio::spawn(producer(addr, lines.clone(), n, per_body, p, producers)))
        .collect();
    let mut events = 0;
    for t in tasks {
        events += t.await.expect("producer");
    }
    Ingested {
        events,
        took: start.elapsed(),
        written: write_bytes("self") - written,
    }
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

/// `write_bytes` of `/proc/<pid>/io`: bytes the process caused to be written to the block
/// layer, from its start (0 when unreadable).
fn write_bytes(pid: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/io"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("write_bytes:")?.trim().parse().ok())
        .unwrap_or(0)
}

/// Resets this process's VmHWM to its current RSS (Linux >= 4.0); false if not supported.
fn reset_peak_rss() -> bool {
    std::fs::write("/proc/self/clear_refs", "5").is_ok()
}

/// Size of a directory tree: file lengths, and allocated blocks as `du` counts them
/// (directories included).
#[derive(Debug, Clone, Copy, Default)]
struct DiskUse {
    apparent: u64,
    allocated: u64,
}

impl DiskUse {
    fn of(dir: &Path) -> Self {
        let mut total = DiskUse::default();
        if let Ok(m) = std::fs::symlink_metadata(dir) {
            total.allocated += m.blocks() * 512;
        }
        for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            match entry.metadata() {
                Ok(m) if m.is_dir() => {
                    let sub = DiskUse::of(&entry.path());
                    total.apparent += sub.apparent;
                    total.allocated += sub.allocated;
                }
                Ok(m) => {
                    total.apparent += m.len();
                    total.allocated += m.blocks() * 512;
                }
                Err(_) => {}
            }
        }
        total
    }

    /// The larger of the two: what the goals are checked against.
    fn worst(&self) -> u64 {
        self.apparent.max(self.allocated)
    }
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1 << 20) as f64
}

/// `1234567` as `1,234,567`.
fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn per(bytes: u64, events: u64) -> f64 {
    bytes as f64 / events.max(1) as f64
}

/// Figures with their goals, printed as they are measured and again as a table at the end.
#[derive(Default)]
struct Goals(Vec<[String; 4]>);

impl Goals {
    /// Prints `figure: measured detail (goal ...)` and keeps the row without the detail;
    /// `met` is `None` without a goal.
    fn add(&mut self, figure: &str, measured: String, detail: &str, goal: &str, met: Option<bool>) {
        let verdict = match met {
            Some(true) => ": met",
            Some(false) => ": NOT met",
            None => "",
        };
        let detail = if detail.is_empty() {
            String::new()
        } else {
            format!(" {detail}")
        };
        if goal.is_empty() {
            println!("{figure}: {measured}{detail}");
        } else {
            println!("{figure}: {measured}{detail} (goal {goal}{verdict})");
        }
        let met = met.map_or("", |m| if m { "yes" } else { "no" });
        self.0
            .push([figure.into(), measured, goal.into(), met.into()]);
    }

    fn print(&self) {
        let width = |i: usize| {
            self.0
                .iter()
                .map(|r| r[i].chars().count())
                .max()
                .unwrap_or(0)
        };
        let (w0, w1, w2) = (width(0), width(1), width(2).max(4));
        println!(
            "{:<w0$} | {:<w1$} | {:<w2$} | met",
            "figure", "measured", "goal"
        );
        println!("{}", "-".repeat(w0 + w1 + w2 + 12));
        for [figure, measured, goal, met] in &self.0 {
            println!("{figure:<w0$} | {measured:<w1$} | {goal:<w2$} | {met}");
        }
    }
}

/// One run of the plain-file floor.
struct Floor {
    group: usize,
    events: u64,
    /// Bytes appended: each event's stored JSON and a newline.
    bytes: u64,
    /// Time spent in `write` + `fdatasync` (encoding the events is not counted).
    took: Duration,
    written: u64,
    sync_median: Duration,
    sync_p99: Duration,
}

impl Floor {
    fn rate(&self) -> f64 {
        self.events as f64 / self.took.as_secs_f64()
    }

    fn encoded(&self) -> f64 {
        per(self.bytes - self.events, self.events)
    }
}

/// Appends the stored form of `n` events (built as the outbox builds them: a fresh UUIDv7 id,
/// seq, the gateway's clock as time) to a new file in `dir`, one `fdatasync` per `group` events;
/// the floor any durable store pays for the same bytes and the same acknowledgement promise.
fn floor(dir: &Path, lines: &Lines, n: usize, group: usize) -> Floor {
    let max_event_bytes = edge_relay::event::DEFAULT_MAX_EVENT_BYTES;
    let path = dir.join(format!("floor-{group}.ndjson"));
    let mut file = std::fs::File::create(&path).expect("create floor file");
    let templates: Vec<NewEvent> = (0..lines.count())
        .map(|i| {
            let value = serde_json::from_str(lines.line(i)).expect("recording line");
            NewEvent::from_json(value, max_event_bytes).expect("recording event")
        })
        .collect();
    let written = write_bytes("self");
    let (mut took, mut bytes) = (Duration::ZERO, 0u64);
    let mut syncs = Vec::with_capacity(n.div_ceil(group));
    let mut buf = Vec::with_capacity(group * 256);
    for first in (0..n).step_by(group) {
        buf.clear();
        for i in first..(first + group).min(n) {
            let t = &templates[i % templates.len()];
            let event = Event {
                id: t.id.unwrap_or_else(uuid::Uuid::now_v7),
                seq: i as u64 + 1,
                source: t.source.clone(),
                kind: t.kind.clone(),
                time: t.time.clone().unwrap_or_else(now_rfc3339),
                data: t.data.clone(),
            };
            serde_json::to_writer(&mut buf, &event).expect("encode");
            buf.push(b'\n');
        }
        let start = Instant::now();
        file.write_all(&buf).expect("append to the floor file");
        let synced = Instant::now();
        file.sync_data().expect("fdatasync the floor file");
        syncs.push(synced.elapsed());
        took += start.elapsed();
        bytes += buf.len() as u64;
    }
    let written = write_bytes("self") - written;
    drop(file);
    std::fs::remove_file(&path).expect("remove the floor file");
    syncs.sort();
    Floor {
        group,
        events: n as u64,
        bytes,
        took,
        written,
        sync_median: syncs[syncs.len() / 2],
        sync_p99: syncs[syncs.len() * 99 / 100],
    }
}

/// Asks a child to stop (SIGTERM), waits up to [`CHILD_STOP_TIMEOUT`], then kills it.
async fn stop_child(child: &mut tokio::process::Child, what: &str) {
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
async fn idle_rss(dir: &Path, settle: Duration) -> (f64, f64) {
    std::fs::create_dir_all(dir).expect("idle dir");
    // Nothing listens on this port: the relay keeps retrying, as it does without an upstream.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("reserve a port");
    let config = dir.join("edge-relay.toml");
    std::fs::write(
        &config,
        format!(
            "gateway_id = \"bench-idle\"\ndata_dir = {:?}\n[ingest.http]\nlisten = \
             \"127.0.0.1:0\"\n[upstream]\nurl = \"http://{closed}/mcp\"\n",
            dir.join("data").display().to_string()
        ),
    )
    .expect("write idle config");
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_edge-relay"))
        .arg("run")
        .arg("--config")
        .arg(&config)
        .env("RUST_LOG", "warn")
        .env_remove("JOURNAL_STREAM")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn edge-relay run");
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

/// One drain of the whole backlog to the reference upstream.
struct Drained {
    events: u64,
    took: Duration,
    /// Relay bytes written from the upstream's start to [`DRAIN_SETTLE`] after the end.
    written: u64,
    /// Relay VmHWM since just before the drain (since the relay's start if it cannot be reset).
    relay_peak: f64,
    peak_reset: bool,
    sink_peak: f64,
    sink_rss: f64,
    sink_written: u64,
}

impl Drained {
    fn rate(&self) -> f64 {
        self.events as f64 / self.took.as_secs_f64()
    }
}

/// Starts the reference upstream, waits until the relay delivered (and deleted) its whole
/// backlog, then stops the upstream.
async fn drain(relay: &Daemon, upstream: SocketAddr, sink_dir: &Path) -> Drained {
    let events = relay.outbox.stats().backlog_events;
    let peak_reset = reset_peak_rss();
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
fn encoded_size(outbox: &Outbox) -> (f64, u64) {
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

fn report_header() {
    println!(
        "{:<48} {:>9} {:>8} {:>10} {:>10}",
        "phase", "events", "seconds", "events/s", "written/ev"
    );
}

fn report(label: &str, events: u64, took: Duration, written: u64) {
    println!(
        "{label:<48} {events:>9} {:>8.2} {:>10.0} {:>8.0} B",
        took.as_secs_f64(),
        events as f64 / took.as_secs_f64(),
        per(written, events)
    );
}

/// One fill/drain cycle, for the per-cycle table.
struct Cycle {
    /// The NDJSON part of the fill (cycle 1 also had single-event phases before it).
    fill: Ingested,
    fill_peak: f64,
    disk_filled: DiskUse,
    drained: Drained,
    disk_drained: DiskUse,
}

#[tokio::main]
async fn main() {
    let args = Args::parse();
    let n = args.events;
    let tmp = tempfile::tempdir().expect("tempdir");
    let (relay_dir, sink_dir) = (tmp.path().join("relay"), tmp.path().join("sink"));
    // The upstream's port is reserved now and served only during drains.
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
    let mut goals = Goals::default();
    println!(
        "edge-relay throughput bench: {} events per fill, {} fill/drain cycles; \
         buffer.cache_bytes {cache}, relay.batch_max_events {batch} (debug assertions: {})",
        thousands(n as u64),
        args.cycles,
        cfg!(debug_assertions)
    );
    if write_bytes("self") == 0 && std::fs::read_to_string("/proc/self/io").is_err() {
        println!("/proc/self/io is unreadable: every \"written\" figure below reads 0");
    }
    if n != 1_000_000 {
        println!("(the goals are set for 1,000,000 events per fill; this run fills fewer)");
    }

    // 1. The floor, on the same filesystem, before anything else runs in this process.
    println!();
    let floors: Vec<Floor> = std::thread::scope(|s| {
        s.spawn(|| {
            Vec::from(
                [BATCH * BATCH_PRODUCERS, BATCH].map(|group| floor(tmp.path(), &lines, n, group)),
            )
        })
        .join()
        .expect("floor")
    });
    println!(
        "floor: stored bytes of {} events (mean {:.0} B of JSON + a newline) appended to a plain \
         file, one fdatasync per group (time in write + fdatasync only):",
        thousands(n as u64),
        floors[0].encoded()
    );
    for f in &floors {
        let why = if f.group == BATCH * BATCH_PRODUCERS {
            "4 producers x 100: each has one request in flight, so one group commit can at best \
             cover all four; the goal's floor"
        } else {
            "one request of 100 per fdatasync, no merging"
        };
        println!(
            "  group of {:>3} events ({why}): {:.0} events/s; fdatasync median {:.2} ms, p99 \
             {:.2} ms; written {:.0} B/event",
            f.group,
            f.rate(),
            f.sync_median.as_secs_f64() * 1e3,
            f.sync_p99.as_secs_f64() * 1e3,
            per(f.written, f.events)
        );
    }
    let floor_rate = floors[0].rate();

    // 2. Idle RSS, the relay in its own process.
    println!();
    let (idle, idle_hwm) = idle_rss(
        &tmp.path().join("idle"),
        Duration::from_secs(args.idle_secs),
    )
    .await;
    goals.add(
        "relay RSS idle (own process, empty store, no upstream)",
        format!("{idle:.1} MiB"),
        &format!("after {} s (peak {idle_hwm:.1} MiB)", args.idle_secs),
        "≤ 12 MiB",
        Some(idle <= 12.0),
    );

    // 3. Cycle 1: the relay in this process.
    let generator = proc_status_mib("self", "VmRSS:");
    reset_peak_rss();
    let relay = edge_relay::start(config, None).await.expect("relay");
    let addr = relay.ingest_addr;
    println!(
        "load generator alone (this process before the relay starts): {generator:.1} MiB RSS; \
         it is included in every in-process relay figure below"
    );
    println!(
        "RSS at start (relay + load generator): {:.1} MiB",
        proc_status_mib("self", "VmRSS:")
    );
    println!();
    println!("cycle 1 (no upstream while filling)");
    report_header();
    let single1 = ingest(addr, &lines, 5_000.min(n / 20), 1, 1).await;
    report(
        "ingest, single events, 1 producer",
        single1.events,
        single1.took,
        single1.written,
    );
    let single16 = ingest(addr, &lines, 40_000.min(n / 5), 1, 16).await;
    report(
        "ingest, single events, 16 producers",
        single16.events,
        single16.took,
        single16.written,
    );
    let already = relay.outbox.stats().backlog_events as usize;
    let probe = ingest(
        addr,
        &lines,
        200_000.min(n - already),
        BATCH,
        BATCH_PRODUCERS,
    )
    .await;
    report(
        "ingest, NDJSON batches of 100, 4 producers",
        probe.events,
        probe.took,
        probe.written,
    );
    let already = relay.outbox.stats().backlog_events as usize;
    let rest = ingest(addr, &lines, n - already, BATCH, BATCH_PRODUCERS).await;
    if rest.events > 0 {
        report(
            "ingest to fill the backlog (batches of 100)",
            rest.events,
            rest.took,
            rest.written,
        );
    }
    let stats = relay.outbox.stats();
    let disk_buffered = DiskUse::of(&relay_dir);
    let peak_buffering = proc_status_mib("self", "VmHWM:");
    let rss_buffered = proc_status_mib("self", "VmRSS:");
    let (encoded, sampled) = encoded_size(&relay.outbox);
    let drained = drain(&relay, upstream, &sink_dir).await;
    report(
        "drain to the reference upstream (loopback)",
        drained.events,
        drained.took,
        drained.written,
    );
    let disk_drained = DiskUse::of(&relay_dir);
    println!();

    let ratio = single16.rate() / single1.rate();
    goals.add(
        "single-event POSTs, 16 producers / 1 producer",
        format!("{ratio:.1}x"),
        &format!("({:.0} / {:.0} events/s)", single16.rate(), single1.rate()),
        "≥ 8x",
        Some(ratio >= 8.0),
    );
    goals.add(
        "durable ingest, NDJSON batches of 100, 4 producers",
        format!("{} events/s", thousands(probe.rate() as u64)),
        "",
        "≥ 100k events/s",
        Some(probe.rate() >= 100_000.0),
    );
    let of_floor = probe.rate() / floor_rate;
    goals.add(
        "  ... as a fraction of the plain-file floor",
        format!("{:.1}%", of_floor * 100.0),
        &format!(
            "of {} events/s (groups of 400)",
            thousands(floor_rate as u64)
        ),
        "≥ 50%",
        Some(of_floor >= 0.5),
    );
    println!(
        "stored event, encoded JSON: mean {encoded:.0} B ({sampled} sampled); the outbox's own \
         budget per event (keys + values): {:.0} B",
        per(stats.backlog_bytes, stats.backlog_events)
    );
    let disk_per_event = per(disk_buffered.worst(), stats.backlog_events);
    goals.add(
        "disk per buffered event",
        format!("{disk_per_event:.0} B = {:.2}x", disk_per_event / encoded),
        &format!(
            "encoded, {} buffered ({:.1} MiB files, {:.1} MiB allocated)",
            thousands(stats.backlog_events),
            mib(disk_buffered.apparent),
            mib(disk_buffered.allocated)
        ),
        "≤ 1.2x encoded",
        Some(disk_per_event <= 1.2 * encoded),
    );
    goals.add(
        "relay peak RSS, N buffered (in process, with the generator)",
        format!("{peak_buffering:.1} MiB"),
        &format!("(RSS with the backlog buffered {rss_buffered:.1} MiB)"),
        "≤ 32 MiB",
        Some(peak_buffering <= 32.0),
    );
    goals.add(
        "relay peak RSS during the drain (in process)",
        format!("{:.1} MiB", drained.relay_peak),
        if drained.peak_reset {
            "(VmHWM reset before the drain)"
        } else {
            "(VmHWM could not be reset: peak since the relay's start)"
        },
        "≤ 40 MiB",
        Some(drained.relay_peak <= 40.0),
    );
    goals.add(
        "reference upstream peak RSS during the drain (own process)",
        format!("{:.1} MiB", drained.sink_peak),
        &format!("(RSS at the end {:.1} MiB)", drained.sink_rss),
        "≤ 40 MiB",
        Some(drained.sink_peak <= 40.0),
    );
    goals.add(
        "drain to the reference upstream (loopback)",
        format!("{} events/s", thousands(drained.rate() as u64)),
        "",
        "",
        None,
    );
    println!(
        "after the drain (0 buffered): relay disk {:.1} MiB files, {:.1} MiB allocated",
        mib(disk_drained.apparent),
        mib(disk_drained.allocated)
    );
    let mut ndjson = Ingested {
        events: probe.events + rest.events,
        took: probe.took + rest.took,
        written: probe.written + rest.written,
    };
    let mut cycles = vec![Cycle {
        fill: ndjson,
        fill_peak: peak_buffering,
        disk_filled: disk_buffered,
        drained,
        disk_drained,
    }];

    // 4. Cycles 2..C: the same fill and drain, and what the data dir keeps of them.
    for c in 2..=args.cycles {
        let peak_reset = reset_peak_rss();
        let fill = ingest(addr, &lines, n, BATCH, BATCH_PRODUCERS).await;
        let fill_peak = if peak_reset {
            proc_status_mib("self", "VmHWM:")
        } else {
            f64::NAN
        };
        let disk_filled = DiskUse::of(&relay_dir);
        let drained = drain(&relay, upstream, &sink_dir).await;
        let disk_drained = DiskUse::of(&relay_dir);
        println!(
            "cycle {c}: fill {:.0} events/s, drain {:.0} events/s",
            fill.rate(),
            drained.rate()
        );
        ndjson.events += fill.events;
        ndjson.took += fill.took;
        ndjson.written += fill.written;
        cycles.push(Cycle {
            fill,
            fill_peak,
            disk_filled,
            drained,
            disk_drained,
        });
    }

    // 5. Close.
    let written = write_bytes("self");
    relay.stop().await;
    let close_written = write_bytes("self") - written;
    let disk_closed = DiskUse::of(&relay_dir);
    let disk_sink = DiskUse::of(&sink_dir);

    println!();
    println!(
        "per cycle: fill = {} events in NDJSON batches of 100 (cycle 1: its NDJSON part), no \
         upstream; drain to the reference upstream; written = relay write_bytes per event; RSS \
         peaks in MiB (relay in process, with the generator); disk in MiB (files / allocated)",
        thousands(n as u64)
    );
    println!(
        "{:>5} {:>10} {:>10} {:>9} {:>9} {:>9} {:>9} {:>9} {:>17} {:>17}",
        "cycle",
        "fill ev/s",
        "drain ev/s",
        "wr fill",
        "wr drain",
        "RSS fill",
        "RSS drain",
        "upstream",
        "disk after fill",
        "disk after drain"
    );
    for (i, c) in cycles.iter().enumerate() {
        println!(
            "{:>5} {:>10.0} {:>10.0} {:>7.0} B {:>7.0} B {:>9.1} {:>9.1} {:>9.1} {:>8.1}/{:>8.1} {:>8.1}/{:>8.1}",
            i + 1,
            c.fill.rate(),
            c.drained.rate(),
            per(c.fill.written, c.fill.events),
            per(c.drained.written, c.drained.events),
            c.fill_peak,
            c.drained.relay_peak,
            c.drained.sink_peak,
            mib(c.disk_filled.apparent),
            mib(c.disk_filled.allocated),
            mib(c.disk_drained.apparent),
            mib(c.disk_drained.allocated),
        );
    }
    println!(
        "after the close: relay disk {:.1} MiB files, {:.1} MiB allocated; close wrote {} B; \
         upstream disk {:.1} MiB = {:.0} B per event it stored",
        mib(disk_closed.apparent),
        mib(disk_closed.allocated),
        thousands(close_written),
        mib(disk_sink.worst()),
        per(
            disk_sink.worst(),
            cycles.iter().map(|c| c.drained.events).sum()
        )
    );
    let sink_written: u64 = cycles.iter().map(|c| c.drained.sink_written).sum();
    let delivered: u64 = cycles.iter().map(|c| c.drained.events).sum();
    println!(
        "upstream (own process) wrote {:.0} B per event it stored",
        per(sink_written, delivered)
    );
    println!();

    let first = cycles[0].disk_drained.worst();
    let last = cycles.last().expect("a cycle").disk_drained.worst();
    let growth = last as f64 / first as f64 - 1.0;
    goals.add(
        &format!("relay disk after cycle {} vs after cycle 1", args.cycles),
        format!("{:+.1}%", growth * 100.0),
        &format!(
            "({:.1} vs {:.1} MiB, the larger of files and allocated, after each drain)",
            mib(last),
            mib(first)
        ),
        "≤ +10%",
        (args.cycles > 1).then_some(growth <= 0.10),
    );
    let ingest_per = per(ndjson.written, ndjson.events);
    let drain_per = per(cycles.iter().map(|c| c.drained.written).sum(), delivered);
    let close_per = per(close_written, delivered);
    let life = ingest_per + drain_per + close_per;
    goals.add(
        "bytes written per event, whole life",
        format!("{life:.0} B = {:.2}x", life / encoded),
        &format!(
            "encoded, over {} cycles; close {close_per:.1} B/event",
            args.cycles
        ),
        "≤ 2x encoded",
        Some(life <= 2.0 * encoded),
    );
    goals.add(
        "  ... ingest (NDJSON batches of 100)",
        format!("{ingest_per:.0} B = {:.2}x", ingest_per / encoded),
        "",
        "",
        None,
    );
    goals.add(
        "  ... delivery, acks and deletes (the drain)",
        format!("{drain_per:.0} B = {:.2}x", drain_per / encoded),
        "",
        "",
        None,
    );
    goals.add(
        "  ... single-event ingest, 1 / 16 producers (not above)",
        format!(
            "{:.0} / {:.0} B",
            per(single1.written, single1.events),
            per(single16.written, single16.events)
        ),
        "",
        "",
        None,
    );
    goals.add(
        "  ... plain-file floor, groups of 400 / 100",
        format!(
            "{:.0} / {:.0} B",
            per(floors[0].written, floors[0].events),
            per(floors[1].written, floors[1].events)
        ),
        "",
        "",
        None,
    );
    println!();
    goals.print();
}
