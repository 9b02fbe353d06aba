//! The parts of a seq range that stored events do not hold: what a reported gap may record.

/// The parts of `lo..=hi` outside every `taken` range (`(first, last)`, inclusive, in seq
/// order, not overlapping), in seq order.
pub(crate) fn uncovered(
    lo: u64,
    hi: u64,
    taken: impl IntoIterator<Item = (u64, u64)>,
) -> Vec<(u64, u64)> {
    let mut parts = Vec::new();
    // The next seq not yet placed; `None` past u64::MAX.
    let mut from = Some(lo);
    for (first, last) in taken {
        if let Some(f) = from
            && first > f
        {
            parts.push((f, (first - 1).min(hi)));
        }
        from = from.max(last.checked_add(1)).filter(|_| last < u64::MAX);
        if from.is_none_or(|f| f > hi) {
            return parts;
        }
    }
    if let Some(f) = from
        && f <= hi
    {
        parts.push((f, hi));
    }
    parts
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stored_ranges_are_cut_out() {
        assert_eq!(
            uncovered(1, 11, [(4, 5), (9, 9)]),
            [(1, 3), (6, 8), (10, 11)]
        );
        assert_eq!(uncovered(3, 4, [(3, 4)]), []);
        assert_eq!(uncovered(3, 9, [(1, 4), (8, 20)]), [(5, 7)]);
        assert_eq!(uncovered(3, 9, []), [(3, 9)]);
        assert_eq!(uncovered(5, u64::MAX, [(7, u64::MAX)]), [(5, 6)]);
        assert_eq!(uncovered(1, 5, [(2, 2), (3, 3)]), [(1, 1), (4, 5)]);
    }
}
