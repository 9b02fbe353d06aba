//! Power cuts: the relay daemon and the reference upstream as real processes, each on its own
//! filesystem that loses every write not fsynced (`tests/support/lazyfs.rs`), cut during
//! ingest and during delivery and restarted on what survived; plus the negative control, the
//! same family on filesystems whose fsync does nothing.

use std::collections::HashMap;
use std::fmt::Debug;
use std::ops::Range;
use std::path::Path;
use std::time::{Duration, Instant};

use edge_relay::demo::audit::{Audit, audit};
use edge_relay::event::Event;
use edge_relay::sink::SinkStore;
use rand::RngExt;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::lazyfs::{self, Fsync, LazyFs};
use crate::real_net::*;
use crate::summary::FamilySummary;
use crate::support::process::{all_acked, free_port, status, write_config_with};

mod compaction;
mod procs;
use procs::*;

/// Power cuts per CI run of the family (of the relay, the upstream or both at once; the
/// summary's `faults` counts machines cut, the final cut of each run's upstream included);
/// `PARTITION_POWERCUT_CUTS` raises it.
const CUTS: u64 = 40;
/// Cuts per run (one setup, its producers, one audit).
const CUTS_PER_RUN: u64 = 20;
/// Cuts of the negative control's single run: it must be caught within them.
const CONTROL_CUTS: u64 = 6;
/// The moments cuts land at, in the order drawn for each run (then shuffled).
const KINDS: [Cut; 6] = [
    Cut::RelayIngest,
    Cut::RelayDelivery,
    Cut::Upstream,
    Cut::RelayIngest,
    Cut::RelayDelivery,
    Cut::Both,
];
/// Share of the cuts that are torn ([`Fault::torn`]).
const TORN: f64 = 0.5;
/// Concurrent producers (their requests share group commits).
const PRODUCERS: u64 = 4;
/// Largest batch a producer posts.
const MAX_BATCH: u64 = 8;
/// Pause between a producer's batches, ms.
const PACE_MS: Range<u64> = 0..5;
/// A cut lands this many ms (random) after the victim showed progress...
const CUT_AFTER_MS: Range<u64> = 0..150;
/// ... or (two cuts in three) at this sync (random) of its filesystem: between two syncs of a
/// commit (the log and a blob, say), where a random moment rarely falls.
const SYNC_POINTS: Range<u32> = 1..16;
/// Bound on the wait for that sync.
const SYNC_BOUND: Duration = Duration::from_secs(10);
/// Bound on a process's start: its store open and its port bound. sled that hangs at open
/// counts as a store that does not open.
const START_BOUND: Duration = Duration::from_secs(30);
/// Bound on the progress a cut waits for (a batch accepted, a batch delivered).
const PROGRESS_BOUND: Duration = Duration::from_secs(30);
/// Liveness bound after the last cut: reconnect, acked seq, the backlog of up to 64 KiB events.
const DRAIN_BOUND: Duration = Duration::from_secs(60);
/// Bound on a producer's last batch.
const PRODUCER_STOP: Duration = Duration::from_secs(30);

/// One power cut of a run: whose, when, and how much of what was not synced survives.
#[derive(Clone, Copy)]
struct Fault {
    cut: Cut,
    at: At,
    /// `Some(seed)`: a torn cut ([`LazyFs::cut_torn`]), a random half of the pages written
    /// since the last sync survives; `None`: none does.
    torn: Option<u64>,
}

impl Debug for Fault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}@{:?}", self.cut, self.at)?;
        match self.torn {
            Some(seed) => write!(f, "+torn{seed}"),
            None => Ok(()),
        }
    }
}

/// When a cut lands, once the victim showed progress.
#[derive(Clone, Copy)]
enum At {
    /// This many ms later.
    After(u64),
    /// At the `k`-th sync of the (first) victim's filesystem, before it is applied.
    Sync(u32),
}

impl Debug for At {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            At::After(ms) => write!(f, "{ms}ms"),
            At::Sync(k) => write!(f, "sync{k}"),
        }
    }
}

/// Where a cut lands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Cut {
    /// The gateway loses power while producers post and the upstream is down (the relay only
    /// ingests; its backlog grows).
    RelayIngest,
    /// The gateway loses power while it delivers its backlog to the upstream.
    RelayDelivery,
    /// The upstream loses power while the relay delivers to it.
    Upstream,
    /// Both lose power at once while the relay delivers.
    Both,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn powercut() {
    let Some(mut rng) = prepare("powercut", "powercut") else {
        return;
    };
    let mut summary = FamilySummary::new("powercut");
    let mut broken = Vec::new();
    let mut left = count_from_env("PARTITION_POWERCUT_CUTS", CUTS);
    let mut run = 0;
    while left > 0 {
        let cuts = left.min(CUTS_PER_RUN);
        left -= cuts;
        let end = one_run(&mut rng, cuts, Fsync::Honoured).await;
        end.report(&mut summary, run);
        broken.extend(end.violations.iter().map(|v| format!("run {run}: {v}")));
        run += 1;
    }
    summary.publish();
    assert!(
        broken.is_empty(),
        "partition: family=powercut: {} violation(s):\n{}",
        broken.len(),
        broken.join("\n")
    );
}

/// The negative control: the same family on filesystems whose fsync does nothing must report
/// a violation (its checker catches lost writes).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn powercut_nofsync() {
    let Some(mut rng) = prepare("powercut-nofsync", "powercut_nofsync") else {
        return;
    };
    let mut summary = FamilySummary::new("powercut-nofsync");
    let end = one_run(&mut rng, CONTROL_CUTS, Fsync::Ignored).await;
    end.report(&mut summary, 0);
    summary.publish();
    assert!(
        !end.violations.is_empty(),
        "negative control: with fsync ignored the family found nothing wrong: {:?}",
        end.audit
    );
}

/// The run's seed, or `None` (after printing why) when FUSE is not available here.
///
/// # Panics
/// FUSE is not available under `CI=true`.
fn prepare(family: &str, test: &str) -> Option<StdRng> {
    let reason = lazyfs::unsupported().or_else(|| {
        // The one check that settles it: a mount.
        let dir = tempfile::tempdir().unwrap();
        LazyFs::mount(dir.path(), Fsync::Honoured)
            .err()
            .map(|e| format!("cannot mount a FUSE filesystem: {e}"))
    });
    if let Some(reason) = reason {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "partition: family={family} cannot run under CI=true: {reason}"
        );
        eprintln!("partition: family={family} SKIPPED: {reason}");
        return None;
    }
    Some(seeded(family, test))
}

/// What a run leaves for the verdict.
struct RunEnd {
    /// The cuts, in order.
    schedule: Vec<Fault>,
    /// Machine power cuts applied (a [`Cut::Both`] counts two), the final one included.
    faults: u64,
    /// The audit of the upstream's store against every answer producers got.
    audit: Audit,
    /// From the last cut until the backlog drained.
    drain: Duration,
    /// Store compactions of the relay since its last start, read when the backlog drained.
    compactions: u64,
    /// Every broken promise, in words (empty: the run is clean).
    violations: Vec<String>,
    /// What each cut dropped, printed with the violations.
    dropped: Vec<String>,
}

impl RunEnd {
    /// Prints the run's line and counts it in `summary`.
    fn report(&self, summary: &mut FamilySummary, run: u64) {
        eprintln!(
            "partition: family={} run={run} schedule={:?}: {} faults={} drain={:?} \
             compactions since the relay's last start={} violations={}",
            summary.family,
            self.schedule,
            self.audit,
            self.faults,
            self.drain,
            self.compactions,
            self.violations.len()
        );
        for v in &self.violations {
            eprintln!("  {v}");
        }
        if !self.violations.is_empty() {
            eprintln!("  what the cuts dropped (unsynced writes), in order:");
            for d in &self.dropped {
                eprintln!("    {d}");
            }
        }
        summary.add_run(&self.audit, self.faults, self.drain);
    }
}

/// One run: a fresh relay and upstream on fresh filesystems, `cuts` power cuts drawn from
/// [`KINDS`], the drain, a last cut of the upstream, then the audit of what its store kept.
async fn one_run(rng: &mut StdRng, cuts: u64, fsync: Fsync) -> RunEnd {
    let tmp = tempfile::tempdir().unwrap();
    let mut kinds: Vec<Cut> = (0..cuts as usize).map(|i| KINDS[i % KINDS.len()]).collect();
    kinds.shuffle(rng);
    let schedule: Vec<Fault> = kinds
        .into_iter()
        .map(|cut| {
            let at = if rng.random_range(0..3) > 0 {
                At::Sync(rng.random_range(SYNC_POINTS))
            } else {
                At::After(rng.random_range(CUT_AFTER_MS))
            };
            // Torn cuts only where syncs are honoured: the control must lose what it wrote.
            let torn = (fsync == Fsync::Honoured && rng.random_bool(TORN)).then(|| rng.random());
            Fault { cut, at, torn }
        })
        .collect();
    let relay_fs = mount(&tmp.path().join("relay"), fsync);
    let sink_fs = mount(&tmp.path().join("sink-fs"), fsync);
    let sink_dir = sink_fs.path().join("store");
    // Compaction from 1 MiB (not 16): the relay swaps its store for a fresh one now and then
    // while it delivers, and cuts land during those swaps too.
    let relay_keys = "backoff_initial_ms = 10\nbackoff_max_ms = 200\nbatch_max_events = 50\n\
                      request_timeout_ms = 2000\n[buffer]\ncompact_min_bytes = 1048576";
    // data_dir = <tmp>/relay, the relay's mount.
    let (mut relay, mut sink, port) = relay_and_sink(tmp.path(), &sink_dir, relay_keys);
    let mut end = RunEnd {
        schedule: schedule.clone(),
        faults: 0,
        audit: audit(&[], &[]),
        drain: Duration::ZERO,
        compactions: 0,
        violations: Vec::new(),
        dropped: Vec::new(),
    };
    if let Err(e) = sink.start().await.and(relay.start().await) {
        panic!("a fresh run does not start: {e}");
    }
    let stream = status(port).await.expect("the relay answers").stream;
    // Cancelled when the relay is gone for good: producers then drop their unanswered batch.
    let abandon = CancellationToken::new();
    let producers: Vec<_> = (0..PRODUCERS)
        .map(|_| producer(port, rng.random(), abandon.clone()))
        .collect();
    let batches = || producers.iter().map(Producer::batches).sum::<usize>();
    let mut last_cut = Instant::now();
    for &Fault { cut, at, torn } in &schedule {
        let step = async {
            if cut == Cut::RelayIngest {
                // An outage of the upstream (no cut): the relay only ingests.
                sink.kill();
                let before = batches();
                within(
                    PROGRESS_BOUND,
                    "a batch accepted",
                    || async { Some(batches()) },
                    |n| *n > before,
                )
                .await?;
            } else {
                if !sink.running() {
                    sink.start().await?;
                }
                let before = status(port).await.map_or(0, |s| s.acked_seq);
                within(
                    PROGRESS_BOUND,
                    "a batch delivered",
                    || status(port),
                    |s| s.acked_seq > before,
                )
                .await?;
            }
            let (cut_relay, cut_sink) = match cut {
                Cut::RelayIngest | Cut::RelayDelivery => (true, false),
                Cut::Upstream => (false, true),
                Cut::Both => (true, true),
            };
            let mut victims = Vec::new();
            if cut_relay {
                victims.push((&mut relay, &relay_fs));
            }
            if cut_sink {
                victims.push((&mut sink, &sink_fs));
            }
            let late = land(at, victims[0].1).await;
            end.faults += victims.len() as u64;
            let dropped = power_cut(&mut victims, torn);
            end.dropped
                .push(format!("{cut:?}@{at:?}: {}", dropped.join(", ")));
            last_cut = Instant::now();
            late?;
            if cut_sink {
                sink.start().await?;
            }
            if cut_relay {
                relay.start().await?;
                let now =
                    within(START_BOUND, "the relay's status", || status(port), |_| true).await?;
                if now.stream != stream {
                    return Err(format!(
                        "the relay's store was re-created after the cut: stream {stream} became {} \
                         (next_seq {})",
                        now.stream, now.next_seq
                    ));
                }
            }
            Ok(())
        };
        if let Err(e) = step.await {
            end.violations.push(format!("{cut:?} cut at {at:?}: {e}"));
            break;
        }
    }
    // The end: the upstream up, producers stopped, the backlog drained, then one more cut of
    // the upstream: what it acknowledged must survive it.
    let mut relay_acked = None;
    if end.violations.is_empty()
        && !sink.running()
        && let Err(e) = sink.start().await
    {
        end.violations.push(format!("after the cuts: {e}"));
    }
    if !end.violations.is_empty() {
        abandon.cancel();
    }
    let mut answers = Vec::new();
    for p in producers {
        answers.extend(p.finish(PRODUCER_STOP).await);
    }
    if end.violations.is_empty() {
        let what = "liveness: backlog drained";
        match within(DRAIN_BOUND, what, || status(port), all_acked).await {
            Ok(report) => {
                end.drain = last_cut.elapsed();
                end.compactions = report.store_compactions;
                relay_acked = Some(report.acked_seq);
            }
            Err(e) => end.violations.push(e),
        }
    }
    relay.kill();
    end.faults += 1;
    let dropped = power_cut(&mut [(&mut sink, &sink_fs)], None);
    end.dropped
        .push(format!("final upstream cut: {}", dropped.join(", ")));
    end.violations.extend(conflicts(&answers));
    let produced = distinct_by_seq(&answers);
    match read_upstream(&sink_dir, stream).await {
        Ok((stored, acked_seq)) => {
            end.audit = audit(&produced, &stored);
            if !end.audit.is_clean() {
                end.violations
                    .push(format!("audit of the upstream's store: {}", end.audit));
            }
            if let Some(acked) = relay_acked.filter(|&a| a != acked_seq) {
                end.violations.push(format!(
                    "the relay's acked_seq {acked} differs from the upstream's durable acked seq {acked_seq}"
                ));
            }
        }
        Err(e) => {
            end.violations
                .push(format!("the upstream's store after the final cut: {e}"));
            // Nothing of it can be read: every accepted event is lost.
            end.audit = audit(&produced, &[]);
        }
    }
    end
}

/// The upstream's events of `stream` and its acked seq, read from its store in `dir`, on a thread
/// of its own: sled may panic or hang on a damaged store, which is then the error.
async fn read_upstream(dir: &Path, stream: Uuid) -> Result<(Vec<Event>, u64), String> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    let dir = dir.to_owned();
    std::thread::spawn(move || {
        let read = std::panic::catch_unwind(|| {
            let store = SinkStore::open(&dir).map_err(|e| format!("does not open: {e}"))?;
            let events = store.events(GATEWAY, stream);
            let acked_seq = store.written_acked_seq(GATEWAY, stream);
            match (events, acked_seq) {
                (Ok(events), Ok(acked_seq)) => Ok((events, acked_seq.acked_seq_or_zero())),
                (Err(e), _) | (_, Err(e)) => Err(format!("cannot be read: {e}")),
            }
        });
        let _ = tx.send(read.unwrap_or_else(|panic| {
            let text = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| (*s).to_owned()))
                .unwrap_or_default();
            Err(format!("panics at open or read: {text}"))
        }));
    });
    match tokio::time::timeout(START_BOUND, rx).await {
        Ok(Ok(read)) => read,
        Ok(Err(_)) => Err("its reader thread vanished".into()),
        Err(_) => Err(format!("not open and read within {START_BOUND:?} (hung)")),
    }
}

/// Waits for the moment `at` of a cut on `fs`; the error says the armed sync never came (the
/// cut then lands at once all the same).
async fn land(at: At, fs: &LazyFs) -> Result<(), String> {
    match at {
        // Schedule, not synchronisation: the moment drawn for the cut.
        At::After(ms) => {
            tokio::time::sleep(Duration::from_millis(ms)).await;
            Ok(())
        }
        At::Sync(k) => {
            fs.power_off_at_sync(k);
            let what = format!("sync {k} of {}", fs.path().display());
            within(
                SYNC_BOUND,
                &what,
                || async { Some(fs.is_off()) },
                |off| *off,
            )
            .await
            .map(drop)
        }
    }
}

/// The power cut of `victims` at once: their filesystems stop (a sync in flight is never
/// answered), their processes are killed, and what the filesystems did not hold durably is
/// gone, or (`torn`) a random part of it. Returns what was dropped, file by file
/// (`<mount>/<path>: size -> size`).
fn power_cut(victims: &mut [(&mut Proc, &LazyFs)], torn: Option<u64>) -> Vec<String> {
    for (_, fs) in victims.iter() {
        fs.power_off();
    }
    for (proc, _) in victims.iter_mut() {
        proc.sigkill();
    }
    for (proc, fs) in victims.iter_mut() {
        fs.fail_held_syncs();
        proc.reap();
    }
    let mut dropped = Vec::new();
    for (_, fs) in victims.iter() {
        let mount = fs
            .path()
            .file_name()
            .unwrap()
            .to_string_lossy()
            .into_owned();
        let cut = match torn {
            Some(seed) => fs.cut_torn(seed),
            None => fs.cut(),
        };
        dropped.extend(cut.into_iter().map(|d| format!("{mount}/{d}")));
    }
    dropped
}

/// Mounts a [`LazyFs`] on a new directory `dir`.
fn mount(dir: &Path, fsync: Fsync) -> LazyFs {
    std::fs::create_dir(dir).unwrap();
    LazyFs::mount(dir, fsync).unwrap_or_else(|e| panic!("mounting {}: {e}", dir.display()))
}

/// Producers' answers as the audit wants them: each id once, in seq order (producers run
/// concurrently, so answer order is per producer only).
fn distinct_by_seq(answers: &[(u64, Uuid)]) -> Vec<(u64, Uuid)> {
    let mut seen = std::collections::HashSet::new();
    let mut out: Vec<(u64, Uuid)> = answers
        .iter()
        .copied()
        .filter(|(_, id)| seen.insert(*id))
        .collect();
    out.sort_by_key(|(seq, _)| *seq);
    out
}

/// Broken answers: a seq answered for two ids, or an id answered with two seqs (a retry must
/// get its original seq back).
fn conflicts(answers: &[(u64, Uuid)]) -> Vec<String> {
    let mut by_seq: HashMap<u64, Uuid> = HashMap::new();
    let mut by_id: HashMap<Uuid, u64> = HashMap::new();
    let mut found = Vec::new();
    for &(seq, id) in answers {
        let first_id = *by_seq.entry(seq).or_insert(id);
        if first_id != id {
            found.push(format!(
                "seq {seq} answered for two ids: {first_id} and {id}"
            ));
        }
        let first_seq = *by_id.entry(id).or_insert(seq);
        if first_seq != seq {
            found.push(format!(
                "id {id} answered with seq {first_seq}, then with seq {seq}"
            ));
        }
    }
    found.sort();
    found.dedup();
    found
}
