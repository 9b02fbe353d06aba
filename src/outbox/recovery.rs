//! Opening the outbox: counters, a new stream on an empty store, the migration of the first
//! layout, and the rollback of whatever a crash left past the durable end.

use uuid::Uuid;

use super::chunk::{self, Builder};
use super::error::OutboxError;
use super::keys::{be_u64, id_by_seq_key, id_key, index_seq, meta_key};
use super::stats::OutboxStats;

/// Layout number written at `m` + `layout`: 4 = chunks, plain or zstd ([`chunk`]), with every
/// counter in one value (`m` + `counters`, [`put_counters`]); 3 = the same with one key per
/// counter, and 2 = plain chunks only, with one key per counter (both converted at open);
/// stores without it are of layout 1 (one `e` + seq key per event, `r` + seq records of
/// retired ids; migrated at open). A higher number is a store written by a newer build: it is
/// refused ([`OutboxError::Corrupt`], so moved aside and kept) rather than misread.
const LAYOUT: u64 = 4;
/// The layouts of chunks with one key per counter.
const LAYOUTS_COUNTER_KEYS: [u64; 2] = [2, 3];
/// The counters' names in layouts 1-3 (one key each, `m` + name), in [`COUNTERS`] order.
const COUNTER_NAMES: [&str; 6] = [
    "next_seq",
    "acked_seq",
    "backlog_events",
    "backlog_bytes",
    "dropped_events",
    "sent_seq",
];
/// `m` + this holds every counter since layout 4: six u64 BE in [`COUNTER_NAMES`] order, 48
/// bytes. One value, so that a single sled insert moves them all: a group commit needs no sled
/// batch (see `writer`).
const COUNTERS: &str = "counters";
/// Length of the [`COUNTERS`] value.
const COUNTERS_BYTES: usize = 8 * COUNTER_NAMES.len();
/// Layout 1's event records: `e` + seq (u64 BE) → event JSON.
const LEGACY_EVENT: u8 = b'e';
/// Layout 1's retired-id records: `r` + seq (u64 BE) → ids (16 bytes each).
const LEGACY_RETIRED: u8 = b'r';
/// Most keys one sled batch of the rollback or the migration touches (sled keeps every node
/// version a batch replaces alive until it ends).
const BATCH_KEYS: usize = 256;

/// Reads the counters, creating a new stream on an empty store, migrating a layout-1 store and
/// rolling back everything past `next_seq`.
///
/// # Errors
/// [`OutboxError::Storage`] from sled, or [`OutboxError::Corrupt`] for an unreadable stream id.
pub(super) fn load_or_init(tree: &sled::Tree) -> Result<OutboxStats, OutboxError> {
    let corrupt = |reason: String| OutboxError::Corrupt { seq: 0, reason };
    // A counter that is absent has its initial value; one that is present but not 8 bytes is
    // damage, never read as absent (a `next_seq` restarting at 1 would reuse answered seqs).
    let get = |name: &str| -> Result<Option<u64>, OutboxError> {
        match tree.get(meta_key(name))? {
            None => Ok(None),
            Some(v) => be_u64(&v)
                .map(Some)
                .ok_or_else(|| corrupt(format!("counter {name} is {} bytes, not 8", v.len()))),
        }
    };
    let Some(stream) = tree.get(meta_key("stream"))? else {
        return init(tree);
    };
    let stream = Uuid::from_slice(&stream).map_err(|e| corrupt(format!("stream id: {e}")))?;
    let mut stats = match tree.get(meta_key(COUNTERS))? {
        Some(v) => decode_counters(stream, &v).ok_or_else(|| {
            corrupt(format!(
                "counters are {} bytes, not {COUNTERS_BYTES}",
                v.len()
            ))
        })?,
        None => {
            let next_seq = get("next_seq")?.unwrap_or(1);
            OutboxStats {
                stream,
                next_seq,
                acked_seq: get("acked_seq")?.unwrap_or(0),
                backlog_events: get("backlog_events")?.unwrap_or(0),
                backlog_bytes: get("backlog_bytes")?.unwrap_or(0),
                dropped_events: get("dropped_events")?.unwrap_or(0),
                sent_seq: get("sent_seq")?.unwrap_or(next_seq.saturating_sub(1)),
                compactions: 0,
            }
        }
    };
    match get("layout")?.unwrap_or(1) {
        LAYOUT => {}
        newer if newer > LAYOUT => {
            return Err(corrupt(format!(
                "store layout {newer} was written by a newer edge-relay (this one reads layouts \
                 up to {LAYOUT})"
            )));
        }
        older if LAYOUTS_COUNTER_KEYS.contains(&older) => {
            let mut batch = sled::Batch::default();
            put_counters_and_layout(&mut batch, &stats);
            tree.apply_batch(batch)?;
            tree.flush()?;
        }
        _ => migrate_layout_1(tree, &mut stats)?,
    }
    roll_back(tree, stats.next_seq)?;
    Ok(stats)
}

fn init(tree: &sled::Tree) -> Result<OutboxStats, OutboxError> {
    let stats = OutboxStats {
        stream: Uuid::now_v7(),
        next_seq: 1,
        ..OutboxStats::default()
    };
    let mut batch = sled::Batch::default();
    batch.insert(meta_key("stream"), stats.stream.as_bytes().to_vec());
    put_counters_and_layout(&mut batch, &stats);
    tree.apply_batch(batch)?;
    tree.flush()?;
    log::info!(stream:% = stats.stream; "created a new outbox stream");
    Ok(stats)
}

/// Adds to `batch` the counters of `s`, as one value ([`COUNTERS`]).
pub(super) fn put_counters(batch: &mut sled::Batch, s: &OutboxStats) {
    batch.insert(meta_key(COUNTERS), encode_counters(s).to_vec());
}

/// Adds to `batch` the counters of `s`, this build's layout number, and the removal of layouts
/// 1-3's one key per counter: the last batch of a new store, a conversion or a migration.
fn put_counters_and_layout(batch: &mut sled::Batch, s: &OutboxStats) {
    put_counters(batch, s);
    batch.insert(meta_key("layout"), LAYOUT.to_be_bytes().to_vec());
    for name in COUNTER_NAMES {
        batch.remove(meta_key(name));
    }
}

/// Stores the counters of `s` with one sled insert: atomic on its own, and written to sled's
/// log after every insert made before it, so after a crash the counters never describe more
/// than what survived (sled's recovery replays its log up to the first torn message).
///
/// # Errors
/// sled's.
pub(super) fn store_counters(tree: &sled::Tree, s: &OutboxStats) -> sled::Result<()> {
    tree.insert(meta_key(COUNTERS), &encode_counters(s)[..])?;
    Ok(())
}

/// The `m` + `counters` value of `s` ([`COUNTERS`]).
fn encode_counters(s: &OutboxStats) -> [u8; COUNTERS_BYTES] {
    let values = [
        s.next_seq,
        s.acked_seq,
        s.backlog_events,
        s.backlog_bytes,
        s.dropped_events,
        s.sent_seq,
    ];
    let mut out = [0; COUNTERS_BYTES];
    for (slot, value) in out.chunks_exact_mut(8).zip(values) {
        slot.copy_from_slice(&value.to_be_bytes());
    }
    out
}

/// The counters of stream `stream` from an `m` + `counters` value; `None` unless it is
/// [`COUNTERS_BYTES`] long.
fn decode_counters(stream: Uuid, value: &[u8]) -> Option<OutboxStats> {
    if value.len() != COUNTERS_BYTES {
        return None;
    }
    let mut values = value.chunks_exact(8).filter_map(be_u64);
    let mut next = || values.next().unwrap_or(0);
    Some(OutboxStats {
        stream,
        next_seq: next(),
        acked_seq: next(),
        backlog_events: next(),
        backlog_bytes: next(),
        dropped_events: next(),
        sent_seq: next(),
        compactions: 0,
    })
}

/// Deletes what lies at or past `next_seq`: chunks of a group commit whose counters (written
/// last) a crash cut off, and their id index entries. Their producers were never
/// answered. Also used by the writer after a failed write, before the next group.
///
/// # Errors
/// [`OutboxError::Storage`].
pub(super) fn roll_back(tree: &sled::Tree, next_seq: u64) -> Result<(), OutboxError> {
    let mut removed = 0usize;
    loop {
        let mut batch = sled::Batch::default();
        let mut keys = 0;
        for item in tree.range(chunk::key(next_seq, 0)..=chunk::key(u64::MAX, u16::MAX)) {
            batch.remove(item?.0);
            keys += 1;
            if keys == BATCH_KEYS {
                break;
            }
        }
        for item in tree.range(id_by_seq_key(next_seq)..=id_by_seq_key(u64::MAX)) {
            if keys >= BATCH_KEYS {
                break;
            }
            let (key, id) = item?;
            forget_id(tree, &mut batch, &key, &id)?;
            keys += 2;
        }
        if keys == 0 {
            break;
        }
        removed += keys;
        tree.apply_batch(batch)?;
    }
    if removed > 0 {
        tree.flush()?;
        log::warn!(next_seq = next_seq, keys = removed;
            "rolled back the records of a commit that a crash interrupted (never acknowledged)");
    }
    Ok(())
}

/// Adds to `batch` the removal of the by-seq index entry `key` (`s` + seq → `id`) and of the
/// id's own entry when it still names that seq (the id may since have been stored again under
/// a newer seq).
///
/// # Errors
/// [`OutboxError::Storage`].
pub(super) fn forget_id(
    tree: &sled::Tree,
    batch: &mut sled::Batch,
    key: &[u8],
    id: &[u8],
) -> Result<(), OutboxError> {
    if let Ok(id) = Uuid::from_slice(id) {
        let indexed = tree.get(id_key(&id))?.and_then(|v| index_seq(&v));
        if indexed == be_u64(&key[1..]) {
            batch.remove(&id_key(&id)[..]);
        }
    }
    batch.remove(key);
    Ok(())
}

/// Moves a layout-1 store (one key per event) into chunks, one sled batch per chunk (so a crash
/// in between leaves a store this function resumes), indexes by seq the ids it remembers, and
/// recounts the backlog bytes in the new layout.
fn migrate_layout_1(tree: &sled::Tree, stats: &mut OutboxStats) -> Result<(), OutboxError> {
    let mut chunks = 0u64;
    loop {
        let records = tree
            .scan_prefix([LEGACY_EVENT])
            .take(BATCH_KEYS / 2)
            .collect::<Result<Vec<_>, _>>()?;
        if records.is_empty() {
            break;
        }
        let mut batch = sled::Batch::default();
        let mut builder: Option<Builder> = None;
        for (key, value) in &records {
            let seq = be_u64(&key[1..]).unwrap_or(0);
            batch.remove(key);
            if seq >= stats.next_seq {
                continue; // past the durable end: an interrupted append, rolled back
            }
            let contiguous = builder
                .as_ref()
                .is_some_and(|b| b.first_seq + u64::from(b.count()) == seq && !b.is_full());
            if !contiguous {
                if let Some(done) = builder.take() {
                    chunk::put(&mut batch, done.first_seq, &done.encode());
                    chunks += 1;
                }
                builder = Some(Builder::new(seq));
            }
            if let Some(b) = builder.as_mut() {
                b.push(value);
            }
            if let Some(id) = event_id(value) {
                let indexed = tree.get(id_key(&id))?.and_then(|v| index_seq(&v));
                if indexed == Some(seq) {
                    batch.insert(&id_by_seq_key(seq)[..], id.as_bytes());
                }
            }
        }
        if let Some(done) = builder.take() {
            chunk::put(&mut batch, done.first_seq, &done.encode());
            chunks += 1;
        }
        tree.apply_batch(batch)?;
    }
    for item in tree.scan_prefix([LEGACY_RETIRED]) {
        let (key, ids) = item?;
        let mut batch = sled::Batch::default();
        for id in ids.chunks_exact(16) {
            let Ok(id) = Uuid::from_slice(id) else {
                continue;
            };
            if let Some(seq) = tree.get(id_key(&id))?.and_then(|v| index_seq(&v)) {
                batch.insert(&id_by_seq_key(seq)[..], id.as_bytes());
            }
        }
        batch.remove(key);
        tree.apply_batch(batch)?;
    }
    let mut bytes = 0;
    for stored in chunk::from_seq(tree, 0) {
        bytes += stored?.stored_bytes();
    }
    stats.backlog_bytes = bytes;
    let mut batch = sled::Batch::default();
    put_counters_and_layout(&mut batch, stats);
    tree.apply_batch(batch)?;
    tree.flush()?;
    log::info!(chunks = chunks, backlog_events = stats.backlog_events;
        "migrated the outbox to the chunk layout");
    Ok(())
}

/// The `id` of an encoded event, without decoding the rest.
pub(super) fn event_id(value: &[u8]) -> Option<Uuid> {
    #[derive(serde::Deserialize)]
    struct IdOnly {
        id: Uuid,
    }
    serde_json::from_slice::<IdOnly>(value).ok().map(|e| e.id)
}
