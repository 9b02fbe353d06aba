//! The one reconnect pacing of every long-lived connection (relay, MQTT ingest, sink on MQTT):
//! capped, jittered backoff that resets after a healthy period, its log line and its sleep.
//
// Design: `Backoff` is the state (no I/O, no clock, unit-tested here); `Reconnect` is what a
// loop holds: after a failed or lost connection it draws the delay, logs
// "{err:#}; retry in {delay:?}" at WARN with the loop's own fields, and sleeps, until shutdown.

use std::fmt::Display;
use std::time::Duration;

use log::kv::{self, Key, Source, Value, VisitSource};
use tokio_util::sync::CancellationToken;

use crate::service::heartbeat::Heartbeat;

/// A connection that stayed healthy this long resets the backoff to its initial delay.
pub const HEALTHY_PERIOD: Duration = Duration::from_secs(30);

/// Backoff state: no I/O, no clock; the caller says when it failed and how long it was healthy.
#[derive(Debug, Clone)]
pub struct Backoff {
    initial: Duration,
    max: Duration,
    current: Duration,
}

impl Backoff {
    /// Delays start at `initial` and double up to `max` (a `max` below `initial` is `initial`).
    pub fn new(initial: Duration, max: Duration) -> Self {
        Self {
            initial,
            max: max.max(initial),
            current: initial,
        }
    }

    /// The delay before the next attempt, with "equal jitter": uniformly in `[d/2, d]` where `d`
    /// doubles after every failure up to `max`. `unit` in `[0, 1)` is the random draw.
    pub fn next_delay(&mut self, unit: f64) -> Duration {
        let d = self.current;
        self.current = (self.current * 2).min(self.max);
        d / 2 + d.mul_f64(unit.clamp(0.0, 1.0) / 2.0)
    }

    /// Call after a connection ended; if it was healthy for [`HEALTHY_PERIOD`], start over.
    pub fn connection_lasted(&mut self, healthy_for: Duration) {
        if healthy_for >= HEALTHY_PERIOD {
            self.reset();
        }
    }

    /// Back to the initial delay.
    pub fn reset(&mut self) {
        self.current = self.initial;
    }

    /// The cap of the delays.
    pub fn max(&self) -> Duration {
        self.max
    }
}

/// How the next delay is drawn after a failure (see [`Reconnect::retry`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Pace {
    /// The backoff's next jittered delay.
    #[default]
    Backoff,
    /// At once, without advancing the backoff (e.g. renewing an expired session, once).
    Now,
    /// The backoff's delay, or longer when the peer asked for it (`Retry-After`), but never
    /// past the backoff's cap.
    AtLeast(Duration),
}

/// The reconnect pacing of one loop: its backoff, its log fields and its heartbeat.
#[derive(Debug)]
pub struct Reconnect {
    backoff: Backoff,
    target: &'static str,
    prefix: &'static str,
    fields: Vec<(&'static str, String)>,
    heartbeat: Heartbeat,
}

impl Reconnect {
    /// Delays from `initial` doubling up to `max`; `target` is the log target of the retry
    /// record (pass `module_path!()`).
    pub fn new(target: &'static str, initial: Duration, max: Duration) -> Self {
        Self {
            backoff: Backoff::new(initial, max),
            target,
            prefix: "",
            fields: Vec::new(),
            heartbeat: Heartbeat::unwatched("reconnect"),
        }
    }

    /// Adds a key-value field to the retry record (keys `[a-z][a-z0-9_]*`, journal fields).
    pub fn field(mut self, key: &'static str, value: impl Into<String>) -> Self {
        self.fields.push((key, value.into()));
        self
    }

    /// Starts the retry record's message with `prefix` (e.g. `"sink: "`).
    pub fn prefix(mut self, prefix: &'static str) -> Self {
        self.prefix = prefix;
        self
    }

    /// Sleeps beating `heartbeat` on every idle tick (for the systemd watchdog).
    pub fn heartbeat(mut self, heartbeat: Heartbeat) -> Self {
        self.heartbeat = heartbeat;
        self
    }

    /// After a connection that failed (or was lost after being up for `healthy_for`): draws
    /// the delay as `pace` says, logs `"{err:#}; retry in {delay:?}"` at WARN with the fields
    /// and `error`, and sleeps it. Returns the delay slept, or `None` when `shutdown` came
    /// first.
    pub async fn retry(
        &mut self,
        err: &(dyn Display + Sync),
        healthy_for: Duration,
        pace: Pace,
        shutdown: &CancellationToken,
    ) -> Option<Duration> {
        self.backoff.connection_lasted(healthy_for);
        let delay = match pace {
            Pace::Now => Duration::ZERO,
            Pace::Backoff => self.backoff.next_delay(rand::random::<f64>()),
            Pace::AtLeast(asked) => {
                let delay = self.backoff.next_delay(rand::random::<f64>());
                delay.max(asked.min(self.backoff.max()))
            }
        };
        self.log(err, delay);
        tokio::select! {
            () = shutdown.cancelled() => None,
            () = self.heartbeat.sleep(delay) => Some(delay),
        }
    }

    /// The one retry record.
    fn log(&self, err: &(dyn Display + Sync), delay: Duration) {
        if log::Level::Warn > log::max_level() {
            return;
        }
        let fields = Fields {
            fixed: &self.fields,
            error: err,
        };
        log::logger().log(
            &log::Record::builder()
                .level(log::Level::Warn)
                .target(self.target)
                .module_path_static(Some(self.target))
                .file_static(Some(file!()))
                .line(Some(line!()))
                .key_values(&fields)
                .args(format_args!(
                    "{}{err:#}; retry in {delay:?}",
                    self.prefix,
                    err = Alternate(err)
                ))
                .build(),
        );
    }
}

/// `{:#}` of a `dyn Display` (anyhow's chain form; plain `Display` otherwise).
struct Alternate<'a>(&'a (dyn Display + Sync));

impl Display for Alternate<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if f.alternate() {
            write!(f, "{:#}", self.0)
        } else {
            write!(f, "{}", self.0)
        }
    }
}

/// The loop's fields plus `error`.
struct Fields<'a> {
    fixed: &'a [(&'static str, String)],
    error: &'a (dyn Display + Sync),
}

impl Source for Fields<'_> {
    fn visit<'kvs>(&'kvs self, visitor: &mut dyn VisitSource<'kvs>) -> Result<(), kv::Error> {
        for (key, value) in self.fixed {
            visitor.visit_pair(Key::from_str(key), Value::from(value.as_str()))?;
        }
        visitor.visit_pair(Key::from_str("error"), Value::from_dyn_display(self.error))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_caps_jitters_and_resets() {
        let ms = Duration::from_millis;
        let mut b = Backoff::new(ms(200), ms(1000));
        assert_eq!(b.next_delay(1.0), ms(200));
        assert_eq!(b.next_delay(0.0), ms(200));
        assert_eq!(b.next_delay(1.0), ms(800));
        assert_eq!(b.next_delay(1.0), ms(1000));
        assert_eq!(b.next_delay(0.5), ms(750));
        b.connection_lasted(ms(10));
        assert_eq!(b.next_delay(1.0), ms(1000));
        b.connection_lasted(HEALTHY_PERIOD);
        assert_eq!(b.next_delay(1.0), ms(200));
    }

    #[tokio::test(start_paused = true)]
    async fn retry_honours_the_pace_and_the_cap() {
        let (ms, max) = (Duration::from_millis, Duration::from_secs(30));
        let shutdown = CancellationToken::new();
        let mut r = Reconnect::new(module_path!(), ms(200), max).field("broker", "b");
        let err = "refused";
        assert_eq!(
            r.retry(&err, Duration::ZERO, Pace::Now, &shutdown).await,
            Some(Duration::ZERO)
        );
        let first = r
            .retry(&err, Duration::ZERO, Pace::Backoff, &shutdown)
            .await;
        assert!(first.is_some_and(|d| (ms(100)..=ms(200)).contains(&d)));
        let asked = r
            .retry(&err, Duration::ZERO, Pace::AtLeast(ms(5_000)), &shutdown)
            .await;
        assert_eq!(asked, Some(ms(5_000)));
        let capped = r
            .retry(
                &err,
                Duration::ZERO,
                Pace::AtLeast(Duration::from_secs(3600)),
                &shutdown,
            )
            .await;
        assert_eq!(capped, Some(max));
        shutdown.cancel();
        assert_eq!(
            r.retry(&err, Duration::ZERO, Pace::Backoff, &shutdown)
                .await,
            None
        );
    }
}
