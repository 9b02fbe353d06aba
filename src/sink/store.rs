//! The reference upstream's own sled store: per-stream events, recorded gaps and the contiguous ack.

use std::hash::{DefaultHasher, Hash, Hasher};
use std::path::Path;
use std::sync::{Mutex, PoisonError};

use serde::{Deserialize, Serialize};
use sled::Transactional;
use sled::transaction::ConflictableTransactionError;
use uuid::Uuid;

use crate::contract::{Ack, Gap, IngestArgs};
use crate::durable::FsSync;
use crate::event::Event;
pub use crate::sink::error::SinkError;
use crate::sink::keys::{
    NO_ACK, StreamRecord, decode_u64, key_seq, parse_stream_key, seq_key, stream_key,
};
use crate::sink::runs::{self, Span};
use crate::sink::uncovered::uncovered;

/// sled page cache cap, in bytes (docs/DESIGN.md §13). Small on purpose: an ingest touches only
/// the tail of its stream, and every MiB of cache is RSS (sled's runs above the cap anyway).
pub const CACHE_CAPACITY_BYTES: u64 = 4 * 1024 * 1024;
/// Longest accepted `gateway`, in bytes.
pub const MAX_GATEWAY_LEN: usize = 256;
/// Ingests and `edge_cursor` reads of one stream are serialised by one of this many locks (by hash).
const LOCK_STRIPES: usize = 64;

/// Counters since [`SinkStore::open`] (in memory, not persisted).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct SinkStats {
    /// `ingest` calls that succeeded.
    pub batches: u64,
    /// Events written (new seqs).
    pub events_stored: u64,
    /// Events ignored because their seq was at or below the acked seq or already stored.
    pub duplicates_ignored: u64,
}

/// Durable per-stream event store of the reference upstream (docs/DESIGN.md §11).
///
/// Every [`Ack`] it returns describes state that was fsynced before the call returned.
pub struct SinkStore {
    db: sled::Db,
    sync: FsSync,
    streams: sled::Tree,
    runs: sled::Tree,
    gaps: sled::Tree,
    locks: Box<[tokio::sync::Mutex<()>]>,
    stats: Mutex<SinkStats>,
}

/// Only the field the acked seq needs when it lands on an event stored by an earlier call.
#[derive(Deserialize)]
struct EventId {
    id: Uuid,
}

impl SinkStore {
    /// Opens (or creates) the store in `dir`, with the page cache capped at
    /// [`CACHE_CAPACITY_BYTES`]; events of the first layout (one key per event) are converted
    /// to runs first, and synced.
    ///
    /// # Errors
    /// [`SinkError::Open`] when sled cannot open the dir, e.g. while another `SinkStore` (in
    /// this or another process) still holds it; [`SinkError::Corrupt`] when an event of the
    /// first layout does not decode (it stays where it is).
    pub fn open(dir: &Path) -> Result<SinkStore, SinkError> {
        let (db, sync) =
            crate::durable::open(dir, CACHE_CAPACITY_BYTES).map_err(|source| SinkError::Open {
                path: dir.to_owned(),
                source,
            })?;
        let runs = db.open_tree("runs")?;
        if db
            .tree_names()
            .iter()
            .any(|n| n == crate::sink::legacy::TREE.as_bytes())
        {
            let moved =
                crate::sink::legacy::convert(&db.open_tree(crate::sink::legacy::TREE)?, &runs)?;
            sync.flush_blocking(&db)?;
            if moved > 0 {
                log::info!(events = moved; "sink: converted the store's events to runs");
            }
        }
        Ok(SinkStore {
            sync,
            streams: db.open_tree("streams")?,
            runs,
            gaps: db.open_tree("gaps")?,
            db,
            locks: (0..LOCK_STRIPES)
                .map(|_| tokio::sync::Mutex::new(()))
                .collect(),
            stats: Mutex::default(),
        })
    }

    /// Stores a batch (`edge_ingest`) and answers with the stream's acked seq.
    ///
    /// Events with `seq` at or below the acked seq, or already stored, are ignored as duplicates.
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
        let guard = self.lock(&skey).lock().await;
        let existing = self.record(&skey)?;
        if existing.is_none() && args.events.is_empty() && args.gap.is_none() {
            return Ok(NO_ACK);
        }
        let old = match existing {
            Some(record) => record,
            None => StreamRecord {
                prefix: self.db.generate_id()?,
                acked_seq: 0,
                acked_id: None,
            },
        };
        let prefix = old.prefix;

        let mut gap_batch = sled::Batch::default();
        let new_gaps = match args.gap {
            Some(gap) => self.record_gap(prefix, old.acked_seq, gap, &mut gap_batch)?,
            None => Vec::new(),
        };
        let fresh = self.fresh(prefix, old.acked_seq, &args.events)?;
        let mut run_batch = sled::Batch::default();
        runs::put(&mut run_batch, prefix, &fresh)?;
        let new = self.advance(old, &fresh, &new_gaps)?;

        if !fresh.is_empty() || !new_gaps.is_empty() || existing != Some(new) {
            (&self.streams, &self.runs, &self.gaps).transaction(|(streams, runs, gaps)| {
                runs.apply_batch(&run_batch)?;
                gaps.apply_batch(&gap_batch)?;
                streams.insert(skey.as_slice(), new.encode())?;
                Ok::<_, ConflictableTransactionError<std::convert::Infallible>>(())
            })?;
        }
        // The next batch of this stream may go on while this one is synced: whatever it reads
        // of this one's writes, its own answer waits for a sync that starts after them.
        drop(guard);
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
            stored = fresh.len(), duplicates = duplicates, acked_seq = new.acked_seq; "sink: batch");
        Ok(new.ack())
    }

    /// The stream's acked seq (`edge_cursor`); `acked_seq: None` when the
    /// stream is unknown or nothing is contiguous from seq 1 yet.
    ///
    /// Async because it waits for an ingest of the same stream in flight and fsyncs, so it
    /// never reports an acked seq that is not yet durable.
    ///
    /// # Errors
    /// [`SinkError::Storage`] or [`SinkError::Corrupt`].
    pub async fn cursor(&self, gateway: &str, stream: Uuid) -> Result<Ack, SinkError> {
        let skey = stream_key(gateway, stream);
        let _guard = self.lock(&skey).lock().await;
        self.sync.flush(&self.db).await?;
        self.written_acked_seq(gateway, stream)
    }

    /// The stream's acked seq as last written, without waiting for an ingest in flight or an fsync:
    /// for monitors that must not block (the partition suite checks after every simulated tick
    /// that the relay's acked seq never passes it). Answer relays with [`SinkStore::cursor`].
    ///
    /// # Errors
    /// [`SinkError::Storage`] or [`SinkError::Corrupt`].
    pub fn written_acked_seq(&self, gateway: &str, stream: Uuid) -> Result<Ack, SinkError> {
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
        runs::events(&self.runs, record.prefix)
    }

    /// Recorded gaps of a stream, in seq order; overlapping or adjacent gaps are merged and
    /// parts at or below the acked seq when they arrived are left out.
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
    /// [`SinkError::Storage`] or [`SinkError::Key`].
    pub fn streams(&self) -> Result<Vec<(String, Uuid)>, SinkError> {
        let mut out = self
            .streams
            .iter()
            .map(|item| Ok(parse_stream_key(&item?.0)?))
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
            .map_err(SinkError::from)
    }

    /// Adds `gap` to `batch`, minus what is at or below `acked_seq` and minus the seqs stored
    /// runs hold (with several batches in flight, a relay can report as dropped events that
    /// already arrived: it dropped them locally while their answer was lost), each part
    /// merged with the stored gaps it overlaps or touches. Returns the merged ranges that are
    /// new, in seq order.
    fn record_gap(
        &self,
        prefix: u64,
        acked_seq: u64,
        gap: Gap,
        batch: &mut sled::Batch,
    ) -> Result<Vec<(u64, u64)>, SinkError> {
        if gap.dropped_to <= acked_seq {
            return Ok(Vec::new());
        }
        let (lo, hi) = (gap.dropped_from.max(acked_seq + 1), gap.dropped_to);
        let stored = runs::overlapping(&self.runs, prefix, lo, hi)?;
        let parts = uncovered(lo, hi, stored.iter().map(|span| (span.first, span.last)));
        let mut merged = Vec::new();
        for (from, to) in parts {
            let part = Gap {
                dropped_from: from,
                dropped_to: to,
            };
            merged.extend(self.merge_gap(prefix, acked_seq, part, batch)?);
        }
        Ok(merged)
    }

    /// Adds `gap` (minus what is at or below `acked_seq`) to `batch`, merged with the stored gaps
    /// it overlaps or touches. Returns the merged range, or `None` when nothing is new.
    fn merge_gap(
        &self,
        prefix: u64,
        acked_seq: u64,
        gap: Gap,
        batch: &mut sled::Batch,
    ) -> Result<Option<(u64, u64)>, SinkError> {
        if gap.dropped_to <= acked_seq {
            return Ok(None);
        }
        let (mut lo, mut hi) = (gap.dropped_from.max(acked_seq + 1), gap.dropped_to);
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

    /// The events of `events` (seqs strictly increasing) that are above `acked_seq` and in no
    /// stored run: one range read of the runs that overlap the batch, no lookup per event.
    fn fresh<'a>(
        &self,
        prefix: u64,
        acked_seq: u64,
        events: &'a [Event],
    ) -> Result<Vec<&'a Event>, SinkError> {
        let above: &[Event] = &events[events.partition_point(|e| e.seq <= acked_seq)..];
        let (Some(lo), Some(hi)) = (above.first(), above.last()) else {
            return Ok(Vec::new());
        };
        let stored = runs::overlapping(&self.runs, prefix, lo.seq, hi.seq)?;
        let mut spans = stored.iter().peekable();
        let mut fresh = Vec::with_capacity(above.len());
        for event in above {
            while spans.next_if(|s| s.last < event.seq).is_some() {}
            if spans.peek().is_none_or(|s| s.first > event.seq) {
                fresh.push(event);
            }
        }
        Ok(fresh)
    }

    /// Moves the acked seq forward over this batch's new events, stored runs and gaps.
    fn advance(
        &self,
        old: StreamRecord,
        fresh: &[&Event],
        new_gaps: &[(u64, u64)],
    ) -> Result<StreamRecord, SinkError> {
        let prefix = old.prefix;
        let (mut acked_seq, mut acked_id) = (old.acked_seq, old.acked_id);
        // The stored run the acked seq ends in, when it does (its last event's id is read once).
        let mut in_run: Option<Span> = None;
        while let Some(next) = acked_seq.checked_add(1) {
            if let Ok(i) = fresh.binary_search_by_key(&next, |e| e.seq) {
                (acked_seq, acked_id, in_run) = (next, Some(fresh[i].id), None);
            } else if let Some(span) = runs::holding(&self.runs, prefix, next)? {
                (acked_seq, in_run) = (span.last, Some(span));
            } else if let Some(to) =
                match new_gaps.iter().find(|&&(lo, hi)| (lo..=hi).contains(&next)) {
                    Some(&(_, hi)) => Some(hi),
                    None => self.gap_end(prefix, next)?,
                }
            {
                (acked_seq, acked_id, in_run) = (to, None, None);
            } else {
                break;
            }
        }
        if let Some(span) = in_run {
            let run = runs::read(&self.runs, prefix, span.first)?;
            let events = run
                .events()
                .map_err(|e| SinkError::Corrupt(e.to_string()))?;
            let (seq, line) = events
                .last()
                .filter(|(seq, _)| *seq == acked_seq)
                .ok_or_else(|| {
                    SinkError::Corrupt(format!("run at seq {} ends before {acked_seq}", span.first))
                })?;
            let event: EventId = serde_json::from_slice(line)
                .map_err(|e| SinkError::Corrupt(format!("event seq {seq}: {e}")))?;
            acked_id = Some(event.id);
        }
        Ok(StreamRecord {
            prefix,
            acked_seq,
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

/// The contract's rules for a batch (see [`SinkStore::ingest`]'s errors); shared by every store.
pub(crate) fn validate(args: &IngestArgs) -> Result<(), SinkError> {
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
#[path = "store_tests.rs"]
mod tests;
