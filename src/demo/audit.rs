//! Exactly-once audit: compares what producers were told "accepted" with the upstream's own store.

use std::collections::{HashMap, HashSet};
use std::fmt;

use uuid::Uuid;

use crate::contract::Gap;
use crate::event::Event;

/// Outcome of an audit; `Display` gives `produced=N delivered=N lost=0 duplicates=0 order=ok`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Audit {
    /// Distinct events producers got a 200 for.
    pub produced: usize,
    /// Of those, how many the upstream stored.
    pub delivered: usize,
    /// Accepted but not stored upstream.
    pub lost: usize,
    /// Stored more than once (same id under several seqs), plus stored events nobody produced.
    pub duplicates: usize,
    /// The upstream's seq order equals the order producers were answered, and every event sits
    /// at the seq its producer was told.
    pub order_ok: bool,
}

impl Audit {
    /// No loss, no duplicate, order kept, and at least one event.
    pub fn is_clean(&self) -> bool {
        self.lost == 0 && self.duplicates == 0 && self.order_ok && self.delivered == self.produced
    }
}

impl fmt::Display for Audit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "produced={} delivered={} lost={} duplicates={} order={}",
            self.produced,
            self.delivered,
            self.lost,
            self.duplicates,
            if self.order_ok { "ok" } else { "broken" }
        )
    }
}

/// Audits `accepted` (`(seq, id)` as answered to producers, in answer order; repeats of an id
/// are idempotent retries and count once) against `stored` (the upstream's events of the stream).
pub fn audit(accepted: &[(u64, Uuid)], stored: &[Event]) -> Audit {
    let (produced, seen) = distinct(accepted);
    let mut stored_count: HashMap<Uuid, usize> = HashMap::new();
    for e in stored {
        *stored_count.entry(e.id).or_default() += 1;
    }
    let delivered = produced
        .iter()
        .filter(|(_, id)| stored_count.contains_key(id))
        .count();
    let extra_copies: usize = stored_count.values().map(|n| n - 1).sum();
    let strangers = stored_count.keys().filter(|id| !seen.contains(*id)).count();
    let mut stored_order: Vec<(u64, Uuid)> = stored.iter().map(|e| (e.seq, e.id)).collect();
    stored_order.sort_by_key(|(seq, _)| *seq);
    let produced_stored: Vec<(u64, Uuid)> = produced
        .iter()
        .copied()
        .filter(|(_, id)| stored_count.contains_key(id))
        .collect();
    let seqs_increase = produced.windows(2).all(|w| w[0].0 < w[1].0);
    let order_ok = seqs_increase
        && stored_order
            .iter()
            .filter(|(_, id)| seen.contains(id))
            .copied()
            .eq(produced_stored.iter().copied());
    Audit {
        produced: produced.len(),
        delivered,
        lost: produced.len() - delivered,
        duplicates: extra_copies + strangers,
        order_ok,
    }
}

/// `accepted` without idempotent repeats, in answer order, and the set of its ids.
fn distinct(accepted: &[(u64, Uuid)]) -> (Vec<(u64, Uuid)>, HashSet<Uuid>) {
    let mut seen = HashSet::new();
    let produced = accepted
        .iter()
        .copied()
        .filter(|(_, id)| seen.insert(*id))
        .collect();
    (produced, seen)
}

/// Outcome of [`audit_with_gaps`]: a stream where `drop_oldest` may have dropped events.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GapAudit {
    /// As [`audit`], except that `lost` leaves out the dropped events below.
    pub audit: Audit,
    /// Accepted events not stored upstream whose seq lies in a reported gap.
    pub dropped: usize,
    /// Stored events whose seq lies in a reported gap (a gap that covers delivered events).
    pub misreported: usize,
}

impl GapAudit {
    /// Nothing lost outside the reported gaps, no duplicate, order kept, and no gap over a
    /// stored event: every accepted event is either delivered or dropped in a reported gap.
    pub fn is_clean(&self) -> bool {
        let a = &self.audit;
        a.lost == 0
            && a.duplicates == 0
            && a.order_ok
            && self.misreported == 0
            && a.delivered + self.dropped == a.produced
    }
}

impl fmt::Display for GapAudit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} dropped={} misreported={}",
            self.audit, self.dropped, self.misreported
        )
    }
}

/// [`audit`] for `overflow = "drop_oldest"`: an accepted event missing upstream counts as
/// dropped, not lost, when its seq lies in one of the stream's reported `gaps`.
pub fn audit_with_gaps(accepted: &[(u64, Uuid)], stored: &[Event], gaps: &[Gap]) -> GapAudit {
    let in_gap = |seq: u64| {
        gaps.iter()
            .any(|g| (g.dropped_from..=g.dropped_to).contains(&seq))
    };
    let mut audit = audit(accepted, stored);
    let stored_ids: HashSet<Uuid> = stored.iter().map(|e| e.id).collect();
    let dropped = distinct(accepted)
        .0
        .iter()
        .filter(|(seq, id)| !stored_ids.contains(id) && in_gap(*seq))
        .count();
    audit.lost -= dropped;
    let misreported = stored.iter().filter(|e| in_gap(e.seq)).count();
    GapAudit {
        audit,
        dropped,
        misreported,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn ev(seq: u64, id: Uuid) -> Event {
        Event {
            id,
            seq,
            source: "s".into(),
            kind: "k".into(),
            time: "t".into(),
            data: json!(null),
        }
    }

    /// `n` new ids, and the producer's record of them accepted as seqs 1..=n.
    fn accepted(n: usize) -> (Vec<Uuid>, Vec<(u64, Uuid)>) {
        let ids: Vec<Uuid> = (0..n).map(|_| Uuid::new_v4()).collect();
        let accepted = ids.iter().enumerate().map(|(i, id)| (i as u64 + 1, *id));
        (ids.clone(), accepted.collect())
    }

    #[test]
    fn clean_lossy_duplicated_and_reordered() {
        let (ids, accepted) = accepted(4);
        let stored: Vec<_> = accepted.iter().map(|(s, id)| ev(*s, *id)).collect();
        let mut with_retry = accepted.clone();
        with_retry.push(accepted[1]);
        let a = audit(&with_retry, &stored);
        assert!(a.is_clean(), "{a}");
        assert_eq!(
            a.to_string(),
            "produced=4 delivered=4 lost=0 duplicates=0 order=ok"
        );

        let a = audit(&accepted, &stored[..3]);
        assert_eq!((a.lost, a.duplicates, a.order_ok), (1, 0, true));

        let mut dup = stored.clone();
        dup.push(ev(9, ids[0]));
        let a = audit(&accepted, &dup);
        assert_eq!(a.duplicates, 1);
        assert!(!a.order_ok);

        let swapped = vec![ev(1, ids[1]), ev(2, ids[0]), ev(3, ids[2]), ev(4, ids[3])];
        assert!(!audit(&accepted, &swapped).order_ok);
    }

    #[test]
    fn dropped_events_in_reported_gaps_are_not_lost() {
        let (ids, accepted) = accepted(6);
        // Seqs 2..=3 dropped and reported; 5 missing without a gap.
        let stored: Vec<_> = [0, 3, 5]
            .iter()
            .map(|&i| ev(i as u64 + 1, ids[i]))
            .collect();
        let gap = |from, to| Gap {
            dropped_from: from,
            dropped_to: to,
        };
        let a = audit_with_gaps(&accepted, &stored, &[gap(2, 3)]);
        assert_eq!((a.dropped, a.audit.lost, a.misreported), (2, 1, 0));
        assert!(!a.is_clean(), "{a}");

        let a = audit_with_gaps(&accepted, &stored, &[gap(2, 3), gap(5, 5)]);
        assert!(a.is_clean(), "{a}");
        assert_eq!(
            a.to_string(),
            "produced=6 delivered=3 lost=0 duplicates=0 order=ok dropped=3 misreported=0"
        );

        // A gap over a delivered event is a wrong report, even if nothing is missing.
        let a = audit_with_gaps(&accepted, &stored, &[gap(2, 5)]);
        assert_eq!(a.misreported, 1);
        assert!(!a.is_clean());
        assert!(audit_with_gaps(&accepted, &stored, &[]).audit.lost == 3);
    }
}
