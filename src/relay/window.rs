//! The window of `edge_ingest` batches sent and not yet covered by the upstream's
//! `acked_seq`: how many may be outstanding, and what each answer means for the acked seq.
//!
//! Batches are sent in seq order, each starting right after the previous one, and their
//! answers are applied in the order they were sent. With more than one in flight, an answer
//! can legitimately stop short of its own batch (the upstream stored it while an earlier batch
//! was still on its way); a later answer then covers both. The window's acked seq is the
//! upstream's as last answered, and never past what was sent. No I/O here.

use std::collections::VecDeque;

/// Batches sent past the acked seq, in seq order.
#[derive(Debug)]
pub struct Window {
    /// The upstream's acked seq as last answered.
    acked_seq: u64,
    /// The acked seq when the window was last settled (see [`Window::settle`]).
    settled_at: u64,
    /// `(last seq, events)` of each batch sent and not yet covered by `cursor`.
    sent: VecDeque<(u64, u64)>,
    /// Most batches in `sent` (`relay.max_in_flight`, at least 1).
    max: usize,
}

impl Window {
    /// An empty window after `cursor` (the upstream's `edge_cursor`) holding up to `max`
    /// batches (`max` 0 counts as 1).
    pub fn new(acked_seq: u64, max: usize) -> Self {
        Self {
            acked_seq,
            settled_at: acked_seq,
            sent: VecDeque::new(),
            max: max.max(1),
        }
    }

    /// The upstream's acked seq as last answered.
    pub fn acked_seq(&self) -> u64 {
        self.acked_seq
    }

    /// Whether another batch may be sent.
    pub fn has_room(&self) -> bool {
        self.sent.len() < self.max
    }

    /// Whether every batch sent is covered by the acked seq.
    pub fn is_covered(&self) -> bool {
        self.sent.is_empty()
    }

    /// Last seq sent (the acked seq when nothing is outstanding): the next batch starts after it.
    pub fn last_sent(&self) -> u64 {
        self.sent.back().map_or(self.acked_seq, |&(last, _)| last)
    }

    /// Records a batch of `events` events (and gap seqs) ending at `last` as sent.
    pub fn sent(&mut self, last: u64, events: u64) {
        debug_assert!(last > self.last_sent(), "batches are sent in seq order");
        self.sent.push_back((last, events));
    }

    /// Applies one answer's `acked_seq` (0 for none); returns the events it newly covered (a
    /// batch covered in part counts its covered seqs, gap seqs included, up to its events).
    ///
    /// # Errors
    /// The contract violation, when `acked` is above the last seq sent.
    pub fn answer(&mut self, acked: u64) -> Result<u64, String> {
        if acked > self.last_sent() {
            return Err(format!(
                "upstream acked seq {acked} but only up to {} was sent",
                self.last_sent()
            ));
        }
        if acked <= self.acked_seq {
            return Ok(0);
        }
        // Seqs up to `from` were covered before; a batch covered in part keeps the rest.
        let (mut from, mut covered) = (self.acked_seq, 0);
        self.acked_seq = acked;
        while let Some(front) = self.sent.front_mut() {
            if front.0 <= acked {
                covered += front.1;
                from = front.0;
                self.sent.pop_front();
            } else {
                let part = (acked - from).min(front.1);
                covered += part;
                front.1 -= part;
                break;
            }
        }
        Ok(covered)
    }

    /// Called when every sent batch has been answered but the acked seq does not cover them all:
    /// when the acked seq moved since the last settle (the upstream stored part, e.g. a batch
    /// cut short), the rest is forgotten and sent again from the acked seq, as a one-batch relay
    /// would; otherwise the upstream stored nothing, which breaks the contract.
    ///
    /// # Errors
    /// The violation's text: no progress over every batch answered since the last settle.
    pub fn settle(&mut self) -> Result<(), String> {
        if self.sent.is_empty() {
            return Ok(());
        }
        let last = self.last_sent();
        if self.acked_seq == self.settled_at {
            return Err(format!(
                "upstream stored nothing of seqs {}..={last} (acked_seq {})",
                self.acked_seq + 1,
                self.acked_seq
            ));
        }
        self.sent.clear();
        self.settled_at = self.acked_seq;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_in_any_store_order_cover_the_batches() {
        let mut w = Window::new(10, 3);
        for last in [20, 30, 40] {
            assert!(w.has_room());
            w.sent(last, 10);
        }
        assert!(!w.has_room());
        // The upstream stored 30 before 20: batch 1's answer already covers batch 2.
        assert_eq!(w.answer(30), Ok(20));
        // Batch 2's answer was computed before batch 1 was stored.
        assert_eq!(w.answer(10), Ok(0));
        assert_eq!((w.acked_seq(), w.last_sent()), (30, 40));
        assert!(w.has_room());
        assert_eq!(w.answer(40), Ok(10));
        assert!(w.is_covered());
        assert_eq!(w.settle(), Ok(()));
    }

    #[test]
    fn an_ack_past_what_was_sent_is_a_violation() {
        let mut w = Window::new(0, 2);
        w.sent(5, 5);
        let err = w.answer(6).unwrap_err();
        assert!(err.contains("acked seq 6 but only up to 5"), "{err}");
        assert_eq!(w.acked_seq(), 0);
    }

    #[test]
    fn a_part_stored_resends_the_rest_and_nothing_stored_is_a_violation() {
        let mut w = Window::new(0, 2);
        w.sent(100, 100);
        w.sent(200, 100);
        assert_eq!(w.answer(50), Ok(50));
        assert_eq!(w.answer(50), Ok(0));
        // Progress, not all: the rest goes again from 50.
        assert_eq!(w.settle(), Ok(()));
        assert_eq!((w.last_sent(), w.is_covered()), (50, true));
        w.sent(150, 100);
        assert_eq!(w.answer(50), Ok(0));
        assert!(!w.is_covered());
        let err = w.settle().unwrap_err();
        assert!(err.contains("stored nothing of seqs 51..=150"), "{err}");
    }
}
