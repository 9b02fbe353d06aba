//! The reference upstream's own sled store: per-stream events, recorded gaps and the contiguous ack.

use std::hash::{DefaultHasher, Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, PoisonError};

use serde::{Deserialize, Serialize};
use sled::Transactional;
use sled::transaction::{ConflictableTransactionError, TransactionError};
use uuid::Uuid;

use crate::contract::{Ack, Gap, IngestArgs};
use crate::durable::FsSync;
use crate::event::Event;
use crate::sink::keys::{
    NO_ACK, StreamRecord, decode_u64, get_event, is_piece, key_seq, parse_stream_key, put_event,
    seq_key, stream_key,
};

/// sled page cache cap, in bytes (DESIGN §4: cap it; RSS still runs 2-3x above it). An ingest
/// touches only the tail of its stream; 4 MiB instead of 16 took ~15 MiB off the sink's RSS.
pub const CACHE_CAPACITY_BYTES: u64 = 4 * 1024 * 1024;
/// Longest accepted `gateway`, in bytes.
pub const MAX_GATEWAY_LEN: usize = 256;
/// Ingests and cursor reads of one stream are serialised by one of this many locks (by hash).
const LOCK_STRIPES: usize = 64;

/// Why the sink store refused or failed a request.
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    /// The batch breaks the contract (order, seq range, gap); nothing of it was stored.
    #[error("invalid batch: {0}")]
    InvalidBatch(String),
    /// The data dir could not be opened (bad path, or another process holds its lock).
    #[error("open sink store at {}: {source}", path.display())]
    Open {
        /// The data dir given to [`SinkStore::open`].
        path: PathBuf,
        /// sled's reason.
        source: sled::Error,
    },
    /// sled failed a read, write or fsync.
    #[error("sink storage: {0}")]
    Storage(#[from] sled::Error),
    /// A stored record does not decode; the data dir is damaged.
    #[error("corrupt sink record: {0}")]
    Corrupt(String),
}

/// Counters since [`SinkStore::open`] (in memory, not persisted).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct SinkStats {
    /// `ingest` calls that succeeded.
    pub batches: u64,
    /// Events written (new seqs).
    pub events_stored: u64,
    /// Events ignored because their seq was at or below the mark or already stored.
    pub duplicates_ignored: u64,
}

/// Durable per-stream event store of the reference upstream (DESIGN §2).
///
/// Every [`Ack`] it returns describes state that was fsynced before the call returned.
pub struct SinkStore {
    db: sled::Db,
    sync: FsSync,
    streams: sled::Tree,
    events: sled::Tree,
    gaps: sled::Tree,
    locks: Box<[tokio::sync::Mutex<()>]>,
    stats: Mutex<SinkStats>,
}

/// Only the field the mark needs when it lands on an event stored by an earlier call.
#[derive(Deserialize)]
struct EventId {
    id: Uuid,
}

impl SinkStore {
    /// Opens (or creates) the store in `dir`, with the page cache capped at
    /// [`CACHE_CAPACITY_BYTES`].
    ///
    /// # Errors
    /// [`SinkError::Open`] when sled cannot open the dir, e.g. while another `SinkStore` (in
    /// this or another process) still holds it.
    pub fn open(dir: &Path) -> Result<SinkStore, SinkError> {
        let (db, sync) =
            crate::durable::open(dir, CACHE_CAPACITY_BYTES).map_err(|source| SinkError::Open {
                path: dir.to_owned(),
                source,
            })?;
        Ok(SinkStore {
            sync,
            streams: db.open_tree("streams")?,
            events: db.open_tree("events")?,
            gaps: db.open_tree("gaps")?,
            db,
            locks: (0..LOCK_STRIPES)
                .map(|_| tokio::sync::Mutex::new(()))
                .collect(),
            stats: Mutex::default(),
        })
    }

    /// Stores a batch (DESIGN §2 `edge_ingest`) and answers with the stream's contiguous mark.
    ///
    /// Events with `seq` at or below the mark, or already stored, are ignored as duplicates.
    /// `gap` is recorded and its seqs count as stored. Everything of one call is one atomic
    /// sled transaction, fsynced before this returns.
    ///
    /// # Errors
    /// [`SinkError::InvalidBatch`] (nothing stored) when `gateway` is empty or longer than
    /// [`MAX_GATEWAY_LEN`], a seq is 0, seqs are not strictly increasing, or `gap` is empty,
    /// starts at 0 or does not end before the first event; [`SinkError::Storage`] on I/O failure.
    pub async fn ingest(&self, args: &IngestArgs) -> Result<Ack, SinkError> {
        validate(args)?;
        let skey = stream_key(&args.gateway, args.stream);
        let _guard = self.lock(&skey).lock().await;
        let existing = self.record(&skey)?;
        if existing.is_none() && args.events.is_empty() && args.gap.is_none() {
            return Ok(NO_ACK);
        }
        let old = match existing {
            Some(record) => record,
            None => StreamRecord {
                prefix: self.db.generate_id()?,
                mark: 0,
                acked_id: None,
            },
        };
        let prefix = old.prefix;

        let mut gap_batch = sled::Batch::default();
        let new_gap = match args.gap {
            Some(gap) => self.merge_gap(prefix, old.mark, gap, &mut gap_batch)?,
            None => None,
        };
        let mut event_batch = sled::Batch::default();
        let mut fresh: Vec<&Event> = Vec::with_capacity(args.events.len());
        for event in &args.events {
            let key = seq_key(prefix, event.seq);
            if event.seq <= old.mark || self.events.contains_key(key)? {
                continue;
            }
            let value = serde_json::to_vec(event).map_err(|e| {
                SinkError::InvalidBatch(format!("event seq {} does not encode: {e}", event.seq))
            })?;
            put_event(&mut event_batch, &key, &value);
            fresh.push(event);
        }
        let new = self.advance(old, &fresh, new_gap)?;

        if !fresh.is_empty() || new_gap.is_some() || existing != Some(new) {
            (&self.streams, &self.events, &self.gaps)
                .transaction(|(streams, events, gaps)| {
                    events.apply_batch(&event_batch)?;
                    gaps.apply_batch(&gap_batch)?;
                    streams.insert(skey.as_slice(), new.encode())?;
                    Ok::<_, ConflictableTransactionError<std::convert::Infallible>>(())
                })
                .map_err(|e| match e {
                    TransactionError::Abort(never) => match never {},
                    TransactionError::Storage(e) => SinkError::Storage(e),
                })?;
        }
        // Also covers a duplicate-only batch: an earlier call's failed fsync must not be acked.
        self.sync.flush(&self.db).await?;

        let duplicates = args.events.len() - fresh.len();
        {
            let mut stats = self.stats.lock().unwrap_or_else(PoisonError::into_inner);
            stats.batches += 1;
            stats.events_stored += fresh.len() as u64;
            stats.duplicates_ignored += duplicates as u64;
        }
        if existing.is_none() {
            log::info!(gateway = args.gateway.as_str(), stream:% = args.stream; "sink: new stream");
        }
        log::debug!(gateway = args.gateway.as_str(), stream:% = args.stream,
            stored = fresh.len(), duplicates = duplicates, acked_seq = new.mark; "sink: batch");
        Ok(new.ack())
    }

    /// The stream's contiguous mark (DESIGN §2 `edge_cursor`); `acked_seq: None` when the
    /// stream is unknown or nothing is contiguous from seq 1 yet.
    ///
    /// Async because it waits for an ingest of the same stream in flight and fsyncs, so it
    /// never reports a mark that is not yet durable.
    ///
    /// # Errors
    /// [`SinkError::Storage`] or [`SinkError::Corrupt`].
    pub async fn cursor(&self, gateway: &str, stream: Uuid) -> Result<Ack, SinkError> {
        let skey = stream_key(gateway, stream);
        let _guard = self.lock(&skey).lock().await;
        self.sync.flush(&self.db).await?;
        self.written_mark(gateway, stream)
    }

    /// The stream's mark as last written, without waiting for an ingest in flight or an fsync:
    /// for monitors that must not block (the partition suite checks after every simulated tick
    /// that the relay's cursor never passes it). Answer relays with [`SinkStore::cursor`].
    ///
    /// # Errors
    /// [`SinkError::Storage`] or [`SinkError::Corrupt`].
    pub fn written_mark(&self, gateway: &str, stream: Uuid) -> Result<Ack, SinkError> {
        let record = self.record(&stream_key(gateway, stream))?;
        Ok(record.map_or(NO_ACK, |record| record.ack()))
    }

    /// All stored events of a stream, in seq order (empty for an unknown stream).
    ///
    /// # Errors
    /// [`SinkError::Storage`] or [`SinkError::Corrupt`].
    pub fn events(&self, gateway: &str, stream: Uuid) -> Result<Vec<Event>, SinkError> {
        let Some(record) = self.record(&stream_key(gateway, stream))? else {
            return Ok(Vec::new());
        };
        let mut encoded: Vec<(sled::IVec, Vec<u8>)> = Vec::new();
        for item in self.events.scan_prefix(record.prefix.to_be_bytes()) {
            let (key, value) = item?;
            match encoded.last_mut() {
                Some((_, event)) if is_piece(&key) => event.extend_from_slice(&value),
                _ => encoded.push((key, value.to_vec())),
            }
        }
        encoded
            .iter()
            .map(|(key, value)| {
                serde_json::from_slice(value)
                    .map_err(|e| SinkError::Corrupt(format!("event key {key:?}: {e}")))
            })
            .collect()
    }

    /// Recorded gaps of a stream, in seq order; overlapping or adjacent gaps are merged and
    /// parts at or below the mark when they arrived are left out.
    ///
    /// # Errors
    /// [`SinkError::Storage`] or [`SinkError::Corrupt`].
    pub fn gaps(&self, gateway: &str, stream: Uuid) -> Result<Vec<Gap>, SinkError> {
        self.scan(&self.gaps, gateway, stream, |key, value| {
            Ok(Gap {
                dropped_from: key_seq(key)?,
                dropped_to: decode_u64(value, "gap end")?,
            })
        })
    }

    /// Every known (gateway, stream), sorted.
    ///
    /// # Errors
    /// [`SinkError::Storage`] or [`SinkError::Corrupt`].
    pub fn streams(&self) -> Result<Vec<(String, Uuid)>, SinkError> {
        let mut out = self
            .streams
            .iter()
            .map(|item| parse_stream_key(&item?.0))
            .collect::<Result<Vec<_>, SinkError>>()?;
        out.sort();
        Ok(out)
    }

    /// Counters since open.
    pub fn stats(&self) -> SinkStats {
        *self.stats.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn lock(&self, skey: &[u8]) -> &tokio::sync::Mutex<()> {
        let mut hasher = DefaultHasher::new();
        skey.hash(&mut hasher);
        &self.locks[(hasher.finish() % LOCK_STRIPES as u64) as usize]
    }

    /// Decodes every entry of one stream in `tree` (`events` or `gaps`), in seq order.
    fn scan<T>(
        &self,
        tree: &sled::Tree,
        gateway: &str,
        stream: Uuid,
        decode: impl Fn(&[u8], &[u8]) -> Result<T, SinkError>,
    ) -> Result<Vec<T>, SinkError> {
        let Some(record) = self.record(&stream_key(gateway, stream))? else {
            return Ok(Vec::new());
        };
        tree.scan_prefix(record.prefix.to_be_bytes())
            .map(|item| {
                item.map_err(SinkError::from)
                    .and_then(|(k, v)| decode(&k, &v))
            })
            .collect()
    }

    fn record(&self, skey: &[u8]) -> Result<Option<StreamRecord>, SinkError> {
        self.streams
            .get(skey)?
            .map(|raw| StreamRecord::decode(&raw))
            .transpose()
    }

    /// Adds `gap` (minus what is at or below `mark`) to `batch`, merged with the stored gaps
    /// it overlaps or touches. Returns the merged range, or `None` when nothing is new.
    fn merge_gap(
        &self,
        prefix: u64,
        mark: u64,
        gap: Gap,
        batch: &mut sled::Batch,
    ) -> Result<Option<(u64, u64)>, SinkError> {
        if gap.dropped_to <= mark {
            return Ok(None);
        }
        let (mut lo, mut hi) = (gap.dropped_from.max(mark + 1), gap.dropped_to);
        let range = seq_key(prefix, 0)..=seq_key(prefix, hi.saturating_add(1));
        let mut merged = false;
        // Stored gaps are disjoint, so walking down by start also walks down by end.
        for item in self.gaps.range(range).rev() {
            let (key, value) = item?;
            let (from, to) = (key_seq(&key)?, decode_u64(&value, "gap end")?);
            if to.saturating_add(1) < lo {
                break;
            }
            if !merged && from <= lo && to >= hi {
                return Ok(None);
            }
            (lo, hi, merged) = (lo.min(from), hi.max(to), true);
            batch.remove(key);
        }
        batch.insert(&seq_key(prefix, lo), &hi.to_be_bytes());
        Ok(Some((lo, hi)))
    }

    /// Moves the mark forward over this batch's new events, stored events and gaps.
    fn advance(
        &self,
        old: StreamRecord,
        fresh: &[&Event],
        new_gap: Option<(u64, u64)>,
    ) -> Result<StreamRecord, SinkError> {
        let prefix = old.prefix;
        let (mut mark, mut acked_id, mut id_stored) = (old.mark, old.acked_id, false);
        while let Some(next) = mark.checked_add(1) {
            if let Ok(i) = fresh.binary_search_by_key(&next, |e| e.seq) {
                (mark, acked_id, id_stored) = (next, Some(fresh[i].id), false);
            } else if self.events.contains_key(seq_key(prefix, next))? {
                (mark, id_stored) = (next, true);
            } else if let Some(to) = match new_gap {
                Some((lo, hi)) if (lo..=hi).contains(&next) => Some(hi),
                _ => self.gap_end(prefix, next)?,
            } {
                (mark, acked_id, id_stored) = (to, None, false);
            } else {
                break;
            }
        }
        if id_stored {
            let raw = get_event(&self.events, &seq_key(prefix, mark))?
                .ok_or_else(|| SinkError::Corrupt(format!("event seq {mark} vanished")))?;
            let event: EventId = serde_json::from_slice(&raw)
                .map_err(|e| SinkError::Corrupt(format!("event seq {mark}: {e}")))?;
            acked_id = Some(event.id);
        }
        Ok(StreamRecord {
            prefix,
            mark,
            acked_id,
        })
    }

    /// End of the stored gap that covers `seq`, if any.
    fn gap_end(&self, prefix: u64, seq: u64) -> Result<Option<u64>, SinkError> {
        match self
            .gaps
            .range(seq_key(prefix, 0)..=seq_key(prefix, seq))
            .next_back()
        {
            Some(item) => {
                let to = decode_u64(&item?.1, "gap end")?;
                Ok((to >= seq).then_some(to))
            }
            None => Ok(None),
        }
    }
}

fn validate(args: &IngestArgs) -> Result<(), SinkError> {
    let invalid = |reason: String| Err(SinkError::InvalidBatch(reason));
    if args.gateway.is_empty() || args.gateway.len() > MAX_GATEWAY_LEN {
        return invalid(format!(
            "`gateway` must be 1..={MAX_GATEWAY_LEN} bytes, got {}",
            args.gateway.len()
        ));
    }
    let mut prev = 0;
    for (i, event) in args.events.iter().enumerate() {
        if event.seq == 0 {
            return invalid(format!("events[{i}]: seq must be >= 1"));
        }
        if event.seq <= prev {
            return invalid(format!(
                "events[{i}]: seq {} after seq {prev}; seqs must be strictly increasing",
                event.seq
            ));
        }
        prev = event.seq;
    }
    if let Some(gap) = args.gap {
        if gap.dropped_from == 0 || gap.dropped_from > gap.dropped_to {
            return invalid(format!(
                "gap {}..={}: needs 1 <= dropped_from <= dropped_to",
                gap.dropped_from, gap.dropped_to
            ));
        }
        if let Some(first) = args.events.first()
            && gap.dropped_to >= first.seq
        {
            return invalid(format!(
                "gap {}..={} must end before the first event (seq {})",
                gap.dropped_from, gap.dropped_to, first.seq
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn batch(stream: Uuid, seqs: &[u64], gap: Option<(u64, u64)>) -> IngestArgs {
        let event = |seq| Event {
            id: Uuid::now_v7(),
            seq,
            source: "ankle".into(),
            kind: "sensor".into(),
            time: "2026-11-21T05:00:00.015Z".into(),
            data: serde_json::json!({ "n": seq }),
        };
        IngestArgs {
            gateway: "gw-01".into(),
            stream,
            events: seqs.iter().map(|&seq| event(seq)).collect(),
            gap: gap.map(|(from, to)| gap_of(from, to)),
        }
    }

    fn gap_of(dropped_from: u64, dropped_to: u64) -> Gap {
        Gap {
            dropped_from,
            dropped_to,
        }
    }

    fn pair(ack: Ack) -> (Option<u64>, Option<Uuid>) {
        (ack.acked_seq, ack.acked_id)
    }

    /// Ingests a fresh batch and returns the acked seq.
    async fn put(
        store: &SinkStore,
        stream: Uuid,
        seqs: &[u64],
        gap: Option<(u64, u64)>,
    ) -> Option<u64> {
        store
            .ingest(&batch(stream, seqs, gap))
            .await
            .unwrap()
            .acked_seq
    }

    fn seqs(store: &SinkStore, stream: Uuid) -> Vec<u64> {
        store
            .events("gw-01", stream)
            .unwrap()
            .iter()
            .map(|e| e.seq)
            .collect()
    }

    fn open(dir: &tempfile::TempDir) -> SinkStore {
        SinkStore::open(dir.path()).unwrap()
    }

    #[tokio::test]
    async fn large_events_are_stored_without_sled_blobs_and_read_back_whole() {
        let dir = tempfile::tempdir().unwrap();
        let (store, stream) = (open(&dir), Uuid::new_v4());
        for round in 0..8u64 {
            let mut args = batch(stream, &[2 * round + 1, 2 * round + 2], None);
            for (n, event) in args.events.iter_mut().enumerate() {
                let pad = [20_000, 64 * 1024 - 64][n];
                event.data = serde_json::json!({ "pad": "y".repeat(pad) });
            }
            let ack = store.ingest(&args).await.unwrap();
            assert_eq!(ack.acked_seq, Some(2 * round + 2));
            // The mark's id is read back from an event stored in pieces.
            let again = store.ingest(&batch(stream, &[], None)).await.unwrap();
            assert_eq!(again.acked_id, Some(args.events[1].id));
        }
        let events = store.events("gw-01", stream).unwrap();
        assert_eq!(events.len(), 16);
        assert!(events.iter().zip(1..).all(|(e, seq)| e.seq == seq));
        assert_eq!(
            events[15].data["pad"].as_str().unwrap().len(),
            64 * 1024 - 64
        );
        let blobs = std::fs::read_dir(dir.path().join("blobs")).unwrap().count();
        assert_eq!(blobs, 0, "sled wrote a blob file");
    }

    #[tokio::test]
    async fn stores_a_batch_once() {
        let dir = tempfile::tempdir().unwrap();
        let (store, stream) = (open(&dir), Uuid::new_v4());
        assert_eq!(store.cursor("gw-01", stream).await.unwrap(), NO_ACK);
        let args = batch(stream, &[1, 2, 3], None);
        let ack = store.ingest(&args).await.unwrap();
        assert_eq!(pair(ack), (Some(3), Some(args.events[2].id)));
        assert_eq!(store.ingest(&args).await.unwrap(), ack);
        assert_eq!(store.cursor("gw-01", stream).await.unwrap(), ack);
        assert_eq!(store.events("gw-01", stream).unwrap(), args.events);
        let stats = store.stats();
        assert_eq!(
            (stats.batches, stats.events_stored, stats.duplicates_ignored),
            (2, 3, 3)
        );
        assert_eq!(store.streams().unwrap(), [("gw-01".to_owned(), stream)]);
        // The same stream id under another gateway is another stream.
        assert_eq!(store.cursor("gw-02", stream).await.unwrap(), NO_ACK);
    }

    #[tokio::test]
    async fn mark_stays_contiguous_across_out_of_order_batches() {
        let dir = tempfile::tempdir().unwrap();
        let (store, stream) = (open(&dir), Uuid::new_v4());
        let ahead = batch(stream, &[5, 6], None);
        assert_eq!(store.ingest(&ahead).await.unwrap(), NO_ACK);
        assert_eq!(put(&store, stream, &[1, 2], None).await, Some(2));
        // 3 and 4 close the hole: the mark runs over the stored 5 and 6 and names 6's id.
        let ack = store.ingest(&batch(stream, &[2, 3, 4], None)).await;
        assert_eq!(pair(ack.unwrap()), (Some(6), Some(ahead.events[1].id)));
        assert_eq!(seqs(&store, stream), [1, 2, 3, 4, 5, 6]);
        assert_eq!(store.stats().duplicates_ignored, 1);
        // Concurrent batches of one stream are serialised: whichever lands last sees the other.
        let (a, b) = (batch(stream, &[9, 10], None), batch(stream, &[7, 8], None));
        let (a, b) = tokio::join!(store.ingest(&a), store.ingest(&b));
        assert_eq!(a.unwrap().acked_seq.max(b.unwrap().acked_seq), Some(10));
    }

    #[tokio::test]
    async fn gaps_count_as_stored() {
        let dir = tempfile::tempdir().unwrap();
        let (store, stream) = (open(&dir), Uuid::new_v4());
        put(&store, stream, &[1, 2], None).await;
        assert_eq!(put(&store, stream, &[6, 7], Some((3, 5))).await, Some(7));
        // A gap alone moves the mark onto a seq with no event: no id.
        let ack = store.ingest(&batch(stream, &[], Some((8, 9)))).await;
        assert_eq!(pair(ack.unwrap()), (Some(9), None));
        // Gaps ahead of the mark are kept, merged with what they touch, and used later.
        assert_eq!(put(&store, stream, &[], Some((12, 14))).await, Some(9));
        assert_eq!(put(&store, stream, &[16], Some((13, 15))).await, Some(9));
        assert_eq!(put(&store, stream, &[10, 11], None).await, Some(16));
        // A gap at or below the mark changes nothing.
        assert_eq!(put(&store, stream, &[7], Some((1, 6))).await, Some(16));
        let gaps = [gap_of(3, 5), gap_of(8, 9), gap_of(12, 15)];
        assert_eq!(store.gaps("gw-01", stream).unwrap(), gaps);
        assert_eq!(seqs(&store, stream), [1, 2, 6, 7, 10, 11, 16]);
    }

    #[tokio::test]
    async fn invalid_batch_stores_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let (store, stream) = (open(&dir), Uuid::new_v4());
        let mut nameless = batch(stream, &[1], None);
        nameless.gateway.clear();
        let mut cases = vec![
            nameless.clone(),
            batch(stream, &[0, 1], None),
            batch(stream, &[1, 3, 2], None),
            batch(stream, &[1, 2, 2], None),
            batch(stream, &[2, 3], Some((1, 2))),
            batch(stream, &[], Some((4, 3))),
            batch(stream, &[], Some((0, 3))),
        ];
        nameless.gateway = "g".repeat(MAX_GATEWAY_LEN + 1);
        cases.push(nameless);
        for args in cases {
            let err = store.ingest(&args).await.unwrap_err();
            assert!(matches!(err, SinkError::InvalidBatch(_)), "{err}");
        }
        assert!(store.streams().unwrap().is_empty());
        assert!(seqs(&store, stream).is_empty());
        assert_eq!(store.stats(), SinkStats::default());
    }

    #[tokio::test]
    async fn survives_close_and_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let (store, stream) = (open(&dir), Uuid::new_v4());
        let args = batch(stream, &[2, 3], Some((1, 1)));
        let ack = store.ingest(&args).await.unwrap();
        put(&store, stream, &[9], None).await;
        // sled locks the dir until the store is dropped.
        assert!(matches!(
            SinkStore::open(dir.path()),
            Err(SinkError::Open { .. })
        ));
        drop(store);

        let store = open(&dir);
        assert_eq!(store.cursor("gw-01", stream).await.unwrap(), ack);
        assert_eq!(store.events("gw-01", stream).unwrap()[..2], args.events[..]);
        assert_eq!(seqs(&store, stream), [2, 3, 9]);
        assert_eq!(store.gaps("gw-01", stream).unwrap(), [args.gap.unwrap()]);
        assert_eq!(put(&store, stream, &[4], None).await, Some(4));
        // A stream created after the reopen gets a key prefix of its own.
        let other = Uuid::new_v4();
        put(&store, other, &[1], None).await;
        assert_eq!(seqs(&store, other), [1]);
        assert_eq!(store.streams().unwrap().len(), 2);
    }
}
