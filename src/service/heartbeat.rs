//! Progress heartbeats of the long-running loops and the watchdog's decision over them (no I/O).
//
// Design: the relay loop and the outbox writer each own a `Heartbeat` and `beat()` it on every
// loop turn; an idle wait gets an arm on `tick()` so that a healthy idle loop still turns. A
// network exchange does not beat: a loop that waits longer than its grace is stuck, and the
// watchdog (`Watchdog::check`) then withholds its ping until the loop turns again.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::time::Instant;

/// Most a loop's idle wait sleeps between two turns when a watchdog is on: a quarter of the
/// watchdog interval, so a healthy idle loop beats at least three times per interval.
const TICKS_PER_INTERVAL: u32 = 4;

/// A loop's "last alive" mark. Clones share the mark; cheap to beat (one atomic store).
#[derive(Clone, Debug)]
pub struct Heartbeat {
    inner: Arc<Mark>,
}

#[derive(Debug)]
struct Mark {
    name: &'static str,
    epoch: Instant,
    /// Nanoseconds from `epoch` to the last beat.
    last: AtomicU64,
    /// Idle tick; `None` without a watchdog (idle waits then never wake up for it).
    tick: Option<Duration>,
    /// Longest pause between two beats that still counts as healthy, beyond the watchdog
    /// interval: the longest single wait the loop's own timeouts allow.
    grace: Duration,
}

impl Heartbeat {
    /// A heartbeat named `name` (for logs), beaten now. With `watchdog` (the systemd watchdog
    /// interval) idle waits tick every quarter of it; `grace` is the longest wait the loop may
    /// spend in one turn by its own timeouts (zero when it has none beyond the interval).
    pub fn new(name: &'static str, watchdog: Option<Duration>, grace: Duration) -> Self {
        Self {
            inner: Arc::new(Mark {
                name,
                epoch: Instant::now(),
                last: AtomicU64::new(0),
                tick: watchdog.map(|w| w / TICKS_PER_INTERVAL),
                grace,
            }),
        }
    }

    /// A heartbeat nobody watches: beats are recorded, idle waits never tick.
    pub fn unwatched(name: &'static str) -> Self {
        Self::new(name, None, Duration::ZERO)
    }

    /// Marks one loop turn.
    pub fn beat(&self) {
        let nanos = self.inner.epoch.elapsed().as_nanos();
        self.inner
            .last
            .store(u64::try_from(nanos).unwrap_or(u64::MAX), Ordering::Relaxed);
    }

    /// When the loop last turned.
    pub fn last(&self) -> Instant {
        self.inner.epoch + Duration::from_nanos(self.inner.last.load(Ordering::Relaxed))
    }

    /// The loop's name.
    pub fn name(&self) -> &'static str {
        self.inner.name
    }

    /// Resolves after one idle tick; never when no watchdog is on. For a `select!` arm of an
    /// idle wait, whose loop then turns (and beats) again.
    pub async fn tick(&self) {
        match self.inner.tick {
            Some(tick) => tokio::time::sleep(tick).await,
            None => std::future::pending().await,
        }
    }

    /// Sleeps `delay` (a backoff), beating on every idle tick meanwhile.
    pub async fn sleep(&self, delay: Duration) {
        let until = Instant::now() + delay;
        loop {
            self.beat();
            tokio::select! {
                () = tokio::time::sleep_until(until) => return,
                () = self.tick() => {}
            }
        }
    }
}

impl Default for Heartbeat {
    fn default() -> Self {
        Self::unwatched("unnamed")
    }
}

/// What the watchdog does on one turn.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Every loop turned recently: send `WATCHDOG=1`.
    Ping,
    /// A loop has not turned for longer than allowed: withhold the ping.
    Stalled {
        /// The stalled loop.
        task: &'static str,
        /// Time since its last turn.
        silent_for: Duration,
    },
}

/// Decides whether the daemon is alive: every heartbeat must be fresher than the watchdog
/// interval (or its own grace, when longer).
#[derive(Debug, Clone)]
pub struct Watchdog {
    interval: Duration,
    beats: Vec<Heartbeat>,
}

impl Watchdog {
    /// A watchdog of `interval` (systemd's `WATCHDOG_USEC`) over `beats`.
    pub fn new(interval: Duration, beats: Vec<Heartbeat>) -> Self {
        Self { interval, beats }
    }

    /// How often to check and ping: half the interval, as sd_watchdog_enabled(3) advises.
    pub fn period(&self) -> Duration {
        self.interval / 2
    }

    /// The verdict at `now`: the first heartbeat older than `max(interval, its grace)` stalls.
    pub fn check(&self, now: Instant) -> Verdict {
        for beat in &self.beats {
            let silent_for = now.saturating_duration_since(beat.last());
            if silent_for > self.interval.max(beat.inner.grace) {
                return Verdict::Stalled {
                    task: beat.name(),
                    silent_for,
                };
            }
        }
        Verdict::Ping
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEC: Duration = Duration::from_secs(1);

    #[tokio::test(start_paused = true)]
    async fn pings_while_every_loop_turns_and_stops_when_one_stalls() {
        let relay = Heartbeat::new("relay", Some(SEC), Duration::ZERO);
        let writer = Heartbeat::new("writer", Some(SEC), Duration::ZERO);
        let dog = Watchdog::new(SEC, vec![relay.clone(), writer.clone()]);
        assert_eq!(dog.period(), SEC / 2);
        assert_eq!(dog.check(Instant::now()), Verdict::Ping);
        // Both turn every 400 ms for 3 s: always a ping.
        for _ in 0..8 {
            tokio::time::advance(SEC * 2 / 5).await;
            relay.beat();
            writer.beat();
            assert_eq!(dog.check(Instant::now()), Verdict::Ping);
        }
        // The writer stops turning: pings go on until its silence exceeds the interval.
        tokio::time::advance(SEC / 2).await;
        relay.beat();
        assert_eq!(dog.check(Instant::now()), Verdict::Ping);
        tokio::time::advance(SEC * 3 / 5).await;
        relay.beat();
        assert_eq!(
            dog.check(Instant::now()),
            Verdict::Stalled {
                task: "writer",
                silent_for: SEC * 11 / 10
            }
        );
        // One turn of the writer and the daemon is alive again.
        writer.beat();
        assert_eq!(dog.check(Instant::now()), Verdict::Ping);
    }

    #[tokio::test(start_paused = true)]
    async fn a_loop_within_its_grace_is_not_stalled() {
        let relay = Heartbeat::new("relay", Some(SEC), SEC * 5);
        let dog = Watchdog::new(SEC, vec![relay.clone()]);
        tokio::time::advance(SEC * 5).await;
        assert_eq!(dog.check(Instant::now()), Verdict::Ping);
        tokio::time::advance(SEC / 10).await;
        assert!(matches!(
            dog.check(Instant::now()),
            Verdict::Stalled { task: "relay", .. }
        ));
    }

    #[tokio::test(start_paused = true)]
    async fn idle_waits_tick_a_quarter_interval_and_backoff_sleeps_keep_beating() {
        let beat = Heartbeat::new("relay", Some(SEC), Duration::ZERO);
        let start = Instant::now();
        beat.tick().await;
        assert_eq!(start.elapsed(), SEC / 4);
        let dog = Watchdog::new(SEC, vec![beat.clone()]);
        // A 10 s backoff beats all along: at its end the loop is still alive.
        beat.sleep(SEC * 10).await;
        assert_eq!(start.elapsed(), SEC * 41 / 4);
        assert_eq!(dog.check(Instant::now()), Verdict::Ping);
        // Without a watchdog an idle wait never ticks.
        let unwatched = Heartbeat::unwatched("writer");
        let ticked = tokio::time::timeout(SEC * 3600, unwatched.tick()).await;
        assert!(ticked.is_err());
    }
}
