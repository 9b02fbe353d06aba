//! The outbox's single writer: group commit (apply batches, one fsync, then answer everyone).
//
// Design: commands are taken from a bounded queue, up to `GROUP_MAX_EVENTS` events per group.
// Each command is applied as its own sled batch (atomic per command) in chunks of at most
// `SLED_BATCH_MAX_EVENTS` so a large request never builds one huge batch (RSS, DESIGN §4); then
// one `flush_async` makes the whole group durable and only then are the producers answered and
// the durable seq published to readers.

use std::collections::HashMap;

use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::{
    Appended, Command, EVENT, ID, OutboxConfig, OutboxError, OutboxStats, decode_u64, event_key,
    id_key, meta_key,
};
use crate::config::Overflow;
use crate::event::{NewEvent, now_rfc3339};

/// Most events applied in one sled batch.
pub const SLED_BATCH_MAX_EVENTS: usize = 128;
/// Most events in one group commit (one fsync).
pub const GROUP_MAX_EVENTS: usize = 1024;

/// The writer task; run it with [`Writer::run`].
pub struct Writer {
    db: sled::Db,
    tree: sled::Tree,
    config: OutboxConfig,
    stats: OutboxStats,
    ids_stored: u64,
    commands: mpsc::Receiver<Command>,
    published: watch::Sender<OutboxStats>,
}

enum Reply {
    Append(
        oneshot::Sender<Result<Appended, OutboxError>>,
        Result<Appended, OutboxError>,
    ),
    Ack(
        oneshot::Sender<Result<(), OutboxError>>,
        Result<(), OutboxError>,
    ),
}

/// Reads the counters, creating a new stream on an empty store.
pub(super) fn load_or_init(tree: &sled::Tree) -> Result<OutboxStats, OutboxError> {
    let get = |name: &str| -> Result<Option<u64>, OutboxError> {
        Ok(tree.get(meta_key(name))?.and_then(|v| decode_u64(&v)))
    };
    if let Some(stream) = tree.get(meta_key("stream"))? {
        let stream = Uuid::from_slice(&stream).map_err(|e| OutboxError::Corrupt {
            seq: 0,
            reason: format!("stream id: {e}"),
        })?;
        return Ok(OutboxStats {
            stream,
            next_seq: get("next_seq")?.unwrap_or(1),
            acked_seq: get("acked_seq")?.unwrap_or(0),
            backlog_events: get("backlog_events")?.unwrap_or(0),
            backlog_bytes: get("backlog_bytes")?.unwrap_or(0),
            dropped_events: get("dropped_events")?.unwrap_or(0),
        });
    }
    let stats = OutboxStats {
        stream: Uuid::now_v7(),
        next_seq: 1,
        ..OutboxStats::default()
    };
    let mut batch = sled::Batch::default();
    batch.insert(meta_key("stream"), stats.stream.as_bytes().to_vec());
    put_counters(&mut batch, &stats);
    tree.apply_batch(batch)?;
    tree.flush()?;
    log::info!(stream:% = stats.stream; "created a new outbox stream");
    Ok(stats)
}

fn put_counters(batch: &mut sled::Batch, s: &OutboxStats) {
    for (name, value) in [
        ("next_seq", s.next_seq),
        ("acked_seq", s.acked_seq),
        ("backlog_events", s.backlog_events),
        ("backlog_bytes", s.backlog_bytes),
        ("dropped_events", s.dropped_events),
    ] {
        batch.insert(meta_key(name), value.to_be_bytes().to_vec());
    }
}

impl Writer {
    pub(super) fn new(
        db: sled::Db,
        tree: sled::Tree,
        config: OutboxConfig,
        stats: OutboxStats,
        commands: mpsc::Receiver<Command>,
        published: watch::Sender<OutboxStats>,
    ) -> Self {
        let ids_stored = tree.scan_prefix([ID]).count() as u64;
        Self {
            db,
            tree,
            config,
            stats,
            ids_stored,
            commands,
            published,
        }
    }

    /// Runs until `shutdown`; then refuses new commands, commits the queued ones and returns.
    pub async fn run(mut self, shutdown: CancellationToken) {
        let mut closing = false;
        loop {
            let cmd = tokio::select! {
                biased;
                () = shutdown.cancelled(), if !closing => {
                    // recv() still yields what is queued, then None.
                    self.commands.close();
                    closing = true;
                    continue;
                }
                cmd = self.commands.recv() => cmd,
            };
            match cmd {
                Some(cmd) => self.commit_group(cmd).await,
                None => break,
            }
        }
        if let Err(e) = self.db.flush_async().await {
            log::error!(error:% = e; "final outbox flush failed");
        }
        log::info!(next_seq = self.stats.next_seq, acked_seq = self.stats.acked_seq; "outbox writer stopped");
    }

    async fn commit_group(&mut self, first: Command) {
        let mut replies = Vec::new();
        let mut events = 0usize;
        let mut next = Some(first);
        while let Some(cmd) = next.take() {
            events += match &cmd {
                Command::Append { events, .. } => events.len().max(1),
                Command::Ack { .. } => 1,
            };
            replies.push(self.apply(cmd));
            if events < GROUP_MAX_EVENTS {
                next = self.commands.try_recv().ok();
            }
        }
        let flushed = self.db.flush_async().await;
        if let Err(e) = &flushed {
            log::error!(error:% = e; "outbox fsync failed; answering the group with an error");
        } else {
            self.published.send_replace(self.stats);
        }
        for reply in replies {
            match (reply, &flushed) {
                (Reply::Append(tx, r), Ok(_)) => drop(tx.send(r)),
                (Reply::Ack(tx, r), Ok(_)) => drop(tx.send(r)),
                (Reply::Append(tx, _), Err(e)) => drop(tx.send(Err(e.clone().into()))),
                (Reply::Ack(tx, _), Err(e)) => drop(tx.send(Err(e.clone().into()))),
            }
        }
    }

    fn apply(&mut self, cmd: Command) -> Reply {
        match cmd {
            Command::Append { events, reply } => {
                let r = self.append(events);
                if let Err(e) = &r {
                    log::warn!(error:% = e; "append refused");
                }
                Reply::Append(reply, r)
            }
            Command::Ack { upto, reply } => Reply::Ack(reply, self.ack(upto)),
        }
    }

    fn append(&mut self, events: Vec<NewEvent>) -> Result<Appended, OutboxError> {
        let now = now_rfc3339();
        let mut staged = self.stats;
        let mut fresh: HashMap<Uuid, u64> = HashMap::new();
        let mut assigned = Vec::with_capacity(events.len());
        let mut records = Vec::with_capacity(events.len());
        let mut needed = 0u64;
        for new in events {
            if let Some(id) = new.id {
                let known = match fresh.get(&id) {
                    Some(seq) => Some(*seq),
                    None => self.tree.get(id_key(&id))?.and_then(|v| decode_u64(&v)),
                };
                if let Some(seq) = known {
                    assigned.push((seq, id));
                    continue;
                }
            }
            let id = new.id.unwrap_or_else(Uuid::now_v7);
            let seq = staged.next_seq;
            staged.next_seq += 1;
            let event = new.commit(seq, id, &now);
            let value = serde_json::to_vec(&event).map_err(|e| OutboxError::Corrupt {
                seq,
                reason: format!("encoding: {e}"),
            })?;
            needed += record_bytes(value.len());
            fresh.insert(id, seq);
            assigned.push((seq, id));
            records.push((seq, id, value));
        }
        let mut drops = Vec::new();
        if staged.backlog_bytes + needed > self.config.max_bytes {
            let full = OutboxError::Full {
                needed,
                used: staged.backlog_bytes,
                max: self.config.max_bytes,
            };
            if self.config.overflow == Overflow::Reject || needed > self.config.max_bytes {
                return Err(full);
            }
            let mut freed = 0u64;
            for item in self.tree.scan_prefix([EVENT]) {
                let (key, value) = item?;
                freed += record_bytes(value.len());
                drops.push(decode_u64(&key[1..]).unwrap_or(0));
                if staged.backlog_bytes - freed + needed <= self.config.max_bytes {
                    break;
                }
            }
            staged.backlog_bytes -= freed;
            staged.backlog_events -= drops.len() as u64;
            staged.dropped_events += drops.len() as u64;
        }
        staged.backlog_bytes += needed;
        staged.backlog_events += records.len() as u64;
        // Deletions first, then records in chunks; the last chunk carries the counters.
        let mut ops = drops
            .iter()
            .map(|seq| (event_key(*seq).to_vec(), None))
            .chain(records.into_iter().flat_map(|(seq, id, value)| {
                [
                    (event_key(seq).to_vec(), Some(value)),
                    (id_key(&id).to_vec(), Some(seq.to_be_bytes().to_vec())),
                ]
            }))
            .peekable();
        let mut new_ids = 0u64;
        while ops.peek().is_some() {
            let mut batch = sled::Batch::default();
            for (key, value) in ops.by_ref().take(2 * SLED_BATCH_MAX_EVENTS) {
                match value {
                    Some(v) => {
                        new_ids += u64::from(key[0] == ID);
                        batch.insert(key, v);
                    }
                    None => batch.remove(key),
                }
            }
            if ops.peek().is_none() {
                put_counters(&mut batch, &staged);
            }
            self.tree.apply_batch(batch)?;
        }
        if let (Some(first), Some(last)) = (drops.first(), drops.last()) {
            log::warn!(dropped_from = first, dropped_to = last, dropped = drops.len();
                "buffer full: dropped the oldest undelivered events (overflow = drop_oldest)");
        }
        self.ids_stored += new_ids;
        self.stats = staged;
        Ok(Appended { assigned })
    }

    /// Deletes acknowledged events in chunks of [`SLED_BATCH_MAX_EVENTS`], each chunk carrying
    /// the cursor and counters as of its last event: one big sled batch keeps every node
    /// version it replaces alive until it ends (hundreds of MB of RSS for a few thousand keys).
    fn ack(&mut self, upto: u64) -> Result<(), OutboxError> {
        let upto = upto.min(self.stats.next_seq.saturating_sub(1));
        if upto <= self.stats.acked_seq {
            return Ok(());
        }
        let mut staged = self.stats;
        let mut batch = sled::Batch::default();
        let mut in_batch = 0;
        for item in self
            .tree
            .range(event_key(staged.acked_seq + 1)..=event_key(upto))
        {
            let (key, value) = item?;
            staged.backlog_bytes -= record_bytes(value.len()).min(staged.backlog_bytes);
            staged.backlog_events = staged.backlog_events.saturating_sub(1);
            staged.acked_seq = decode_u64(&key[1..]).unwrap_or(staged.acked_seq);
            batch.remove(key);
            in_batch += 1;
            if in_batch == SLED_BATCH_MAX_EVENTS {
                put_counters(&mut batch, &staged);
                self.tree.apply_batch(std::mem::take(&mut batch))?;
                self.stats = staged;
                in_batch = 0;
            }
        }
        staged.acked_seq = upto;
        put_counters(&mut batch, &staged);
        self.tree.apply_batch(batch)?;
        self.stats = staged;
        self.prune_ids()
    }

    /// Forgets ids of events delivered more than `id_retention` seqs ago; runs when the id
    /// index has grown to twice what the retention needs, so its cost is amortised, and
    /// deletes in chunks of [`SLED_BATCH_MAX_EVENTS`] for the same RSS reason as [`Self::ack`].
    fn prune_ids(&mut self) -> Result<(), OutboxError> {
        let keep = self.stats.backlog_events + self.config.id_retention;
        if self.ids_stored <= 2 * keep.max(1024) {
            return Ok(());
        }
        let horizon = self
            .stats
            .acked_seq
            .saturating_sub(self.config.id_retention);
        let mut batch = sled::Batch::default();
        let (mut in_batch, mut removed) = (0usize, 0u64);
        for item in self.tree.scan_prefix([ID]) {
            let (key, value) = item?;
            if decode_u64(&value).is_some_and(|seq| seq <= horizon) {
                batch.remove(key);
                in_batch += 1;
                if in_batch == SLED_BATCH_MAX_EVENTS {
                    self.tree.apply_batch(std::mem::take(&mut batch))?;
                    removed += in_batch as u64;
                    in_batch = 0;
                }
            }
        }
        self.tree.apply_batch(batch)?;
        removed += in_batch as u64;
        self.ids_stored -= removed.min(self.ids_stored);
        log::debug!(removed = removed; "pruned idempotency ids");
        Ok(())
    }
}

/// Bytes one event occupies in the budget: its key, its id index entry and its value.
fn record_bytes(value_len: usize) -> u64 {
    (9 + 17 + 8 + value_len) as u64
}
