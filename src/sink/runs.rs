//! Runs: the sink store's events, one sled value range per run of consecutive seqs that one
//! `edge_ingest` call stored, encoded as an outbox chunk (`outbox::chunk`: zstd when smaller,
//! JSON lines inside) and split into pieces of at most `chunk::PIECE_MAX_BYTES`.
//!
//! Why runs and not one key per event: sled keeps bookkeeping in memory for every page it
//! has, and pages hold at most ~21 entries, so a key per event made the sink's RSS and its
//! files grow with every event stored (README, "Measured"). A run of ~100 Daphnet events is
//! one or two compressed pieces.
//!
//! Keys: `prefix (u64 BE) | first_seq (u64 BE) | piece (u16 BE)`, so one stream is one key
//! range, walked in seq order, each run's pieces in order. Stored runs never overlap: a batch
//! stores only seqs no run holds yet. A run is closed at `chunk::CHUNK_TARGET_BYTES` of plain
//! body, so reading the one event the acked seq lands on decodes at most that much.

use crate::event::Event;
use crate::outbox::chunk::{self, Builder, Chunk, PIECE_MAX_BYTES};
use crate::sink::error::SinkError;

/// Bytes of a run piece key.
const KEY_BYTES: usize = 18;

/// The seqs one stored run holds, `first..=last`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Span {
    /// Its first seq (the key's).
    pub first: u64,
    /// Its last seq (`first + count - 1`).
    pub last: u64,
}

/// Key of piece `piece` of the run of stream `prefix` that starts at `first_seq`.
pub(super) fn key(prefix: u64, first_seq: u64, piece: u16) -> [u8; KEY_BYTES] {
    let mut k = [0; KEY_BYTES];
    k[..8].copy_from_slice(&prefix.to_be_bytes());
    k[8..16].copy_from_slice(&first_seq.to_be_bytes());
    k[16..].copy_from_slice(&piece.to_be_bytes());
    k
}

/// `(first_seq, piece)` of a run key.
fn parse_key(k: &[u8]) -> Result<(u64, u16), SinkError> {
    match k.len() {
        KEY_BYTES => Ok((
            u64::from_be_bytes(k[8..16].try_into().unwrap_or_default()),
            u16::from_be_bytes([k[16], k[17]]),
        )),
        n => Err(SinkError::Corrupt(format!("run key of {n} bytes"))),
    }
}

/// Adds `fresh` (events in seq order, none stored yet) to `batch` as runs of stream `prefix`:
/// a new run at every hole in the seqs and whenever the open one is full.
///
/// # Errors
/// [`SinkError::InvalidBatch`] when an event does not encode as JSON.
pub(super) fn put(batch: &mut sled::Batch, prefix: u64, fresh: &[&Event]) -> Result<(), SinkError> {
    let mut run: Option<Builder> = None;
    for event in fresh {
        let encoded = serde_json::to_vec(event).map_err(|e| {
            SinkError::InvalidBatch(format!("event seq {} does not encode: {e}", event.seq))
        })?;
        if let Some(open) = &run
            && (open.is_full() || open.first_seq + u64::from(open.count()) != event.seq)
        {
            put_run(batch, prefix, open);
            run = None;
        }
        run.get_or_insert_with(|| Builder::new(event.seq))
            .push(&encoded);
    }
    if let Some(open) = &run {
        put_run(batch, prefix, open);
    }
    Ok(())
}

/// Adds the pieces of one run to `batch`.
pub(super) fn put_run(batch: &mut sled::Batch, prefix: u64, run: &Builder) {
    for (n, piece) in run.encode().chunks(PIECE_MAX_BYTES).enumerate() {
        batch.insert(&key(prefix, run.first_seq, n as u16)[..], piece);
    }
}

/// The stored run of stream `prefix` that holds `seq`, if any.
///
/// # Errors
/// [`SinkError::Storage`], or [`SinkError::Corrupt`] for a run whose header is unreadable.
pub(super) fn holding(tree: &sled::Tree, prefix: u64, seq: u64) -> Result<Option<Span>, SinkError> {
    let Some(item) = tree
        .range(key(prefix, 0, 0)..=key(prefix, seq, u16::MAX))
        .next_back()
    else {
        return Ok(None);
    };
    let (first, _) = parse_key(&item?.0)?;
    let span = span(tree, prefix, first)?;
    Ok((span.last >= seq).then_some(span))
}

/// The stored runs of stream `prefix` that hold any seq of `lo..=hi`, in seq order.
///
/// # Errors
/// As [`holding`].
pub(super) fn overlapping(
    tree: &sled::Tree,
    prefix: u64,
    lo: u64,
    hi: u64,
) -> Result<Vec<Span>, SinkError> {
    let mut spans: Vec<Span> = holding(tree, prefix, lo)?.into_iter().collect();
    let Some(after_lo) = lo.checked_add(1) else {
        return Ok(spans);
    };
    if after_lo > hi {
        return Ok(spans);
    }
    for item in tree.range(key(prefix, after_lo, 0)..=key(prefix, hi, u16::MAX)) {
        let (k, v) = item?;
        if let (first, 0) = parse_key(&k)? {
            spans.push(span_of(first, &v)?);
        }
    }
    Ok(spans)
}

/// The span of the run starting at `first`, from its first piece.
fn span(tree: &sled::Tree, prefix: u64, first: u64) -> Result<Span, SinkError> {
    let piece = tree
        .get(key(prefix, first, 0))?
        .ok_or_else(|| SinkError::Corrupt(format!("run at seq {first} has no first piece")))?;
    span_of(first, &piece)
}

/// The span of the run starting at `first` whose first piece is `piece`.
fn span_of(first: u64, piece: &[u8]) -> Result<Span, SinkError> {
    match chunk::header_count(piece) {
        Some(count) if count > 0 => Ok(Span {
            first,
            last: first.saturating_add(u64::from(count) - 1),
        }),
        _ => Err(SinkError::Corrupt(format!(
            "run at seq {first}: no event count"
        ))),
    }
}

/// The encoded events of the run of stream `prefix` starting at `first`, as `(seq, JSON)`.
///
/// # Errors
/// [`SinkError::Storage`], or [`SinkError::Corrupt`] when the run is missing or damaged.
pub(super) fn read(tree: &sled::Tree, prefix: u64, first: u64) -> Result<Chunk, SinkError> {
    let mut bytes = Vec::new();
    for item in tree.range(key(prefix, first, 0)..=key(prefix, first, u16::MAX)) {
        bytes.extend_from_slice(&item?.1);
    }
    let run = Chunk {
        first_seq: first,
        keys: Vec::new(),
        bytes,
    };
    Ok(run.unpack())
}

/// Every stored event of stream `prefix`, in seq order.
///
/// # Errors
/// [`SinkError::Storage`], or [`SinkError::Corrupt`] when a run is damaged or an event's own
/// seq is not the one its place in the run gives it.
pub(super) fn events(tree: &sled::Tree, prefix: u64) -> Result<Vec<Event>, SinkError> {
    let mut out = Vec::new();
    for item in tree.range(key(prefix, 0, 0)..=key(prefix, u64::MAX, u16::MAX)) {
        let (k, _) = item?;
        if let (first, 0) = parse_key(&k)? {
            let run = read(tree, prefix, first)?;
            for (seq, line) in run
                .events()
                .map_err(|e| SinkError::Corrupt(e.to_string()))?
            {
                out.push(decode(seq, line)?);
            }
        }
    }
    Ok(out)
}

/// The event stored at `seq` in `run`, checked to be that seq.
pub(super) fn decode(seq: u64, line: &[u8]) -> Result<Event, SinkError> {
    let event: Event = serde_json::from_slice(line)
        .map_err(|e| SinkError::Corrupt(format!("event seq {seq}: {e}")))?;
    if event.seq != seq {
        return Err(SinkError::Corrupt(format!(
            "event stored at seq {seq} says seq {}",
            event.seq
        )));
    }
    Ok(event)
}

#[cfg(test)]
mod tests {
    use super::*;
    use uuid::Uuid;

    /// An event with `pad` random hex digits in its data (they compress about 2x).
    fn event(seq: u64, pad: usize) -> Event {
        let pad: String = (0..pad)
            .map(|_| char::from_digit(rand::random_range(0..16), 16).unwrap_or('0'))
            .collect();
        Event {
            id: Uuid::now_v7(),
            seq,
            source: "ankle".into(),
            kind: "sensor".into(),
            time: "2026-11-21T05:00:00.015Z".into(),
            data: serde_json::json!({ "pad": pad }),
        }
    }

    fn store(prefix: u64, events: &[Event]) -> sled::Tree {
        let db = sled::Config::new().temporary(true).open().unwrap();
        let tree = db.open_tree("runs").unwrap();
        let mut batch = sled::Batch::default();
        put(&mut batch, prefix, &events.iter().collect::<Vec<_>>()).unwrap();
        tree.apply_batch(batch).unwrap();
        tree
    }

    #[test]
    fn runs_split_at_holes_and_read_back_in_order() {
        let events: Vec<Event> = [1, 2, 3, 7, 8, 20].iter().map(|&s| event(s, 10)).collect();
        let tree = store(5, &events);
        assert_eq!(super::events(&tree, 5).unwrap(), events);
        assert!(super::events(&tree, 4).unwrap().is_empty());
        let span = |first, last| Span { first, last };
        assert_eq!(holding(&tree, 5, 2).unwrap(), Some(span(1, 3)));
        assert_eq!(holding(&tree, 5, 4).unwrap(), None);
        assert_eq!(holding(&tree, 5, 8).unwrap(), Some(span(7, 8)));
        assert_eq!(holding(&tree, 6, 8).unwrap(), None);
        assert_eq!(
            overlapping(&tree, 5, 3, 20).unwrap(),
            [span(1, 3), span(7, 8), span(20, 20)]
        );
        assert_eq!(overlapping(&tree, 5, 9, 19).unwrap(), []);
        assert_eq!(overlapping(&tree, 5, u64::MAX, u64::MAX).unwrap(), []);
    }

    #[test]
    fn large_runs_close_at_the_target_and_stay_in_small_pieces() {
        // Each 64 KiB event fills a run of its own, stored in many pieces.
        let events: Vec<Event> = (1..=4).map(|s| event(s, 64 * 1024 - 200)).collect();
        let tree = store(1, &events);
        assert_eq!(super::events(&tree, 1).unwrap(), events);
        assert_eq!(overlapping(&tree, 1, 1, 4).unwrap().len(), 4);
        assert!(tree.len() > 4 * 16);
        assert!(
            tree.iter()
                .values()
                .all(|v| v.unwrap().len() <= PIECE_MAX_BYTES)
        );
    }

    #[test]
    fn a_damaged_run_is_reported_not_read() {
        let tree = store(1, &[event(1, 10), event(2, 10)]);
        tree.insert(key(1, 1, 0), &b"\x01\x00\x00\x00\x02"[..])
            .unwrap();
        let err = super::events(&tree, 1).unwrap_err();
        assert!(matches!(err, SinkError::Corrupt(_)), "{err}");
        // An event whose own seq disagrees with its place.
        let line = serde_json::to_vec(&event(9, 1)).unwrap();
        assert!(
            decode(3, &line)
                .unwrap_err()
                .to_string()
                .contains("says seq 9")
        );
    }
}
