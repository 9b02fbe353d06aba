//! Family `sim`: the real relay and the real reference upstream as turmoil hosts, under fault
//! schedules drawn from seeds (partitions, stalls, one-way loss, crashes and restarts on the
//! stores), checked for safety at every simulated tick and for liveness after the last fault.

mod hosts;
mod net;
mod schedule;

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use edge_relay::contract::Gap;
use edge_relay::demo::audit::{Audit, audit, audit_with_gaps};
use edge_relay::event::Event;
use edge_relay::outbox::OutboxStats;

use crate::summary::FamilySummary;
use hosts::{GATEWAY, SharedRef};
use schedule::{Action, RELAY, Schedule, UPSTREAM};

/// Simulated time per step.
const TICK: Duration = Duration::from_millis(10);
/// Liveness: after the last fault heals, the backlog is delivered within this (simulated)
/// time. The relay's worst case is a backoff cap (2 s) plus a request timeout (2 s) per
/// failed attempt while sessions come back, and the backlog itself (~1000 events in 32-event
/// batches); 30 s leaves room for a few of each.
const DRAIN_BOUND: Duration = Duration::from_secs(30);
/// Seeds run when `PARTITION_SEEDS` is not set (CI).
const DEFAULT_SEEDS: u64 = 200;

/// One finished run.
struct Outcome {
    audit: Audit,
    /// Accepted events missing upstream inside a reported gap (`drop_oldest` only).
    dropped: u64,
    faults: u64,
    drain: Duration,
}

/// All seeds, on one worker thread per core; publishes `sim` (overflow `reject`) and
/// `sim-drop-oldest`, then fails with every failing seed and the command that replays it.
#[test]
fn seeds() {
    let _ = env_logger::builder().is_test(true).try_init();
    let started = Instant::now();
    let seeds = seed_list();
    let next = AtomicUsize::new(0);
    let results = Mutex::new(Vec::new());
    let workers = std::thread::available_parallelism().map_or(2, |n| n.get().min(4));
    std::thread::scope(|scope| {
        for _ in 0..workers {
            scope.spawn(|| {
                while let Some(&seed) = seeds.get(next.fetch_add(1, Ordering::Relaxed)) {
                    let result = run_seed_caught(seed);
                    results
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .push((seed, result));
                }
            });
        }
    });
    let mut results = results.into_inner().unwrap_or_else(PoisonError::into_inner);
    results.sort_by_key(|(seed, _)| *seed);
    let mut reject = FamilySummary::new("sim");
    let mut drop_oldest = FamilySummary::new("sim-drop-oldest");
    let mut failures = Vec::new();
    for (seed, (outcome, why)) in results {
        let summary = match Schedule::generate(seed).drop_oldest {
            true => &mut drop_oldest,
            false => &mut reject,
        };
        if let Some(o) = outcome {
            summary.add_run(&o.audit, o.faults, o.drain);
            summary.dropped_in_gaps += o.dropped;
        }
        if let Some(why) = why {
            failures.push(failure(seed, &why));
        }
    }
    eprintln!(
        "sim: {} seeds, {} faults, in {:.1?} wall time on {workers} threads",
        seeds.len(),
        reject.faults + drop_oldest.faults,
        started.elapsed()
    );
    reject.publish();
    drop_oldest.publish();
    assert!(
        failures.is_empty(),
        "{} seed(s) failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

/// `PARTITION_SEED=n`: that seed only; else `0..PARTITION_SEEDS` (default [`DEFAULT_SEEDS`]).
fn seed_list() -> Vec<u64> {
    let var = |name| {
        std::env::var(name)
            .ok()
            .and_then(|v| v.trim().parse::<u64>().ok())
    };
    match var("PARTITION_SEED") {
        Some(seed) => vec![seed],
        None => (0..var("PARTITION_SEEDS").unwrap_or(DEFAULT_SEEDS)).collect(),
    }
}

/// [`run_seed`], with a panic turned into the seed's failure.
fn run_seed_caught(seed: u64) -> (Option<Outcome>, Option<String>) {
    catch_unwind(AssertUnwindSafe(|| run_seed(seed))).unwrap_or_else(|panic| {
        let why = panic
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_default();
        (None, Some(format!("panicked: {why}")))
    })
}

fn failure(seed: u64, why: &str) -> String {
    let schedule = Schedule::generate(seed);
    format!(
        "seed {seed}: {why}\n  schedule: {schedule:?}\n  replay: PARTITION_SEED={seed} cargo test --test partition sim -- --nocapture"
    )
}

/// One seed: build the world, play the schedule, check the acked seq after every tick, wait for
/// the drain, audit. Returns the outcome (if the run got to its audit) and why it failed.
fn run_seed(seed: u64) -> (Option<Outcome>, Option<String>) {
    let schedule = Arc::new(Schedule::generate(seed));
    let dirs = (hosts::temp_dir(), hosts::temp_dir());
    let (Ok(relay_dir), Ok(sink_dir)) = dirs else {
        return (None, Some("no temp dir".into()));
    };
    let shared = SharedRef::default();
    let ms = Duration::from_millis;
    let mut sim = turmoil::Builder::new()
        .rng_seed(seed)
        // Which host runs first in a tick is drawn from the seed too.
        .enable_random_order()
        .tick_duration(TICK)
        .simulation_duration(Duration::from_secs(3600))
        .min_message_latency(ms(schedule.latency_ms.0))
        .max_message_latency(ms(schedule.latency_ms.1))
        .build();
    let (dir, s) = (sink_dir.path().to_owned(), shared.clone());
    sim.host(UPSTREAM, move || hosts::upstream(dir.clone(), s.clone()));
    let (dir, s, plan) = (
        relay_dir.path().to_owned(),
        shared.clone(),
        schedule.clone(),
    );
    sim.host(RELAY, move || {
        hosts::relay(dir.clone(), s.clone(), plan.clone())
    });

    let played = play(&mut sim, &schedule, &shared).and_then(|drain| {
        let upstream = upstream_view(&shared)?;
        Ok((drain, upstream))
    });
    drop(sim); // drops both hosts, and with them the stores, before the dirs go
    match played {
        Ok((drain, (stored, gaps))) => {
            let (outcome, why) = audit_run(&schedule, &shared, drain, &stored, &gaps);
            (Some(outcome), why)
        }
        Err(why) => (None, Some(why)),
    }
}

/// The upstream's stored events and recorded gaps of the relay's stream.
fn upstream_view(shared: &SharedRef) -> Result<(Vec<Event>, Vec<Gap>), String> {
    let s = shared.lock();
    let stream = s.relay.as_ref().map(|r| r.borrow().stream);
    let (Some(stream), Some(store)) = (stream, s.sink.upgrade()) else {
        return Err("the relay or the upstream is not running at the end".into());
    };
    let stored = store.events(GATEWAY, stream);
    let gaps = store.gaps(GATEWAY, stream);
    stored
        .and_then(|e| Ok((e, gaps?)))
        .map_err(|e| format!("reading the upstream store: {e}"))
}

/// Plays the schedule; after the last fault healed, stops ingest and waits for the drain.
/// Returns the drain time (simulated).
fn play(
    sim: &mut turmoil::Sim<'_>,
    schedule: &Schedule,
    shared: &SharedRef,
) -> Result<Duration, String> {
    let actions = schedule.actions();
    let healed_at = schedule.healed_at();
    let mut next = 0;
    loop {
        let now = sim.elapsed();
        while let Some(&(at, action)) = actions.get(next).filter(|(at, _)| *at <= now) {
            apply(sim, action);
            log::info!(at:? = at, action:? = action; "sim: fault action");
            next += 1;
        }
        if now >= healed_at {
            shared.lock().stop_ingest = true;
        }
        sim.step()
            .map_err(|e| format!("at {now:?}: host failed: {e}"))?;
        let state = observe(shared)?;
        if now >= healed_at && state.drained {
            return Ok(now - healed_at);
        }
        if now > healed_at + DRAIN_BOUND {
            return Err(format!(
                "liveness: backlog not drained {DRAIN_BOUND:?} after the last fault healed (at {healed_at:?}): relay {:?}, upstream acked seq {:?}, producer pending {}",
                state.relay, state.acked_seq, state.pending
            ));
        }
    }
}

fn apply(sim: &mut turmoil::Sim<'_>, action: Action) {
    match action {
        Action::Partition => sim.partition(RELAY, UPSTREAM),
        Action::Repair => sim.repair(RELAY, UPSTREAM),
        Action::Hold => sim.hold(RELAY, UPSTREAM),
        Action::Release => sim.release(RELAY, UPSTREAM),
        Action::PartitionOneway(from, to) => sim.partition_oneway(from, to),
        Action::RepairOneway(from, to) => sim.repair_oneway(from, to),
        Action::Crash(host) => sim.crash(host),
        Action::Bounce(host) => sim.bounce(host),
    }
}

/// What the checker saw after one tick.
struct Observed {
    relay: Option<OutboxStats>,
    acked_seq: Option<u64>,
    pending: bool,
    drained: bool,
}

/// Safety after every tick: the relay's acked seq never passes the upstream's
/// stored acked seq. Also says whether everything accepted is delivered and acknowledged.
fn observe(shared: &SharedRef) -> Result<Observed, String> {
    let s = shared.lock();
    let relay = s.relay.as_ref().map(|r| *r.borrow());
    let acked_seq = match (relay, s.sink.upgrade()) {
        (Some(stats), Some(store)) => Some(
            store
                .written_acked_seq(GATEWAY, stats.stream)
                .map_err(|e| format!("reading the upstream acked seq: {e}"))?
                .acked_seq_or_zero(),
        ),
        _ => None,
    };
    if let (Some(stats), Some(acked_seq)) = (relay, acked_seq)
        && stats.acked_seq > acked_seq
    {
        return Err(format!(
            "safety: relay acked seq {} but the upstream has stored only up to {acked_seq}",
            stats.acked_seq
        ));
    }
    let drained = s.stop_ingest
        && s.pending.is_none()
        && relay.zip(acked_seq).is_some_and(|(stats, acked_seq)| {
            stats.backlog_events == 0
                && stats.acked_seq + 1 == stats.next_seq
                && acked_seq == stats.acked_seq
        });
    Ok(Observed {
        relay,
        acked_seq,
        pending: s.pending.is_some(),
        drained,
    })
}

/// The end-of-run audit against the upstream's own store: exactly once, in seq order; with
/// `drop_oldest`, what is missing lies in reported gaps, which hold only seqs the relay dropped
/// (at most its drop count: it also counts dropped events that an unacknowledged batch had
/// already delivered), and with `reject` there is no gap at all.
fn audit_run(
    schedule: &Schedule,
    shared: &SharedRef,
    drain: Duration,
    stored: &[Event],
    gaps: &[Gap],
) -> (Outcome, Option<String>) {
    let faults = schedule.episodes.len() as u64;
    let s = shared.lock();
    let stats = s.relay.as_ref().map(|r| *r.borrow()).unwrap_or_default();
    let (audit, dropped, why) = if schedule.drop_oldest {
        let a = audit_with_gaps(&s.accepted, stored, gaps);
        let in_gaps: u64 = gaps.iter().map(|g| g.dropped_to - g.dropped_from + 1).sum();
        let why = if !a.is_clean() {
            Some(format!("audit: {a}"))
        } else if in_gaps > stats.dropped_events {
            Some(format!(
                "gaps cover {in_gaps} seqs but the relay dropped {} events: {gaps:?}",
                stats.dropped_events
            ))
        } else {
            None
        };
        (a.audit, a.dropped as u64, why)
    } else {
        let a = audit(&s.accepted, stored);
        let why = if !a.is_clean() {
            Some(format!("audit: {a}"))
        } else if !gaps.is_empty() {
            Some(format!("gaps reported under overflow = reject: {gaps:?}"))
        } else {
            None
        };
        (a, 0, why)
    };
    let why = why.or_else(|| (audit.produced == 0).then(|| "nothing was accepted".into()));
    (
        Outcome {
            audit,
            dropped,
            faults,
            drain,
        },
        why,
    )
}
