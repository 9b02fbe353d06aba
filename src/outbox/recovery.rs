//! Opening the outbox: counters, a new stream on an empty store, the migration of the first
//! layout, and the rollback of whatever a crash left past the durable end.

use uuid::Uuid;

use super::chunk::{self, Builder};
use super::error::OutboxError;
use super::keys::{be_u64, id_by_seq_key, id_key, index_seq, meta_key};
use super::stats::OutboxStats;

/// Layout number written at `m` + `layout`: 3 = chunks, plain or zstd ([`chunk`]); 2 = plain
/// chunks only (read as they are; the number is raised at open); stores without it are of
/// layout 1 (one `e` + seq key per event, `r` + seq records of retired ids). A higher number is
/// a store written by a newer build: it is refused ([`OutboxError::Corrupt`], so moved aside
/// and kept) rather than misread.
const LAYOUT: u64 = 3;
/// The first layout of chunks.
const LAYOUT_CHUNKS: u64 = 2;
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
    // A counter that is absent has its initial value; one that is present but not 8 bytes is
    // damage, never read as absent (a `next_seq` restarting at 1 would reuse answered seqs).
    let get = |name: &str| -> Result<Option<u64>, OutboxError> {
        match tree.get(meta_key(name))? {
            None => Ok(None),
            Some(v) => be_u64(&v).map(Some).ok_or_else(|| OutboxError::Corrupt {
                seq: 0,
                reason: format!("counter {name} is {} bytes, not 8", v.len()),
            }),
        }
    };
    let Some(stream) = tree.get(meta_key("stream"))? else {
        return init(tree);
    };
    let stream = Uuid::from_slice(&stream).map_err(|e| OutboxError::Corrupt {
        seq: 0,
        reason: format!("stream id: {e}"),
    })?;
    let mut stats = OutboxStats {
        stream,
        next_seq: get("next_seq")?.unwrap_or(1),
        acked_seq: get("acked_seq")?.unwrap_or(0),
        backlog_events: get("backlog_events")?.unwrap_or(0),
        backlog_bytes: get("backlog_bytes")?.unwrap_or(0),
        dropped_events: get("dropped_events")?.unwrap_or(0),
        sent_seq: 0,
        compactions: 0,
    };
    stats.sent_seq = get("sent_seq")?.unwrap_or(stats.next_seq.saturating_sub(1));
    match get("layout")?.unwrap_or(1) {
        LAYOUT => {}
        newer if newer > LAYOUT => {
            return Err(OutboxError::Corrupt {
                seq: 0,
                reason: format!(
                    "store layout {newer} was written by a newer edge-relay (this one reads \
                     layouts up to {LAYOUT})"
                ),
            });
        }
        LAYOUT_CHUNKS => {
            tree.insert(meta_key("layout"), LAYOUT.to_be_bytes().to_vec())?;
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
    batch.insert(meta_key("layout"), LAYOUT.to_be_bytes().to_vec());
    put_counters(&mut batch, &stats);
    tree.apply_batch(batch)?;
    tree.flush()?;
    log::info!(stream:% = stats.stream; "created a new outbox stream");
    Ok(stats)
}

/// Adds the counters of `s` to `batch`.
pub(super) fn put_counters(batch: &mut sled::Batch, s: &OutboxStats) {
    for (name, value) in [
        ("next_seq", s.next_seq),
        ("acked_seq", s.acked_seq),
        ("backlog_events", s.backlog_events),
        ("backlog_bytes", s.backlog_bytes),
        ("dropped_events", s.dropped_events),
        ("sent_seq", s.sent_seq),
    ] {
        batch.insert(meta_key(name), value.to_be_bytes().to_vec());
    }
}

/// Deletes what lies at or past `next_seq`: chunks of a group commit whose last batch (the one
/// with the counters) a crash cut off, and their id index entries. Their producers were never
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
    put_counters(&mut batch, stats);
    batch.insert(meta_key("layout"), LAYOUT.to_be_bytes().to_vec());
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
