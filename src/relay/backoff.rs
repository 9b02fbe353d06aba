//! Capped, jittered exponential backoff that resets after a healthy period.

use std::time::Duration;

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
    /// Delays start at `initial` and double up to `max` (`initial <= max`).
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
}
