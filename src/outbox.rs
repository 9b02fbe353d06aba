//! The sled outbox (docs/DESIGN.md §4-§6): durable append with group commit, batches after an acked seq, acks, bounds.
//!
//! Layout: one sled tree, keys prefixed by kind, because a sled `Batch` is atomic only within one
//! tree and every commit must move events, ids and counters together:
//! - `c` + first seq (u64 BE) + piece (u16 BE) → a chunk: the events of one group commit in
//!   their encoded wire form, split into pieces of at most 1 KiB so that sled never writes a
//!   blob file and its page cache stays small ([`chunk`]);
//! - `i` + id (16 bytes) → seq (u64 BE): idempotency, for producer-supplied ids only;
//! - `s` + seq (u64 BE) → id: the same entries by seq, so that rollback and pruning walk a range;
//! - `m` + name → meta value (`stream` UUID, `layout`, u64 BE counters).
//!
//! Acks and `drop_oldest` delete whole chunks; a chunk the acked seq is inside stays until its last
//! event is acknowledged. Writes go through the single [`writer::Writer`] task; reads
//! (`batch_after`, `stats`) go to sled directly but never past the durable seq, so nothing
//! un-fsynced ever leaves the gateway. A store of the first layout (one key per event) is
//! migrated at open (`recovery`). Once a backlog has drained, the writer swaps a large store for
//! a fresh copy of what is live (`compact`), so the disk comes back.

pub mod chunk;
mod command;
mod compact;
mod config;
mod encoded;
mod error;
mod keys;
mod location;
mod recovery;
mod stats;
mod store;
mod writer;

use std::path::Path;
use std::sync::{Arc, PoisonError, RwLock};

use tokio::sync::{mpsc, oneshot, watch};

use crate::contract::Gap;
use crate::event::{Event, NewEvent, now_rfc3339};

use command::Command;
pub use command::{Appended, COMMAND_QUEUE};
pub use compact::{COMPACT_BACKLOG_MAX, Compacted, compact_offline};
pub use config::OutboxConfig;
use encoded::Encoded;
pub use error::OutboxError;
pub use location::{CURRENT_FILE, STORE_PREFIX, holds_store, store_bytes};
pub use stats::OutboxStats;
pub use writer::Writer;

/// Cheap, cloneable handle to the outbox: appends and acks go to the writer, reads go to sled.
#[derive(Clone)]
pub struct Outbox {
    /// The store's tree; `None` while the writer reopens the store after an I/O error.
    tree: Arc<RwLock<Option<sled::Tree>>>,
    commands: mpsc::Sender<Command>,
    stats: watch::Receiver<OutboxStats>,
}

impl Outbox {
    /// Opens (or creates, with a new stream UUID) the outbox in `dir`.
    ///
    /// Returns the handle and the writer task, which the caller runs with
    /// `writer.run(shutdown)`; until it runs, appends and acks wait.
    ///
    /// # Errors
    /// sled cannot open the directory (permissions, lock held by another process, corruption).
    pub fn open(dir: &Path, config: OutboxConfig) -> Result<(Outbox, Writer), OutboxError> {
        let (store, stats) = store::Store::open(dir, config.cache_bytes)?;
        let tree = Arc::new(RwLock::new(Some(store.tree.clone())));
        let (stats_tx, stats_rx) = watch::channel(stats);
        let (tx, rx) = mpsc::channel(COMMAND_QUEUE);
        let w = Writer::new(dir, store, tree.clone(), config, stats, rx, stats_tx);
        Ok((
            Outbox {
                tree,
                commands: tx,
                stats: stats_rx,
            },
            w,
        ))
    }

    /// Commits events durably (fsync) and returns their seqs; all or nothing per call.
    ///
    /// # Errors
    /// [`OutboxError::Full`] (policy `reject`, or the call alone exceeds `max_bytes`),
    /// [`OutboxError::Closed`] during shutdown, [`OutboxError::Storage`] on I/O failure.
    pub async fn append(&self, events: Vec<NewEvent>) -> Result<Appended, OutboxError> {
        // Encoded here, in the caller's task, so that the single writer only adds the seq. Each
        // submission is dropped once encoded, not held beside its encoding until the fsync.
        let now = now_rfc3339();
        let events = events
            .into_iter()
            .map(|event| Encoded::new(&event, &now))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| OutboxError::Corrupt {
                seq: 0,
                reason: format!("encoding an event: {e}"),
            })?;
        let (reply, rx) = oneshot::channel();
        self.commands
            .send(Command::Append { events, reply })
            .await
            .map_err(|_| OutboxError::Closed)?;
        rx.await.map_err(|_| OutboxError::Closed)?
    }

    /// Records that the upstream stored everything up to `upto`; deletes those events.
    /// A lower or equal `upto` than the current acked seq is a no-op; `upto` is capped at
    /// [`OutboxStats::sent_seq`], so nothing never sent is ever deleted.
    ///
    /// # Errors
    /// [`OutboxError::Closed`] or [`OutboxError::Storage`].
    pub async fn ack(&self, upto: u64) -> Result<(), OutboxError> {
        let (reply, rx) = oneshot::channel();
        self.commands
            .send(Command::Ack { upto, reply })
            .await
            .map_err(|_| OutboxError::Closed)?;
        rx.await.map_err(|_| OutboxError::Closed)?
    }

    /// Records durably that events up to `sent` (at most the last stored seq) are about to be
    /// sent upstream, and, in the same commit (one fsync), the previous batch's ack `acked`
    /// when given (as [`Outbox::ack`]). Call before sending them. A `sent` lower than the
    /// current acked seq leaves it as it is.
    ///
    /// # Errors
    /// [`OutboxError::Closed`] or [`OutboxError::Storage`].
    pub async fn progress(&self, acked: Option<u64>, sent: u64) -> Result<(), OutboxError> {
        let (reply, rx) = oneshot::channel();
        self.commands
            .send(Command::Progress { acked, sent, reply })
            .await
            .map_err(|_| OutboxError::Closed)?;
        rx.await.map_err(|_| OutboxError::Closed)?
    }

    /// [`Outbox::progress`] without an ack.
    ///
    /// # Errors
    /// As [`Outbox::progress`].
    pub async fn mark_sent(&self, sent: u64) -> Result<(), OutboxError> {
        self.progress(None, sent).await
    }

    /// The store's tree (a cheap handle), unless the writer is reopening the store.
    fn tree(&self) -> Result<sled::Tree, OutboxError> {
        self.tree
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
            .ok_or_else(|| OutboxError::Reopening(None))
    }

    /// Counters as of the last fsync.
    pub fn stats(&self) -> OutboxStats {
        *self.stats.borrow()
    }

    /// A receiver that changes after every commit (to wait for new events without polling).
    pub fn watch(&self) -> watch::Receiver<OutboxStats> {
        self.stats.clone()
    }

    /// Up to `max_events` durable events with `seq > after`, in seq order, stopping before
    /// `max_bytes` of encoded JSON would be exceeded (the first event always goes).
    ///
    /// # Errors
    /// [`OutboxError::Storage`], or [`OutboxError::Corrupt`] for an undecodable record.
    pub fn batch_after(
        &self,
        after: u64,
        max_events: usize,
        max_bytes: usize,
    ) -> Result<Vec<Event>, OutboxError> {
        let stats = self.stats();
        let mut out = Vec::new();
        let limits = (max_events, max_bytes);
        self.walk_before(
            after.max(stats.acked_seq),
            stats.next_seq,
            limits,
            |seq, encoded| {
                let event = serde_json::from_slice(encoded).map_err(|e| OutboxError::Corrupt {
                    seq,
                    reason: e.to_string(),
                })?;
                out.push(event);
                Ok(())
            },
        )?;
        Ok(out)
    }

    /// What to deliver after `cursor`: the events [`Outbox::batch_after`] would give, as they
    /// are stored, and the gap of missing seqs between `cursor` and them (dropped by
    /// `drop_oldest`, or acknowledged before an upstream lost them), or up to the durable end
    /// when no event is left.
    ///
    /// # Errors
    /// [`OutboxError::Storage`], or [`OutboxError::Corrupt`] for a chunk that does not decode.
    pub fn next_delivery(
        &self,
        acked_seq: u64,
        max_events: usize,
        max_bytes: usize,
    ) -> Result<Delivery, OutboxError> {
        // One read of the durable end for both: a commit published between two reads would
        // make the events it just stored look like a gap (reported, then skipped).
        self.delivery_before(acked_seq, self.stats(), max_events, max_bytes)
    }

    /// [`Outbox::next_delivery`] as of the counters `stats` (its `next_seq` is the durable
    /// end; events at or below its `acked_seq` are gone even where their chunk is still stored).
    fn delivery_before(
        &self,
        acked_seq: u64,
        stats: OutboxStats,
        max_events: usize,
        max_bytes: usize,
    ) -> Result<Delivery, OutboxError> {
        let durable_end = stats.next_seq;
        let mut delivery = Delivery::default();
        let mut first_seq = None;
        let after = acked_seq.max(stats.acked_seq);
        self.walk_before(
            after,
            durable_end,
            (max_events, max_bytes),
            |seq, encoded| {
                if first_seq.is_some() {
                    delivery.ndjson.push(b'\n');
                }
                first_seq.get_or_insert(seq);
                delivery.ndjson.extend_from_slice(encoded);
                delivery.count += 1;
                delivery.last_seq = Some(seq);
                Ok(())
            },
        )?;
        let gap_end = first_seq.map_or(durable_end.saturating_sub(1), |seq| seq - 1);
        delivery.gap = (gap_end > acked_seq).then_some(Gap {
            dropped_from: acked_seq + 1,
            dropped_to: gap_end,
        });
        Ok(delivery)
    }

    /// Hands `(seq, encoded JSON)` of up to `limits.0` events with `after < seq < durable_end`
    /// to `each`, in seq order, stopping before `limits.1` bytes of JSON would be exceeded
    /// (the first event always goes).
    ///
    /// A chunk found incomplete is one `drop_oldest` is deleting while this reads (only the
    /// oldest chunks are ever deleted): it is skipped, and its seqs show as a gap.
    fn walk_before(
        &self,
        after: u64,
        durable_end: u64,
        (max_events, max_bytes): (usize, usize),
        mut each: impl FnMut(u64, &[u8]) -> Result<(), OutboxError>,
    ) -> Result<(), OutboxError> {
        let (mut count, mut bytes) = (0usize, 0usize);
        if after.saturating_add(1) >= durable_end {
            return Ok(());
        }
        let tree = self.tree()?;
        'chunks: for stored in chunk::from_seq(&tree, after + 1) {
            let stored = stored?;
            if stored.first_seq >= durable_end {
                break;
            }
            let events = match stored.events() {
                Ok(events) => events,
                Err(chunk::ChunkError::Incomplete { .. }) if count == 0 => continue,
                Err(e) => {
                    return Err(OutboxError::Corrupt {
                        seq: stored.first_seq,
                        reason: e.to_string(),
                    });
                }
            };
            for (seq, encoded) in events {
                if seq <= after {
                    continue;
                }
                if seq >= durable_end
                    || (count > 0 && (count >= max_events || bytes + encoded.len() > max_bytes))
                {
                    break 'chunks;
                }
                bytes += encoded.len();
                count += 1;
                each(seq, encoded)?;
            }
        }
        Ok(())
    }
}

/// The relay's next `edge_ingest` content, from [`Outbox::next_delivery`]: the events as
/// they are stored, so nothing is decoded on the way to the upstream.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Delivery {
    /// The events' JSON, one per line (`\n` between, none at the end), in seq order; empty
    /// when there are none.
    pub ndjson: Vec<u8>,
    /// Events in `ndjson`.
    pub count: usize,
    /// Seq of the last event; `None` when there are none.
    pub last_seq: Option<u64>,
    /// Missing seqs right after the acked seq, before the events; `None` when nothing is missing.
    pub gap: Option<Gap>,
}

#[cfg(test)]
mod layout_tests;
#[cfg(test)]
mod tests;
