//! The commit delay: a group commit waits, briefly, for the appends it expects.

use std::time::Duration;

/// The commit delay: how long a group commit waits for more appends before it writes (like
/// PostgreSQL's `commit_delay` and MySQL's `binlog_group_commit_sync_delay`, but learnt).
///
/// Producers in a closed loop (each sends again once answered) otherwise split into two
/// groups that take turns: those the last fsync answered come back while the others' group is
/// being synced, so each fsync covers about half of them. A group therefore expects as many
/// appends as the last group had plus those that queued during its commit, and waits for them,
/// at most as long as that commit took (its writes and fsync) and at most
/// `buffer.commit_delay_max_us`. One producer, or producers that never overlap, expect no more
/// than they bring and never wait; a wait that runs out costs at most one commit time.
#[derive(Debug, Default, PartialEq, Eq)]
pub(super) struct CommitDelay {
    /// Appends the next group waits for.
    expect: usize,
    /// Longest it waits.
    pub(super) window: Duration,
}

impl CommitDelay {
    /// The delay of the group after one of `appends` whose commit took `took`, with `queued`
    /// commands waiting when it ended; `max` is `buffer.commit_delay_max_us`.
    pub(super) fn after(appends: usize, queued: usize, took: Duration, max: Duration) -> Self {
        Self {
            expect: appends + queued,
            window: took.min(max),
        }
    }

    /// Whether a group holding `appends`, with nothing more queued, waits for more.
    pub(super) fn waits(&self, appends: usize) -> bool {
        appends < self.expect && !self.window.is_zero()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn a_lone_producer_never_waits() {
        // One append per group, nothing queued meanwhile: each group expects only itself.
        let delay = CommitDelay::after(1, 0, MS, MS);
        assert!(!delay.waits(1));
    }

    #[test]
    fn producers_taking_turns_are_gathered_into_one_group() {
        // 8 answered by the last fsync, 8 queued during it: the next group holds the 8 queued
        // and waits for the 8 answered, at most as long as the last commit took.
        let delay = CommitDelay::after(8, 8, MS / 2, MS);
        assert_eq!((delay.expect, delay.window), (16, MS / 2));
        assert!(delay.waits(8));
        assert!(delay.waits(15));
        assert!(!delay.waits(16));
        // Once gathered, all 16 answered at once and none queued: it still expects 16.
        assert_eq!(CommitDelay::after(16, 0, MS / 2, MS).expect, 16);
    }

    #[test]
    fn the_wait_is_bounded_by_the_setting_and_off_at_zero() {
        assert_eq!(CommitDelay::after(8, 8, 5 * MS, MS).window, MS);
        assert!(!CommitDelay::after(8, 8, MS, Duration::ZERO).waits(1));
    }
}
