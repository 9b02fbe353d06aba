//! Throughput, memory, flash writes and disk of the real daemon, on real sensor data (Daphnet,
//! 64 Hz), each figure printed beside its goal (issue 9, "Outbox v2", targets table).
//!
//! `cargo bench --bench throughput [-- FLAGS]`:
//! - `--events N` (default 1,000,000): events per fill; the buffered backlog, each cycle's fill
//!   and the floor's event count;
//! - `--cycles C` (default 10): fill/drain cycles; cycle 1 carries the main figures;
//! - `--idle-secs S` (default 10): how long the idle relay settles before its RSS is read;
//! - `--only-ingest`: measure the floor, then only the NDJSON phase of cycle 1 (min(N, 200,000)
//!   events, 4 producers, batches of 100, empty store) and stop: no idle RSS, single-event
//!   phases, drains, cycles or own-process run. For quick before/after comparisons of ingest.
//! - `--only-single`: only the two single-event phases of cycle 1 (1 producer, then 16, empty
//!   store, no floor) and their ratio goal, with the CPU per event of each. For quick
//!   before/after comparisons of group commit.
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
//! 5. the relay's close;
//! 6. the relay as deployed: `edge-relay run` in its own process, filled with N events by this
//!    process's producers and drained to the reference upstream; its peak RSS while buffered
//!    and while draining are read from its own `/proc/<pid>` and carry the RSS goals (the
//!    in-process peaks above include the load generator and are printed for comparison).
//!
//! Bytes written are `write_bytes` of `/proc/self/io` read right before and after each phase
//! (nothing is printed inside a phase). The bench process hosts the relay and the load generator,
//! which writes nothing to disk, so the delta is the relay's. `write_bytes` counts page-cache
//! pages dirtied (a partial page rewritten after each fsync counts again each time); the ext4
//! journal, written by a kernel thread, is not in it, so the device sees somewhat more.
//! The machine is shared (2 cores, other builds running): rates are indicative, RSS and bytes
//! are steadier.

use std::sync::Arc;
use std::time::Duration;

use edge_relay::config::Config;

mod load;
mod measure;
mod own_process;
mod procs;
mod quick;

use load::*;
use measure::*;
use own_process::*;
use procs::*;
use quick::*;

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
    only_ingest: bool,
    only_single: bool,
}

impl Args {
    /// Parses `--events`, `--cycles`, `--idle-secs`, `--only-ingest` and `--only-single`;
    /// ignores the `--bench` cargo adds.
    fn parse() -> Self {
        let mut args = Args {
            events: 1_000_000,
            cycles: 10,
            idle_secs: 10,
            only_ingest: false,
            only_single: false,
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
                "--only-ingest" => args.only_ingest = true,
                "--only-single" => args.only_single = true,
                "--bench" => {}
                other => panic!(
                    "unknown flag {other}; flags: --events N --cycles C --idle-secs S --only-ingest \
                     --only-single"
                ),
            }
        }
        assert!(args.events >= 1_000, "--events must be at least 1000");
        assert!(args.cycles >= 1, "--cycles must be at least 1");
        args
    }
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

    if args.only_single {
        only_single(config, &lines, n).await;
        return;
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
    if args.only_ingest {
        only_ingest(config, &lines, n, floor_rate).await;
        return;
    }

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
    reset_peak_rss("self");
    let relay = edge_relay::daemon::start(config, edge_relay::daemon::Seams::default())
        .await
        .expect("relay");
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
    let (single1, single16) = single_events(addr, &lines, n).await;
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

    ratio_goal(&mut goals, &single1, &single16);
    ndjson_goals(&mut goals, &probe, floor_rate);
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
        "",
        None,
    );
    goals.add(
        "relay peak RSS during the drain (in process)",
        format!("{:.1} MiB", drained.relay_peak),
        if drained.peak_reset {
            "(VmHWM reset before the drain)"
        } else {
            "(VmHWM could not be reset: peak since the relay's start)"
        },
        "",
        None,
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
        let peak_reset = reset_peak_rss("self");
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
            "cycle {c}: fill {:.0} events/s, drain {:.0} events/s; store compactions so far {}",
            fill.rate(),
            drained.rate(),
            relay.outbox.stats().compactions
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

    // 6. The relay as deployed: its own process, filled and drained once more.
    let own = own_process(&tmp.path().join("own"), &lines, n, upstream).await;
    let own_note = if own.peak_reset {
        ""
    } else {
        " (VmHWM not reset: since its start)"
    };
    println!(
        "relay in its own process: fill {:.0} events/s, {:.0} B written per event; drain {:.0} \
         events/s{own_note}",
        own.fill.rate(),
        per(own.fill.written, own.fill.events),
        own.drain_events as f64 / own.drain_took.as_secs_f64()
    );
    goals.add(
        "relay peak RSS, N buffered (own process)",
        format!("{:.1} MiB", own.buffered_peak),
        &format!(
            "(RSS with the backlog buffered {:.1} MiB)",
            own.buffered_rss
        ),
        "≤ 32 MiB",
        Some(own.buffered_peak <= 32.0),
    );
    goals.add(
        "relay peak RSS during the drain (own process)",
        format!("{:.1} MiB", own.drain_peak),
        &format!(
            "(reference upstream's peak meanwhile {:.1} MiB)",
            own.sink_peak
        ),
        "≤ 40 MiB",
        Some(own.drain_peak <= 40.0),
    );

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
            "({:.0} vs {:.0} KiB, the larger of files and allocated, after each drain)",
            last as f64 / 1024.0,
            first as f64 / 1024.0
        ),
        "≤ +10%",
        (args.cycles > 1).then_some(growth <= 0.10),
    );
    let peak1 = cycles[0].disk_filled.worst();
    let worst_after = cycles
        .iter()
        .map(|c| c.disk_drained.worst())
        .max()
        .unwrap_or(0);
    goals.add(
        "  ... largest after any drain vs cycle 1 filled",
        format!("{:+.1}%", (worst_after as f64 / peak1 as f64 - 1.0) * 100.0),
        &format!(
            "({:.1} vs {:.1} MiB: the store is compacted into a fresh one at the end of a drain)",
            mib(worst_after),
            mib(peak1)
        ),
        "",
        None,
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
