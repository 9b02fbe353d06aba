//! Power cuts during a compaction (`outbox::compact`'s swap into a fresh store): a relay's store
//! filled on a power-cut filesystem, then `edge-relay compact` cut at its 1st sync, then at its
//! 2nd, and so on until one runs to the end with no cut. After every cut the store must open
//! (`edge-relay inspect`, a process of its own) holding every accepted event under its seq;
//! at the end the relay drains it to the upstream, whose own store is audited. Its negative
//! control lets the filesystem ignore the compaction's syncs, and must be caught.

use std::process::Stdio;

use serde_json::Value;

use super::*;
use crate::support::process::{POLL, binary};

/// Batches (1..=8 events of 100 B to 64 KiB each) accepted before the sweep.
const FILL_BATCHES: usize = 40;
/// The sweep gives up past this many sync points (a compaction has about a dozen).
const MAX_SYNC_POINTS: u32 = 64;
/// Bound on one `edge-relay compact` or `edge-relay inspect` process.
const PROCESS_BOUND: Duration = Duration::from_secs(30);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn powercut_compaction() {
    let Some(mut rng) = prepare("powercut-compaction", "powercut_compaction") else {
        return;
    };
    let mut summary = FamilySummary::new("powercut-compaction");
    let end = sweep(&mut rng, Fsync::Honoured).await;
    end.report(&mut summary);
    summary.publish();
    assert!(
        end.violations.is_empty(),
        "partition: family=powercut-compaction: {} violation(s):\n{}",
        end.violations.len(),
        end.violations.join("\n")
    );
    assert!(
        end.cuts >= 8,
        "the sweep cut only {} sync points of a compaction",
        end.cuts
    );
}

/// The negative control: the same sweep with the filesystem ignoring every sync once the store
/// is filled (a disk that lies about the compaction's flushes) must find a violation.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn powercut_compaction_nofsync() {
    let Some(mut rng) = prepare("powercut-compaction-nofsync", "powercut_compaction_nofsync")
    else {
        return;
    };
    let mut summary = FamilySummary::new("powercut-compaction-nofsync");
    let end = sweep(&mut rng, Fsync::Ignored).await;
    end.report(&mut summary);
    summary.publish();
    assert!(
        !end.violations.is_empty(),
        "negative control: with the compaction's syncs ignored the sweep found nothing wrong: {}",
        end.audit
    );
}

/// What a sweep leaves for the verdict.
struct SweepEnd {
    /// Sync points cut (one power cut each).
    cuts: u64,
    audit: Audit,
    violations: Vec<String>,
}

impl SweepEnd {
    fn report(&self, summary: &mut FamilySummary) {
        eprintln!(
            "partition: family={} sync points cut={}: {} violations={}",
            summary.family,
            self.cuts,
            self.audit,
            self.violations.len()
        );
        for v in &self.violations {
            eprintln!("  {v}");
        }
        summary.add_run(&self.audit, self.cuts, Duration::ZERO);
    }
}

/// Fills a relay's store, sweeps the sync points of `edge-relay compact` (the compaction's syncs
/// `honoured` or not), then drains the store to the upstream and audits the upstream's store.
async fn sweep(rng: &mut StdRng, compaction_fsync: Fsync) -> SweepEnd {
    let tmp = tempfile::tempdir().unwrap();
    let relay_fs = mount(&tmp.path().join("relay"), Fsync::Honoured);
    let sink_fs = mount(&tmp.path().join("sink-fs"), Fsync::Honoured);
    let data_dir = relay_fs.path().to_owned();
    let sink_dir = sink_fs.path().join("store");
    let (mut relay, mut sink, port) = relay_and_sink(
        tmp.path(),
        &sink_dir,
        "backoff_initial_ms = 10\nbackoff_max_ms = 200\nrequest_timeout_ms = 2000",
    );
    // The fill: the upstream down, so every accepted event stays in the relay's store.
    relay.start().await.expect("a fresh relay starts");
    let stream = status(port).await.expect("the relay answers").stream;
    let producer = producer(port, rng.random(), CancellationToken::new());
    within(
        PROGRESS_BOUND,
        "the fill",
        || async { Some(producer.batches()) },
        |n| *n >= FILL_BATCHES,
    )
    .await
    .expect("the relay accepts the fill");
    let accepted = distinct_by_seq(&producer.finish(PRODUCER_STOP).await);
    relay.kill();
    relay_fs.set_fsync(compaction_fsync);

    let mut end = SweepEnd {
        cuts: 0,
        audit: audit(&accepted, &[]),
        violations: conflicts(&accepted),
    };
    let log = tmp.path().join("compact.log");
    for k in 1..=MAX_SYNC_POINTS {
        relay_fs.power_off_at_sync(k);
        let mut child = std::process::Command::new(binary())
            .args(["compact", "--data-dir"])
            .arg(&data_dir)
            .env("RUST_BACKTRACE", "0")
            .stdout(Stdio::null())
            .stderr(Stdio::from(std::fs::File::create(&log).unwrap()))
            .spawn()
            .expect("spawn edge-relay compact");
        let started = Instant::now();
        let exit = loop {
            match (child.try_wait().unwrap(), relay_fs.is_off()) {
                (_, true) => break Ok(None),
                (Some(exit), false) => break Ok(Some(exit)),
                (None, false) if started.elapsed() > PROCESS_BOUND => {
                    break Err(format!("sync {k}: edge-relay compact hung"));
                }
                // Polling a child process and a flag: nothing to wait on instead.
                (None, false) => tokio::time::sleep(POLL).await,
            }
        };
        let cut = match exit {
            Ok(None) => {
                // The power cut: the process dies in its held sync, unsynced writes are gone.
                let _ = child.kill();
                relay_fs.fail_held_syncs();
                let _ = child.wait();
                end.cuts += 1;
                Some(relay_fs.cut())
            }
            Ok(Some(exit)) => {
                relay_fs.disarm();
                if !exit.success() {
                    let why = head(&log, 0);
                    end.violations
                        .push(format!("edge-relay compact failed ({exit}): {why}"));
                }
                None
            }
            Err(e) => {
                let _ = child.kill();
                end.violations.push(e);
                break;
            }
        };
        let moment = match &cut {
            Some(dropped) => format!("cut at sync {k} (dropped: {})", dropped.join(", ")),
            None => format!("after a whole compaction (sync {k} never came)"),
        };
        if let Err(e) = holds(&data_dir, stream, &accepted).await {
            end.violations.push(format!("{moment}: {e}"));
            break;
        }
        if cut.is_none() {
            break;
        }
    }
    if !end.violations.is_empty() {
        return end;
    }
    // The drain of what survived every cut, and the audit of the upstream's store.
    if let Err(e) = sink.start().await.and(relay.start().await) {
        end.violations.push(format!("after the sweep: {e}"));
        return end;
    }
    match within(DRAIN_BOUND, "the drain", || status(port), all_acked).await {
        Ok(report) if report.stream != stream => end.violations.push(format!(
            "the relay's stream changed after the sweep: {stream} became {}",
            report.stream
        )),
        Ok(_) => {}
        Err(e) => end.violations.push(e),
    }
    relay.kill();
    sink.kill();
    match read_upstream(&sink_dir, stream).await {
        Ok((stored, _)) => {
            end.audit = audit(&accepted, &stored);
            if !end.audit.is_clean() {
                end.violations
                    .push(format!("audit of the upstream's store: {}", end.audit));
            }
        }
        Err(e) => end.violations.push(format!("the upstream's store: {e}")),
    }
    end
}

/// Whether the relay's store in `data_dir` opens (`edge-relay inspect`, its own process) as
/// `stream`, holding exactly the `accepted` events, `(seq, id)`, in order.
async fn holds(data_dir: &Path, stream: Uuid, accepted: &[(u64, Uuid)]) -> Result<(), String> {
    let child = tokio::process::Command::new(binary())
        .args(["inspect", "--json", "--events", "1000000", "--data-dir"])
        .arg(data_dir)
        .env("RUST_BACKTRACE", "0")
        .kill_on_drop(true)
        .output();
    let out = match tokio::time::timeout(PROCESS_BOUND, child).await {
        Ok(Ok(out)) => out,
        Ok(Err(e)) => return Err(format!("spawn edge-relay inspect: {e}")),
        Err(_) => return Err(format!("the store did not open within {PROCESS_BOUND:?}")),
    };
    if !out.status.success() {
        return Err(format!(
            "the store does not open ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    let seen: Value = serde_json::from_slice(&out.stdout).map_err(|e| e.to_string())?;
    if seen["stream"] != Value::String(stream.to_string()) {
        return Err(format!(
            "the store's stream is {}, not {stream}",
            seen["stream"]
        ));
    }
    let held: Vec<(u64, Uuid)> = seen["oldest"]
        .as_array()
        .map(|events| {
            events
                .iter()
                .filter_map(|e| Some((e["seq"].as_u64()?, e["id"].as_str()?.parse().ok()?)))
                .collect()
        })
        .unwrap_or_default();
    if held != accepted {
        let lost = accepted.iter().filter(|a| !held.contains(a)).count();
        return Err(format!(
            "the store holds {} events, {lost} of the {} accepted missing or changed (next_seq {})",
            held.len(),
            accepted.len(),
            seen["next_seq"]
        ));
    }
    Ok(())
}
