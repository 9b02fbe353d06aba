//! Compaction: the outbox's live entries copied into a fresh sled store, which then replaces the
//! old one, so the data dir shrinks back once a backlog has drained (docs/DESIGN.md §6).
//!
//! sled 0.34 never gives a drained store's space back: its cleaner rewrites a log segment only
//! once at most half of it is live, and truncates the file only when its tail segments are free,
//! so after fill/drain cycles the files keep most of their largest size (issue 9 measured
//! 37.5 MiB after the first drain of 1M events and 58 MiB after the tenth). A fresh store holding
//! only what is live is the one way to get that space back.
//!
//! Where the store lives (`super::location`): in the data dir itself (`db`, `conf`, `snap.*`,
//! `blobs/`: every store before its first compaction) or in `<data_dir>/store-<n>/`, named by
//! the file `<data_dir>/CURRENT`. A swap is safe at any power cut:
//! 1. remove what an earlier, interrupted swap left; create `store-<n+1>/`, copy the outbox
//!    tree into it, flush it with [`crate::durable::FsSync`] and fsync the data dir;
//! 2. write `CURRENT.tmp`, fsync it, rename it over `CURRENT`, fsync the data dir: the commit
//!    point (before it the old store is live and the new one is removed at the next open;
//!    after it the new one is live, and is complete);
//! 3. drop the old store and remove its files, then fsync the data dir (what a cut leaves of
//!    them is removed at the next open, by `location::live_dir`).

use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use super::error::OutboxError;
use super::location::{
    CURRENT_FILE, CURRENT_TMP, STORE_PREFIX, remove_stale, store_bytes, store_number,
};
use super::stats::OutboxStats;
use super::store::Store;

/// Backlog at or under which a compaction may run, bytes (the outbox budget's count): the copy
/// is at most this much, so the writer pauses for milliseconds, not seconds.
pub const COMPACT_BACKLOG_MAX: u64 = 1024 * 1024;
/// A store is compacted again only once its log is this many times larger than what the last
/// compaction copied (a store whose live entries are mostly remembered ids is not copied over
/// and over).
const REGROWTH: u64 = 4;
/// Most keys one sled batch of the copy carries.
const COPY_BATCH_KEYS: usize = 256;

/// When to compact, and how many swaps ran since the outbox was opened.
#[derive(Debug)]
pub(super) struct Compaction {
    /// `buffer.compact_min_bytes`: the smallest store compacted (0: never).
    min_bytes: u64,
    /// Bytes (keys and values) the last swap copied (0 before the first).
    copied_last: u64,
    /// Swaps since the outbox was opened.
    pub(super) count: u64,
}

impl Compaction {
    pub(super) fn new(min_bytes: u64) -> Self {
        Self {
            min_bytes,
            copied_last: 0,
            count: 0,
        }
    }

    /// The store's log length when a store holding a backlog of `backlog_bytes` is worth
    /// swapping now, else `None`; `log_bytes` (a stat) is called only once the backlog is small
    /// enough, not on every ack.
    pub(super) fn due(&self, backlog_bytes: u64, log_bytes: impl FnOnce() -> u64) -> Option<u64> {
        if self.min_bytes == 0 || backlog_bytes > COMPACT_BACKLOG_MAX {
            return None;
        }
        let log = log_bytes();
        (log >= self.min_bytes && log >= self.copied_last.saturating_mul(REGROWTH)).then_some(log)
    }

    /// Records a swap that copied `bytes` of keys and values.
    pub(super) fn done(&mut self, bytes: u64) {
        self.copied_last = bytes;
        self.count += 1;
    }
}

/// Steps 1 and 2 of a swap (module docs): copies `from`'s outbox tree into a fresh store in the
/// data dir and makes it the live one. Returns the new store and the bytes (keys and values)
/// copied. The caller then drops `from` and calls [`finish`].
///
/// # Errors
/// [`OutboxError::Storage`] from sled or the filesystem (a full disk, say), before the commit
/// point: the old store is then still the live one, and what the swap wrote is removed by the
/// next swap or open. Once `CURRENT` is renamed over, the new store is returned.
pub(super) fn swap(
    data_dir: &Path,
    from: &Store,
    cache_bytes: u64,
) -> Result<(Store, u64), OutboxError> {
    let io = |e: io::Error| OutboxError::Storage(e.into());
    remove_stale(data_dir, &from.dir).map_err(io)?;
    let number = from
        .dir
        .file_name()
        .and_then(|n| store_number(&n.to_string_lossy()))
        .unwrap_or(0)
        + 1;
    let name = format!("{STORE_PREFIX}{number}");
    let to_dir = data_dir.join(&name);
    let (db, sync) = crate::durable::open(&to_dir, cache_bytes)?;
    let tree = db.open_tree(super::store::TREE)?;
    let mut batch = sled::Batch::default();
    let (mut keys, mut copied) = (0, 0u64);
    for entry in from.tree.iter() {
        let (key, value) = entry?;
        copied += (key.len() + value.len()) as u64;
        batch.insert(key, value);
        keys += 1;
        if keys % COPY_BATCH_KEYS == 0 {
            tree.apply_batch(std::mem::take(&mut batch))?;
        }
    }
    tree.apply_batch(batch)?;
    // Blocking: a swap is rare and its flush is one small store's.
    sync.flush_blocking(&db)?;
    File::open(data_dir)
        .and_then(|d| d.sync_all())
        .map_err(io)?;
    let tmp = data_dir.join(CURRENT_TMP);
    let mut file = File::create(&tmp).map_err(io)?;
    file.write_all(format!("{name}\n").as_bytes())
        .and_then(|()| file.sync_all())
        .map_err(io)?;
    fs::rename(&tmp, data_dir.join(CURRENT_FILE)).map_err(io)?;
    // Committed: from here the new store is the live one on disk, and the caller must switch
    // to it whatever happens. A failed fsync of the rename is only logged: `finish` syncs the
    // data dir again when it removes the old store.
    if let Err(e) = File::open(data_dir).and_then(|d| d.sync_all()) {
        log::warn!(error:% = e; "syncing the data dir after switching to the compacted store failed");
    }
    let store = Store {
        db,
        sync,
        tree,
        dir: to_dir,
    };
    Ok((store, copied))
}

/// What [`compact_offline`] did.
#[derive(Debug, serde::Serialize)]
pub struct Compacted {
    /// The store's files before, bytes.
    pub before_bytes: u64,
    /// The fresh store's files, bytes.
    pub after_bytes: u64,
    /// The fresh store's directory.
    pub store: PathBuf,
    /// Its counters (the same as before: a swap moves no seq).
    pub stats: OutboxStats,
}

/// Compacts the outbox in `data_dir` now, whatever its size and backlog (`edge-relay
/// compact`, with the daemon stopped): the same swap the writer runs when one is due.
///
/// # Errors
/// As [`super::Outbox::open`] (no store, the daemon holds the lock, damage), or the swap's
/// [`OutboxError::Storage`]; on an error the old store is still the live one.
pub fn compact_offline(data_dir: &Path, cache_bytes: u64) -> Result<Compacted, OutboxError> {
    let (store, stats) = Store::open(data_dir, cache_bytes)?;
    let before_bytes = store_bytes(&store.dir);
    let (new, _) = swap(data_dir, &store, cache_bytes)?;
    let live = new.dir.clone();
    drop((store, new));
    finish(data_dir, &live).map_err(|e| OutboxError::Storage(e.into()))?;
    Ok(Compacted {
        before_bytes,
        after_bytes: store_bytes(&live),
        store: live,
        stats,
    })
}

/// Step 3 of a swap: removes the old store's files, now that `live` is the live store. A
/// reader still holding the old tree reads on from its open files until it lets go.
///
/// # Errors
/// The filesystem's; what is left is removed by the next swap or open.
pub(super) fn finish(data_dir: &Path, live: &Path) -> io::Result<()> {
    remove_stale(data_dir, live)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn due_only_for_a_large_store_with_a_small_backlog() {
        let mut c = Compaction::new(16 << 20);
        assert_eq!(c.due(0, || 16 << 20), Some(16 << 20));
        assert_eq!(c.due(0, || (16 << 20) - 1), None, "under the minimum");
        let unread = || panic!("the log is not read while the backlog is large");
        assert_eq!(
            c.due(COMPACT_BACKLOG_MAX + 1, unread),
            None,
            "backlog too large"
        );
        c.done(10 << 20);
        assert_eq!(c.due(0, || 39 << 20), None, "not yet 4x the last result");
        assert_eq!(c.due(0, || 40 << 20), Some(40 << 20));
        assert_eq!(
            Compaction::new(0).due(0, || u64::MAX),
            None,
            "0 turns it off"
        );
    }
}
