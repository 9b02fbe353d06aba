//! `--only-ingest` and `--only-single`: one goal's phases alone, for quick before/after runs;
//! and the single-event phases and their goal, which cycle 1 shares.

use std::net::SocketAddr;
use std::sync::Arc;

use edge_relay::config::Config;

use super::*;

/// User + system CPU time of this process so far, seconds (`getrusage`).
fn cpu_seconds() -> f64 {
    // SAFETY: getrusage only writes the struct it is given.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) } != 0 {
        return f64::NAN;
    }
    let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 * 1e-6;
    secs(usage.ru_utime) + secs(usage.ru_stime)
}

/// Adds the two NDJSON ingest goals: the rate, and the rate as a fraction of `floor_rate`
/// (events/s of the plain-file floor, groups of 400).
pub(crate) fn ndjson_goals(goals: &mut Goals, probe: &Ingested, floor_rate: f64) {
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
}

/// The NDJSON phase of cycle 1 alone: the relay in process, empty store, no upstream, then
/// `min(N, 200,000)` events in NDJSON batches of 100 from 4 producers; prints its goals and the
/// process's CPU time per event over the phase (steadier than the rate on a shared machine).
pub(crate) async fn only_ingest(config: Config, lines: &Arc<Lines>, n: usize, floor_rate: f64) {
    let relay = edge_relay::daemon::start(config, edge_relay::daemon::Seams::default())
        .await
        .expect("relay");
    let addr: SocketAddr = relay.ingest_addr;
    println!();
    println!("NDJSON ingest only (--only-ingest: no single-event phases, drain or own process)");
    report_header();
    let probe = measured_phase(
        "ingest, NDJSON batches of 100, 4 producers",
        addr,
        lines,
        200_000.min(n),
        BATCH,
        BATCH_PRODUCERS,
    )
    .await;
    relay.stop().await;
    let mut goals = Goals::default();
    ndjson_goals(&mut goals, &probe, floor_rate);
    println!();
    goals.print();
}

/// Cycle 1's single-event phases: `min(5,000, N / 20)` events from 1 producer, then
/// `min(40,000, N / 5)` from 16, one event per `POST`; each reported as it ends.
pub(crate) async fn single_events(
    addr: SocketAddr,
    lines: &Arc<Lines>,
    n: usize,
) -> (Ingested, Ingested) {
    let one = single_phase(addr, lines, 5_000.min(n / 20), 1).await;
    let sixteen = single_phase(addr, lines, 40_000.min(n / 5), 16).await;
    (one, sixteen)
}

/// `events` single-event `POST`s from `producers`, reported with the CPU per event.
async fn single_phase(
    addr: SocketAddr,
    lines: &Arc<Lines>,
    events: usize,
    producers: usize,
) -> Ingested {
    let label = match producers {
        1 => "ingest, single events, 1 producer".to_owned(),
        n => format!("ingest, single events, {n} producers"),
    };
    measured_phase(&label, addr, lines, events, 1, producers).await
}

/// [`ingest`] of `events` in bodies of `per_body` from `producers`, reported under `label`
/// with this process's CPU time over the phase (steadier than the rate on a shared machine).
async fn measured_phase(
    label: &str,
    addr: SocketAddr,
    lines: &Arc<Lines>,
    events: usize,
    per_body: usize,
    producers: usize,
) -> Ingested {
    let cpu = cpu_seconds();
    let phase = ingest(addr, lines, events, per_body, producers).await;
    let cpu = cpu_seconds() - cpu;
    report(label, phase.events, phase.took, phase.written);
    println!(
        "CPU of this process (relay + load generator) meanwhile: {cpu:.2} s = {:.2} us per \
         event, {:.2} cores on average",
        cpu * 1e6 / phase.events as f64,
        cpu / phase.took.as_secs_f64()
    );
    phase
}

/// Adds the group-commit goal: 16 single-event producers against one.
pub(crate) fn ratio_goal(goals: &mut Goals, one: &Ingested, sixteen: &Ingested) {
    let ratio = sixteen.rate() / one.rate();
    goals.add(
        "single-event POSTs, 16 producers / 1 producer",
        format!("{ratio:.1}x"),
        &format!("({:.0} / {:.0} events/s)", sixteen.rate(), one.rate()),
        "≥ 8x",
        Some(ratio >= 8.0),
    );
}

/// The single-event phases of cycle 1 alone (relay in process, empty store, no upstream) and
/// their goal.
pub(crate) async fn only_single(config: Config, lines: &Arc<Lines>, n: usize) {
    let relay = edge_relay::daemon::start(config, edge_relay::daemon::Seams::default())
        .await
        .expect("relay");
    println!();
    println!("single-event ingest only (--only-single: no floor, NDJSON, drain or own process)");
    report_header();
    let (one, sixteen) = single_events(relay.ingest_addr, lines, n).await;
    relay.stop().await;
    let mut goals = Goals::default();
    ratio_goal(&mut goals, &one, &sixteen);
    println!();
    goals.print();
}
