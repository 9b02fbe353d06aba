//! Fault schedules drawn from a seed: two lanes (network, processes) of self-healing episodes.

use std::time::Duration;

use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};

/// turmoil host name of the gateway (relay, its outbox and its local producer).
pub const RELAY: &str = "relay";
/// turmoil host name of the reference upstream (sink store + MCP server).
pub const UPSTREAM: &str = "upstream";

/// Faults start this late, so that every run first delivers something healthy.
const FIRST_FAULT: Duration = Duration::from_millis(500);
/// No episode starts after this (simulated time); the last one may end later.
const FAULT_WINDOW: Duration = Duration::from_secs(20);

/// One fault kind; every one heals itself at the end of its episode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// No packet between relay and upstream, both ways (cable pulled, cellular dead zone).
    Partition,
    /// Packets held, then all delivered at once (a long stall: congested or buffering link).
    Hold,
    /// Packets from `from` to `to` dropped, the other way delivered (asymmetric routing, a
    /// NAT or firewall dropping one direction).
    OneWay {
        /// Sender whose packets are lost.
        from: &'static str,
        /// Their destination.
        to: &'static str,
    },
    /// The host's software dies (its runtime and tasks dropped) and restarts on its store
    /// at the end of the episode (power cut, OOM kill, reboot).
    Crash(&'static str),
    /// The host restarts at once on its store (deploy, watchdog restart).
    Bounce(&'static str),
}

/// What the harness does to the simulation at one instant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Partition,
    Repair,
    Hold,
    Release,
    PartitionOneway(&'static str, &'static str),
    RepairOneway(&'static str, &'static str),
    Crash(&'static str),
    Bounce(&'static str),
}

/// A fault from `at` for `lasts` (simulated time).
#[derive(Debug, Clone, Copy)]
pub struct Episode {
    pub fault: Fault,
    pub at: Duration,
    pub lasts: Duration,
}

impl Episode {
    /// The actions that start and heal it.
    fn actions(&self) -> Vec<(Duration, Action)> {
        let end = self.at + self.lasts;
        match self.fault {
            Fault::Partition => vec![(self.at, Action::Partition), (end, Action::Repair)],
            Fault::Hold => vec![(self.at, Action::Hold), (end, Action::Release)],
            Fault::OneWay { from, to } => vec![
                (self.at, Action::PartitionOneway(from, to)),
                (end, Action::RepairOneway(from, to)),
            ],
            Fault::Crash(host) => vec![(self.at, Action::Crash(host)), (end, Action::Bounce(host))],
            Fault::Bounce(host) => vec![(self.at, Action::Bounce(host))],
        }
    }
}

/// Everything a seed decides: faults, link latency, ingest pace and the overflow policy.
#[derive(Debug, Clone)]
pub struct Schedule {
    pub seed: u64,
    pub episodes: Vec<Episode>,
    /// `buffer.overflow = "drop_oldest"` with a small buffer (every 4th seed), else `reject`.
    pub drop_oldest: bool,
    /// Link latency bounds, ms.
    pub latency_ms: (u64, u64),
    /// Pause between two producer posts, bounds in ms.
    pub ingest_every_ms: (u64, u64),
}

impl Schedule {
    /// The schedule of `seed`; the same seed always gives the same schedule.
    pub fn generate(seed: u64) -> Schedule {
        let mut rng = StdRng::seed_from_u64(seed);
        let min_latency = rng.random_range(0..=5);
        let latency_ms = (min_latency, min_latency + rng.random_range(1..=60));
        let fast = rng.random_range(10..=40);
        let ingest_every_ms = (fast, fast + rng.random_range(50..=250));
        let mut episodes = lane(&mut rng, |rng| match rng.random_range(0..100) {
            0..35 => Fault::Partition,
            35..60 => Fault::Hold,
            60..80 => Fault::OneWay {
                from: RELAY,
                to: UPSTREAM,
            },
            _ => Fault::OneWay {
                from: UPSTREAM,
                to: RELAY,
            },
        });
        episodes.extend(lane(&mut rng, |rng| match rng.random_range(0..100) {
            0..30 => Fault::Crash(UPSTREAM),
            30..50 => Fault::Bounce(UPSTREAM),
            50..80 => Fault::Crash(RELAY),
            _ => Fault::Bounce(RELAY),
        }));
        Schedule {
            seed,
            episodes,
            drop_oldest: seed % 4 == 3,
            latency_ms,
            ingest_every_ms,
        }
    }

    /// Every action, in time order (at equal times, in episode order).
    pub fn actions(&self) -> Vec<(Duration, Action)> {
        let mut all: Vec<_> = self.episodes.iter().flat_map(Episode::actions).collect();
        all.sort_by_key(|(at, _)| *at);
        all
    }

    /// When the last fault has healed.
    pub fn healed_at(&self) -> Duration {
        let ends = self.actions().into_iter().map(|(at, _)| at);
        ends.max().unwrap_or(Duration::ZERO)
    }
}

/// One lane: back-to-back episodes (0-2 s apart) until [`FAULT_WINDOW`]; mostly short
/// (50 ms-3 s), a third long (3-15 s: past the request timeout and the backoff cap).
fn lane(rng: &mut StdRng, pick: impl Fn(&mut StdRng) -> Fault) -> Vec<Episode> {
    let mut out = Vec::new();
    let mut at = FIRST_FAULT + Duration::from_millis(rng.random_range(0..2000));
    while at < FAULT_WINDOW {
        let fault = pick(rng);
        let ms = if rng.random_range(0..3) == 0 {
            rng.random_range(3000..=15_000)
        } else {
            rng.random_range(50..=3000)
        };
        let lasts = match fault {
            Fault::Bounce(_) => Duration::ZERO,
            _ => Duration::from_millis(ms),
        };
        out.push(Episode { fault, at, lasts });
        at += lasts + Duration::from_millis(rng.random_range(0..=2000));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_seed_gives_one_schedule_that_heals_every_fault() {
        for seed in 0..50 {
            let (a, b) = (Schedule::generate(seed), Schedule::generate(seed));
            assert_eq!(format!("{a:?}"), format!("{b:?}"));
            assert!(!a.episodes.is_empty());
            let (mut cut, mut held, mut oneway, mut down) = (0, 0, 0, 0);
            for (_, action) in a.actions() {
                match action {
                    Action::Partition => cut += 1,
                    Action::Repair => cut -= 1,
                    Action::Hold => held += 1,
                    Action::Release => held -= 1,
                    Action::PartitionOneway(..) => oneway += 1,
                    Action::RepairOneway(..) => oneway -= 1,
                    Action::Crash(_) => down += 1,
                    Action::Bounce(_) => down = 0,
                }
                assert!(cut + held + oneway <= 1, "network faults overlap: {a:?}");
            }
            assert_eq!((cut, held, oneway, down), (0, 0, 0, 0), "{a:?}");
        }
        assert!(Schedule::generate(3).drop_oldest);
    }
}
