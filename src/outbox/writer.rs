//! The outbox's single writer: group commit (apply batches, one fsync, then answer everyone).
//
// Design: commands are taken from a bounded queue, up to `GROUP_MAX_EVENTS` events per group,
// and applied as sled batches; then one fsync (`FsSync::flush`) makes the whole group durable
// and only then are the producers answered and the durable seq published to readers.
//
// No sled batch holds more than `SLED_BATCH_MAX_EVENTS` events: sled 0.34 keeps every tree node
// version a batch replaces alive until the batch ends, and the heap does not shrink back (a 1M
// event fill in batches of 1000 events peaked at 1.1 GB RSS, in batches of 100 at 55 MB). So
// every write is chunked, and every chunk leaves a state that `load_or_init` can open:
// - an append writes its records in chunks and its counters with the last one; chunks of an
//   append whose last chunk did not survive a crash lie past `next_seq` and are rolled back at
//   open, so an append stays all or nothing (and its ids are not left claiming unstored events);
// - an ack, or a drop under `drop_oldest`, deletes events in chunks that each carry the counters
//   and cursor as of that chunk, plus a "retired" record with the deleted events' ids;
// - id pruning deletes the ids of retired records once they are `id_retention` seqs behind the
//   cursor, a few chunks per ack, so its work follows the acks instead of scanning the index.

use std::collections::HashMap;

use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::{
    Appended, Command, ID, OutboxConfig, OutboxError, OutboxStats, decode_u64, event_key, id_key,
    meta_key, retired_key,
};
use crate::config::Overflow;
use crate::durable::FsSync;
use crate::event::{NewEvent, now_rfc3339};
use crate::heartbeat::Heartbeat;

/// Most events applied in one sled batch.
pub const SLED_BATCH_MAX_EVENTS: usize = 128;
/// Most events in one group commit (one fsync).
pub const GROUP_MAX_EVENTS: usize = 1024;
/// Most retired-id records (of up to `SLED_BATCH_MAX_EVENTS` ids) one ack prunes; acks retire
/// about as many, so this is the catch-up rate, and it bounds the writer's pause.
const PRUNE_RECORDS_PER_ACK: usize = 16;
/// Most id index entries one ack examines in a full-index prune pass (only needed for ids that
/// have no retired record: stores written before those records existed).
const PRUNE_SCAN_PER_ACK: usize = 8192;

/// The writer task; run it with [`Writer::run`].
pub struct Writer {
    db: sled::Db,
    sync: FsSync,
    tree: sled::Tree,
    config: OutboxConfig,
    stats: OutboxStats,
    ids_stored: u64,
    /// Where the running full-index prune pass continues (`None`: no pass running).
    prune_from: Option<Vec<u8>>,
    commands: mpsc::Receiver<Command>,
    published: watch::Sender<OutboxStats>,
    heartbeat: Heartbeat,
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
        let stats = OutboxStats {
            stream,
            next_seq: get("next_seq")?.unwrap_or(1),
            acked_seq: get("acked_seq")?.unwrap_or(0),
            backlog_events: get("backlog_events")?.unwrap_or(0),
            backlog_bytes: get("backlog_bytes")?.unwrap_or(0),
            dropped_events: get("dropped_events")?.unwrap_or(0),
        };
        roll_back_partial_append(tree, stats.next_seq)?;
        return Ok(stats);
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

/// Deletes the records (and their ids) of an append whose last chunk, the one with the counters,
/// was lost in a crash: they lie at or past `next_seq`. Its producer was never answered.
fn roll_back_partial_append(tree: &sled::Tree, next_seq: u64) -> Result<(), OutboxError> {
    let orphans = tree
        .range(event_key(next_seq)..=event_key(u64::MAX))
        .collect::<Result<Vec<_>, _>>()?;
    if orphans.is_empty() {
        return Ok(());
    }
    for chunk in orphans.chunks(SLED_BATCH_MAX_EVENTS) {
        let mut batch = sled::Batch::default();
        for (key, value) in chunk {
            let seq = decode_u64(&key[1..]);
            if let Some(id) = event_id(value) {
                let indexed = tree.get(id_key(&id))?.and_then(|v| decode_u64(&v));
                if indexed.is_some() && indexed == seq {
                    batch.remove(&id_key(&id)[..]);
                }
            }
            batch.remove(key);
        }
        tree.apply_batch(batch)?;
    }
    tree.flush()?;
    log::warn!(next_seq = next_seq, events = orphans.len();
        "rolled back the records of an append that a crash interrupted (never acknowledged)");
    Ok(())
}

/// The `id` of a stored event record, without decoding the rest.
fn event_id(value: &[u8]) -> Option<Uuid> {
    #[derive(serde::Deserialize)]
    struct IdOnly {
        id: Uuid,
    }
    serde_json::from_slice::<IdOnly>(value).ok().map(|e| e.id)
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
        sync: FsSync,
        tree: sled::Tree,
        config: OutboxConfig,
        stats: OutboxStats,
        commands: mpsc::Receiver<Command>,
        published: watch::Sender<OutboxStats>,
    ) -> Self {
        let ids_stored = tree.scan_prefix([ID]).count() as u64;
        Self {
            db,
            sync,
            tree,
            config,
            stats,
            ids_stored,
            prune_from: None,
            commands,
            published,
            heartbeat: Heartbeat::unwatched("writer"),
        }
    }

    /// Beats `heartbeat` on every turn of the loop (for the systemd watchdog).
    pub fn with_heartbeat(mut self, heartbeat: Heartbeat) -> Self {
        self.heartbeat = heartbeat;
        self
    }

    /// Runs until `shutdown`; then refuses new commands, commits the queued ones and returns.
    pub async fn run(mut self, shutdown: CancellationToken) {
        let mut closing = false;
        loop {
            self.heartbeat.beat();
            let cmd = tokio::select! {
                biased;
                () = shutdown.cancelled(), if !closing => {
                    // recv() still yields what is queued, then None.
                    self.commands.close();
                    closing = true;
                    continue;
                }
                cmd = self.commands.recv() => cmd,
                () = self.heartbeat.tick() => continue,
            };
            match cmd {
                Some(cmd) => self.commit_group(cmd).await,
                None => break,
            }
        }
        if let Err(e) = self.sync.flush(&self.db).await {
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
        let flushed = self.sync.flush(&self.db).await;
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
        if staged.backlog_bytes + needed > self.config.max_bytes {
            let full = OutboxError::Full {
                needed,
                used: staged.backlog_bytes,
                max: self.config.max_bytes,
            };
            if self.config.overflow == Overflow::Reject || needed > self.config.max_bytes {
                return Err(full);
            }
            self.drop_oldest(needed)?;
            staged = OutboxStats {
                next_seq: staged.next_seq,
                ..self.stats
            };
        }
        staged.backlog_bytes += needed;
        staged.backlog_events += records.len() as u64;
        let chunks = records.len().div_ceil(SLED_BATCH_MAX_EVENTS);
        for (i, chunk) in records.chunks(SLED_BATCH_MAX_EVENTS).enumerate() {
            let mut batch = sled::Batch::default();
            for (seq, id, value) in chunk {
                batch.insert(&event_key(*seq)[..], &value[..]);
                batch.insert(&id_key(id)[..], &seq.to_be_bytes()[..]);
            }
            if i + 1 == chunks {
                put_counters(&mut batch, &staged);
            }
            self.tree.apply_batch(batch)?;
        }
        self.ids_stored += records.len() as u64;
        self.stats = staged;
        Ok(Appended { assigned })
    }

    /// `overflow = "drop_oldest"`: deletes the oldest undelivered events until `needed` more
    /// bytes fit, counting them as dropped (the relay reports them upstream as a gap).
    fn drop_oldest(&mut self, needed: u64) -> Result<(), OutboxError> {
        let (mut first, mut last) = (None, 0);
        let mut dropped = 0usize;
        while self.stats.backlog_bytes + needed > self.config.max_bytes {
            let chunk = self
                .tree
                .range(event_key(self.stats.acked_seq + 1)..=event_key(u64::MAX))
                .take(SLED_BATCH_MAX_EVENTS)
                .collect::<Result<Vec<_>, _>>()?;
            if chunk.is_empty() {
                break;
            }
            let mut staged = self.stats;
            let mut batch = sled::Batch::default();
            let mut retired = Vec::with_capacity(chunk.len() * 16);
            for (key, value) in chunk {
                let seq = decode_u64(&key[1..]).unwrap_or(0);
                staged.backlog_bytes -= record_bytes(value.len()).min(staged.backlog_bytes);
                staged.backlog_events = staged.backlog_events.saturating_sub(1);
                staged.dropped_events += 1;
                if let Some(id) = event_id(&value) {
                    retired.extend_from_slice(id.as_bytes());
                }
                batch.remove(key);
                (first, last, dropped) = (first.or(Some(seq)), seq, dropped + 1);
                if staged.backlog_bytes + needed <= self.config.max_bytes {
                    break;
                }
            }
            if !retired.is_empty() {
                batch.insert(&retired_key(last)[..], retired);
            }
            put_counters(&mut batch, &staged);
            self.tree.apply_batch(batch)?;
            self.stats = staged;
        }
        if let Some(first) = first {
            log::warn!(dropped_from = first, dropped_to = last, dropped = dropped;
                "buffer full: dropped the oldest undelivered events (overflow = drop_oldest)");
        }
        Ok(())
    }

    /// Deletes acknowledged events up to `upto` in chunks of [`SLED_BATCH_MAX_EVENTS`], each
    /// carrying the cursor and counters as of its last event and a retired record of their ids.
    fn ack(&mut self, upto: u64) -> Result<(), OutboxError> {
        let upto = upto.min(self.stats.next_seq.saturating_sub(1));
        while self.stats.acked_seq < upto {
            let chunk = self
                .tree
                .range(event_key(self.stats.acked_seq + 1)..=event_key(upto))
                .take(SLED_BATCH_MAX_EVENTS)
                .collect::<Result<Vec<_>, _>>()?;
            let mut staged = self.stats;
            // A short chunk is the rest of the range, so the cursor goes all the way.
            staged.acked_seq = upto;
            let mut batch = sled::Batch::default();
            let mut retired = Vec::with_capacity(chunk.len() * 16);
            let full = chunk.len() == SLED_BATCH_MAX_EVENTS;
            for (key, value) in chunk {
                staged.backlog_bytes -= record_bytes(value.len()).min(staged.backlog_bytes);
                staged.backlog_events = staged.backlog_events.saturating_sub(1);
                if let Some(id) = event_id(&value) {
                    retired.extend_from_slice(id.as_bytes());
                }
                if full {
                    staged.acked_seq = decode_u64(&key[1..]).unwrap_or(upto);
                }
                batch.remove(key);
            }
            if !retired.is_empty() {
                batch.insert(&retired_key(staged.acked_seq)[..], retired);
            }
            put_counters(&mut batch, &staged);
            self.tree.apply_batch(batch)?;
            self.stats = staged;
        }
        self.prune_ids()
    }

    /// Forgets the ids of events delivered (or dropped) more than `id_retention` seqs ago.
    fn prune_ids(&mut self) -> Result<(), OutboxError> {
        let horizon = self
            .stats
            .acked_seq
            .saturating_sub(self.config.id_retention);
        let mut removed = 0u64;
        for item in self
            .tree
            .range(retired_key(0)..=retired_key(horizon))
            .take(PRUNE_RECORDS_PER_ACK)
        {
            let (key, ids) = item?;
            let mut batch = sled::Batch::default();
            for id in ids.chunks_exact(16) {
                let id_key = [&[ID][..], id].concat();
                // An id forgotten by a full-index pass may since have been stored again.
                let seq = self.tree.get(&id_key)?.and_then(|v| decode_u64(&v));
                if seq.is_some_and(|seq| seq <= horizon) {
                    batch.remove(id_key);
                    removed += 1;
                }
            }
            batch.remove(key);
            self.tree.apply_batch(batch)?;
        }
        self.ids_stored -= removed.min(self.ids_stored);
        self.prune_index(horizon)
    }

    /// Full-index prune for ids that no retired record names (stores written before those
    /// records existed): a pass starts when the index holds twice what the retention needs and
    /// walks it `PRUNE_SCAN_PER_ACK` entries per ack, in small batches.
    fn prune_index(&mut self, horizon: u64) -> Result<(), OutboxError> {
        if self.prune_from.is_none() {
            let keep = self.stats.backlog_events + self.config.id_retention;
            if self.ids_stored <= 2 * keep.max(1024) {
                return Ok(());
            }
            self.prune_from = Some(vec![ID]);
        }
        let from = self.prune_from.take().unwrap_or_else(|| vec![ID]);
        let mut batch = sled::Batch::default();
        let (mut in_batch, mut removed) = (0, 0u64);
        for (scanned, item) in self.tree.range(from..vec![ID + 1]).enumerate() {
            let (key, value) = item?;
            if scanned == PRUNE_SCAN_PER_ACK {
                self.prune_from = Some(key.to_vec());
                break;
            }
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
        log::debug!(removed = removed, done = self.prune_from.is_none(); "pruned idempotency ids");
        Ok(())
    }
}

/// Bytes one event occupies in the budget: its key, its id index entry and its value.
fn record_bytes(value_len: usize) -> u64 {
    (9 + 17 + 8 + value_len) as u64
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use serde_json::json;
    use tokio_util::sync::CancellationToken;
    use uuid::Uuid;

    use super::*;
    use crate::outbox::Outbox;

    fn config(id_retention: u64) -> OutboxConfig {
        OutboxConfig {
            max_bytes: 1 << 30,
            overflow: Overflow::Reject,
            cache_bytes: 1 << 20,
            id_retention,
        }
    }

    fn ev(n: usize, id: Option<Uuid>) -> NewEvent {
        NewEvent {
            id,
            source: format!("s{n}"),
            kind: "sensor".into(),
            time: None,
            data: json!({ "n": n }),
        }
    }

    struct Running {
        outbox: Outbox,
        stop: CancellationToken,
        writer: tokio::task::JoinHandle<()>,
    }

    fn open(dir: &Path, id_retention: u64) -> Running {
        let (outbox, writer) = Outbox::open(dir, config(id_retention)).unwrap();
        let stop = CancellationToken::new();
        let writer = tokio::spawn(writer.run(stop.clone()));
        Running {
            outbox,
            stop,
            writer,
        }
    }

    /// Stops the outbox and opens its raw tree (sled locks the dir until every handle is gone).
    async fn raw(running: Running, dir: &Path) -> sled::Tree {
        running.stop.cancel();
        running.writer.await.unwrap();
        drop(running.outbox);
        sled::open(dir).unwrap().open_tree("outbox").unwrap()
    }

    #[tokio::test]
    async fn large_appends_and_acks_are_chunked_and_ids_forgotten_after_retention() {
        let dir = tempfile::tempdir().unwrap();
        let running = open(dir.path(), 100);
        let outbox = &running.outbox;
        let ids: Vec<Uuid> = (0..1000).map(|_| Uuid::new_v4()).collect();
        let events = ids.iter().enumerate().map(|(n, id)| ev(n, Some(*id)));
        let appended = outbox.append(events.collect()).await.unwrap();
        assert_eq!(appended.assigned.last(), Some(&(1000, ids[999])));
        assert_eq!(outbox.stats().backlog_events, 1000);
        outbox.ack(600).await.unwrap();
        let stats = outbox.stats();
        assert_eq!((stats.acked_seq, stats.backlog_events), (600, 400));
        outbox.ack(1000).await.unwrap();
        let stats = outbox.stats();
        assert_eq!((stats.backlog_events, stats.backlog_bytes), (0, 0));
        // Within the retention window an id still answers with its seq; before it, it is new.
        let again = outbox
            .append(vec![ev(0, Some(ids[950])), ev(1, Some(ids[10]))])
            .await
            .unwrap();
        assert_eq!(again.assigned, [(951, ids[950]), (1001, ids[10])]);

        let tree = raw(running, dir.path()).await;
        assert_eq!(
            tree.scan_prefix([crate::outbox::EVENT]).count(),
            1,
            "only seq 1001 is left"
        );
        let horizon = retired_key(1000 - 100);
        assert_eq!(tree.range(retired_key(0)..=horizon).count(), 0);
        // Ids of seqs 901..=1000 and 1001, plus those sharing a retired record with seq 901.
        let ids = tree.scan_prefix([ID]).count();
        assert!(
            (101..101 + SLED_BATCH_MAX_EVENTS).contains(&ids),
            "{ids} ids"
        );
    }

    #[tokio::test]
    async fn an_append_cut_by_a_crash_is_rolled_back_at_open() {
        let dir = tempfile::tempdir().unwrap();
        let running = open(dir.path(), 100);
        running
            .outbox
            .append(vec![ev(1, None), ev(2, None)])
            .await
            .unwrap();
        let tree = raw(running, dir.path()).await;
        // First chunk of an unanswered append: seqs 3 and 4 without the counters.
        let lost = Uuid::new_v4();
        for (seq, id) in [(3, lost), (4, Uuid::new_v4())] {
            let event = ev(0, None).commit(seq, id, "2026-11-21T05:00:00Z");
            tree.insert(event_key(seq), serde_json::to_vec(&event).unwrap())
                .unwrap();
            tree.insert(id_key(&id), &seq.to_be_bytes()).unwrap();
        }
        tree.flush().unwrap();
        drop(tree);

        let running = open(dir.path(), 100);
        let outbox = &running.outbox;
        assert_eq!(outbox.stats().next_seq, 3);
        assert_eq!(outbox.batch_after(0, 10, 1 << 20).unwrap().len(), 2);
        // The producer retries with its id: it is stored, not answered with a seq never kept.
        let retried = outbox.append(vec![ev(3, Some(lost))]).await.unwrap();
        assert_eq!(retried.assigned, [(3, lost)]);
        let batch = outbox.batch_after(2, 10, 1 << 20).unwrap();
        assert_eq!((batch.len(), batch[0].source.as_str()), (1, "s3"));
        assert_eq!(outbox.stats().backlog_events, 3);
    }
}
