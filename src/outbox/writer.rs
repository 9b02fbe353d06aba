//! The outbox's single writer: group commit (stage a group, write it, one fsync, then answer
//! everyone).
//
// Design: commands are taken from a bounded queue, up to `GROUP_MAX_EVENTS` events per group.
// Appends arrive encoded (`outbox::encoded::Encoded`) and are staged in memory as chunks
// (`chunk::Builder`); at the end of the group the chunks (their pieces and the index entries of
// their producer-supplied ids) are written one sled insert each, then the counters (one value,
// `recovery::store_counters`); then one fsync (`FsSync::flush`) makes the group durable, and
// only then are the producers answered and the durable seq published to readers.
//
// No sled batch: sled 0.34 makes every batch atomic by writing out its io buffer and then the
// batch's manifest in a buffer of its own, each with a `sync_file_range`
// (`PageCache::pin_log`), which wrote the log's tail to flash twice per group before the fsync.
// Plain inserts are logged in the order they are made, and sled's recovery replays its log up
// to the first torn message, so what survives a crash is a prefix of the group's inserts: the
// counters (last) survive only with everything before them, and chunks or id entries that
// survive without them lie past the durable `next_seq`, which the next open rolls back
// (`recovery::roll_back`). A group stays all or nothing.
//
// Acks and `drop_oldest` delete whole chunks, a few per sled batch, each batch carrying the
// counters as of its last chunk. Id pruning walks the by-seq index (`s` + seq) up to
// `id_retention` seqs behind the acked seq, a bounded number per ack.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

mod commit_delay;
mod retire;

use commit_delay::CommitDelay;

use super::chunk::{self, Builder};
use super::command::{Appended, Command};
use super::compact::{self, Compaction};
use super::config::OutboxConfig;
use super::encoded::Encoded;
use super::error::OutboxError;
use super::keys::{id_by_seq_key, id_key, index_digest, index_seq, index_value};
use super::location::{log_bytes, store_bytes};
use super::recovery::{event_id, roll_back, store_counters};
use super::stats::OutboxStats;
use super::store::{Store, free_bytes};
use crate::config::Overflow;
use crate::service::heartbeat::Heartbeat;

/// Most events in one group commit (one fsync).
pub const GROUP_MAX_EVENTS: usize = 1024;
/// Most chunks one sled batch of an ack or a drop deletes.
const CHUNKS_PER_BATCH: usize = 16;
/// Most remembered ids one ack forgets; acks retire about as many, so this is the catch-up
/// rate, and it bounds the writer's pause.
const PRUNE_IDS_PER_ACK: usize = 4096;
/// Most ids forgotten in one sled batch.
const PRUNE_BATCH: usize = 128;
/// Least time between two reopens of a store that failed with an I/O error (sled keeps such an
/// error for good: every later write fails until the store is opened again).
const REOPEN_EVERY: Duration = Duration::from_secs(1);

/// Whether sled's error is the I/O kind it keeps for good (see [`REOPEN_EVERY`]).
fn is_io(e: &OutboxError) -> bool {
    matches!(e, OutboxError::Storage(sled::Error::Io(_)))
}

/// The writer task; run it with [`Writer::run`].
pub struct Writer {
    dir: PathBuf,
    /// `None` only while the store is being reopened.
    store: Option<Store>,
    /// The readers' handle on the tree, replaced on a reopen.
    shared: Arc<RwLock<Option<sled::Tree>>>,
    /// The last I/O failure (sled keeps it for good) and when a reopen was last tried.
    broken: Option<(OutboxError, Instant)>,
    config: OutboxConfig,
    /// Counters as written to sled (durable once the group's fsync returns).
    stats: OutboxStats,
    /// A write failed part way: records may lie past `stats.next_seq` until rolled back.
    dirty: bool,
    commands: mpsc::Receiver<Command>,
    published: watch::Sender<OutboxStats>,
    heartbeat: Heartbeat,
    compaction: Compaction,
    delay: CommitDelay,
}

/// Appends staged in memory during one group commit.
#[derive(Default)]
struct Group {
    /// Closed chunks, then the open one last.
    chunks: Vec<Builder>,
    /// Producer-supplied ids of the staged events, with their seqs and payload digests.
    ids: Vec<(Uuid, u64, u64)>,
    /// The same, to find a repeat within the group.
    fresh: HashMap<Uuid, (u64, u64)>,
    /// Staged events and their encoded bytes.
    events: u64,
    bytes: u64,
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

impl Writer {
    pub(super) fn new(
        dir: &Path,
        store: Store,
        shared: Arc<RwLock<Option<sled::Tree>>>,
        config: OutboxConfig,
        stats: OutboxStats,
        commands: mpsc::Receiver<Command>,
        published: watch::Sender<OutboxStats>,
    ) -> Self {
        Self {
            compaction: Compaction::new(config.compact_min_bytes),
            dir: dir.to_owned(),
            store: Some(store),
            shared,
            broken: None,
            config,
            stats,
            dirty: false,
            commands,
            published,
            heartbeat: Heartbeat::unwatched("writer"),
            delay: CommitDelay::default(),
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
        if let Err(e) = self.flush().await {
            log::error!(error:% = e; "final outbox flush failed");
        }
        log::info!(next_seq = self.stats.next_seq, acked_seq = self.stats.acked_seq; "outbox writer stopped");
    }

    async fn commit_group(&mut self, first: Command) {
        let mut replies = Vec::new();
        let mut group = Group::default();
        let mut events = 0usize;
        let mut next = Some(first);
        let mut acked = false;
        let clean = self.clean_up();
        let (mut appends, mut deadline) = (0usize, None);
        while let Some(cmd) = next.take() {
            events += match &cmd {
                Command::Append { events, .. } => {
                    appends += 1;
                    events.len().max(1)
                }
                Command::Ack { .. } | Command::Progress { .. } => {
                    acked = true;
                    1
                }
            };
            replies.push(match (&clean, cmd) {
                (Err(e), Command::Append { reply, .. }) => Reply::Append(reply, Err(e.clone())),
                (Err(e), Command::Ack { reply, .. } | Command::Progress { reply, .. }) => {
                    Reply::Ack(reply, Err(e.clone()))
                }
                (Ok(()), cmd) => self.apply(cmd, &mut group),
            });
            if events < GROUP_MAX_EVENTS {
                next = self.commands.try_recv().ok();
                if next.is_none() && self.delay.waits(appends) && clean.is_ok() {
                    let until = *deadline.get_or_insert_with(|| Instant::now() + self.delay.window);
                    next = self.next_before(until).await;
                }
            }
        }
        // A broken store answers every command with the refusal and is not flushed.
        let started = Instant::now();
        let flushed = match (&clean, self.write_group(group)) {
            (Err(_), _) => Ok(()),
            (Ok(()), Ok(())) => self.flush().await,
            (Ok(()), Err(e)) => Err(e),
        };
        self.delay = CommitDelay::after(
            appends,
            self.commands.len(),
            started.elapsed(),
            self.config.commit_delay_max,
        );
        if let Err(e) = &flushed {
            log::error!(error:% = e; "outbox commit failed; answering the group with an error");
            if is_io(e) && self.broken.is_none() {
                self.broken = Some((e.clone(), Instant::now()));
            }
        } else {
            self.published.send_replace(self.stats);
        }
        if self.broken.is_none() {
            let failed = replies.iter().find_map(|r| match r {
                Reply::Append(_, Err(e)) | Reply::Ack(_, Err(e)) if is_io(e) => Some(e.clone()),
                _ => None,
            });
            self.broken = failed.map(|e| (e, Instant::now()));
        }
        let flushed = flushed.map_err(|e| self.out_of_space(e));
        for reply in replies {
            match (reply, &flushed) {
                (Reply::Append(tx, r), Ok(())) => {
                    drop(tx.send(r.map_err(|e| self.out_of_space(e))))
                }
                (Reply::Ack(tx, r), Ok(())) => drop(tx.send(r)),
                (Reply::Append(tx, _), Err(e)) => drop(tx.send(Err(e.clone()))),
                (Reply::Ack(tx, _), Err(e)) => drop(tx.send(Err(e.clone()))),
            }
        }
        if acked && flushed.is_ok() && self.broken.is_none() {
            self.compact_if_due().await;
        }
    }

    /// The next command, if one comes before `until`; `None` at `until` (or once the queue is
    /// closed and empty). The timer is a sleeping thread of tokio's blocking pool: tokio's own
    /// timer rounds up to whole milliseconds, longer than the fsync this wait is measured in.
    async fn next_before(&mut self, until: Instant) -> Option<Command> {
        let left = until.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return None;
        }
        let timer = tokio::task::spawn_blocking(move || std::thread::sleep(left));
        tokio::select! {
            biased;
            cmd = self.commands.recv() => cmd,
            _ = timer => None,
        }
    }

    /// Swaps the store for a fresh copy of its live entries when [`Compaction::due`] (after an
    /// ack, once the group is answered). A failed swap leaves the old store live.
    async fn compact_if_due(&mut self) {
        let Some(store) = &self.store else { return };
        let Some(before) = self
            .compaction
            .due(self.stats.backlog_bytes, || log_bytes(&store.dir))
        else {
            return;
        };
        let started = Instant::now();
        let (new, copied) = match compact::swap(&self.dir, store, self.config.cache_bytes) {
            Ok(swapped) => swapped,
            Err(e) => {
                log::warn!(error:% = e; "compacting the outbox store failed; keeping it as it is");
                return;
            }
        };
        *self.shared.write().unwrap_or_else(PoisonError::into_inner) = Some(new.tree.clone());
        let live = new.dir.clone();
        drop(self.store.replace(new));
        if let Err(e) = compact::finish(&self.dir, &live) {
            log::warn!(error:% = e; "removing the old outbox store failed; the next open removes it");
        }
        let after = store_bytes(&live);
        self.compaction.done(copied);
        self.stats.compactions = self.compaction.count;
        self.published.send_replace(self.stats);
        log::info!(before_bytes = before, after_bytes = after, copied_bytes = copied, backlog_bytes = self.stats.backlog_bytes,
            took_ms = started.elapsed().as_millis() as u64, store:% = live.display();
            "compacted the outbox store into a fresh one");
    }

    /// sled's flush and the fsyncs of the open store.
    async fn flush(&self) -> Result<(), OutboxError> {
        let store = self.store()?;
        Ok(store.sync.flush(&store.db).await?)
    }

    fn store(&self) -> Result<&Store, OutboxError> {
        self.store
            .as_ref()
            .ok_or_else(|| OutboxError::Reopening(None))
    }

    fn tree(&self) -> Result<&sled::Tree, OutboxError> {
        Ok(&self.store()?.tree)
    }

    /// Before a group: reopens a store that failed with an I/O error (at most every
    /// [`REOPEN_EVERY`]), then rolls back what a failed write left past `next_seq`.
    fn clean_up(&mut self) -> Result<(), OutboxError> {
        if let Some((error, tried)) = &self.broken {
            if tried.elapsed() < REOPEN_EVERY {
                return Err(self.refusal(error));
            }
            let error = error.clone();
            if let Err(e) = self.reopen() {
                log::warn!(error:% = e; "reopening the outbox store failed; retrying");
                self.broken = Some((error.clone(), Instant::now()));
                return Err(self.refusal(&error));
            }
            self.broken = None;
        }
        if self.dirty {
            roll_back(self.tree()?, self.stats.next_seq)?;
            self.dirty = false;
        }
        Ok(())
    }

    /// sled's "no space left" (an I/O error of kind `StorageFull`, its errno lost in sled's
    /// copy) as [`OutboxError::DiskFull`], with the free space now; any other error as it is.
    fn out_of_space(&self, e: OutboxError) -> OutboxError {
        match &e {
            OutboxError::Storage(sled::Error::Io(io))
                if io.kind() == std::io::ErrorKind::StorageFull =>
            {
                OutboxError::DiskFull {
                    free: free_bytes(&self.dir).unwrap_or(0),
                    min_free: self.config.min_free_bytes,
                }
            }
            _ => e,
        }
    }

    /// [`OutboxError::DiskFull`] when the data dir's filesystem has less than
    /// `buffer.min_free_bytes` available (statvfs).
    fn ensure_free_space(&self) -> Result<(), OutboxError> {
        let free = free_bytes(&self.dir).map_err(|e| OutboxError::Storage(e.into()))?;
        if free < self.config.min_free_bytes {
            return Err(OutboxError::DiskFull {
                free,
                min_free: self.config.min_free_bytes,
            });
        }
        Ok(())
    }

    /// What a group is answered while the store is broken: disk full when it is (507).
    fn refusal(&self, error: &OutboxError) -> OutboxError {
        match self.ensure_free_space() {
            Err(full @ OutboxError::DiskFull { .. }) => full,
            _ => match self.out_of_space(error.clone()) {
                full @ OutboxError::DiskFull { .. } => full,
                other => OutboxError::Reopening(Some(Box::new(other))),
            },
        }
    }

    /// Drops the failed store (sled releases its lock once every handle is gone; readers hold
    /// theirs only during a read) and opens it again from what is on disk.
    fn reopen(&mut self) -> Result<(), OutboxError> {
        self.ensure_free_space()?;
        self.store = None;
        *self.shared.write().unwrap_or_else(PoisonError::into_inner) = None;
        let (store, stats) = Store::open(&self.dir, self.config.cache_bytes)?;
        *self.shared.write().unwrap_or_else(PoisonError::into_inner) = Some(store.tree.clone());
        self.store = Some(store);
        self.stats = stats;
        self.dirty = false;
        self.published.send_replace(stats);
        log::warn!(next_seq = stats.next_seq, acked_seq = stats.acked_seq;
            "reopened the outbox store after an I/O error");
        Ok(())
    }

    fn apply(&mut self, cmd: Command, group: &mut Group) -> Reply {
        match cmd {
            Command::Append { events, reply } => {
                let r = self.append(events, group);
                if let Err(e) = &r {
                    log::warn!(error:% = e; "append refused");
                }
                Reply::Append(reply, r)
            }
            Command::Ack { upto, reply } => Reply::Ack(reply, self.ack(upto)),
            Command::Progress { acked, sent, reply } => {
                let r = self
                    .mark_sent(sent)
                    .and_then(|()| acked.map_or(Ok(()), |upto| self.ack(upto)));
                Reply::Ack(reply, r)
            }
        }
    }

    /// Raises the sent seq to `upto`, at most the last seq written to sled.
    fn mark_sent(&mut self, upto: u64) -> Result<(), OutboxError> {
        let upto = upto.min(self.stats.next_seq.saturating_sub(1));
        if upto <= self.stats.sent_seq {
            return Ok(());
        }
        let staged = OutboxStats {
            sent_seq: upto,
            ..self.stats
        };
        store_counters(self.tree()?, &staged)?;
        self.stats = staged;
        Ok(())
    }

    /// Stages one producer request in `group`: all of it, or none of it on an error.
    fn append(&mut self, events: Vec<Encoded>, group: &mut Group) -> Result<Appended, OutboxError> {
        self.ensure_free_space()?;
        let mut next_seq = self.stats.next_seq + group.events;
        let mut fresh: HashMap<Uuid, (u64, u64)> = HashMap::new();
        let mut assigned = Vec::with_capacity(events.len());
        let mut records = Vec::with_capacity(events.len());
        let mut needed = 0u64;
        for (index, event) in events.into_iter().enumerate() {
            if let Some(id) = event.supplied {
                let known = match fresh.get(&id).or_else(|| group.fresh.get(&id)) {
                    Some(&(seq, stored)) => Some((seq, Some(stored))),
                    None => self.known_seq(&id)?,
                };
                if let Some((seq, stored)) = known {
                    if stored.is_some_and(|stored| stored != event.digest) {
                        return Err(OutboxError::IdConflict { index, id, seq });
                    }
                    assigned.push((seq, id));
                    continue;
                }
                fresh.insert(id, (next_seq, event.digest));
            }
            needed += event.len_at(next_seq) as u64 + 1;
            assigned.push((next_seq, event.id));
            records.push((next_seq, event));
            next_seq += 1;
        }
        let used = self.stats.backlog_bytes + group.bytes;
        if used + needed > self.config.max_bytes {
            let full = OutboxError::Full {
                needed,
                used,
                max: self.config.max_bytes,
            };
            if self.config.overflow == Overflow::Reject
                || group.bytes + needed > self.config.max_bytes
            {
                return Err(full);
            }
            self.drop_oldest(group.bytes + needed)?;
        }
        for (seq, event) in &records {
            let write = |body: &mut Vec<u8>| event.write_at(*seq, body);
            match group.chunks.last_mut() {
                Some(open) if !open.is_full() => open.push_with(write),
                _ => {
                    let mut open = Builder::new(*seq);
                    open.push_with(write);
                    group.chunks.push(open);
                }
            }
            group.events += 1;
        }
        group.bytes += needed;
        group
            .ids
            .extend(fresh.iter().map(|(id, (seq, digest))| (*id, *seq, *digest)));
        group.fresh.extend(fresh);
        Ok(Appended { assigned })
    }

    /// The seq a producer-supplied id was stored under, and the digest of its payload (when
    /// the entry has one), checked against the events: an entry at or past the durable end,
    /// or naming a stored event with another id, is stale (a crash cut its commit) and means
    /// "not stored".
    fn known_seq(&self, id: &Uuid) -> Result<Option<(u64, Option<u64>)>, OutboxError> {
        let Some(value) = self.tree()?.get(id_key(id))? else {
            return Ok(None);
        };
        let (Some(seq), digest) = (index_seq(&value), index_digest(&value)) else {
            return Ok(None);
        };
        if seq >= self.stats.next_seq {
            return Ok(None);
        }
        if seq <= self.stats.acked_seq {
            return Ok(Some((seq, digest)));
        }
        let Some(stored) = chunk::from_seq(self.tree()?, seq).next().transpose()? else {
            return Ok(Some((seq, digest))); // dropped by drop_oldest: it was accepted once
        };
        let events = stored.events().map_err(|e| OutboxError::Corrupt {
            seq,
            reason: e.to_string(),
        })?;
        Ok(match events.iter().find(|(s, _)| *s == seq) {
            Some((_, encoded)) => (event_id(encoded) == Some(*id)).then_some((seq, digest)),
            None => Some((seq, digest)), // dropped by drop_oldest
        })
    }

    /// Writes the staged chunks, then the counters, one sled insert each and no sled batch:
    /// a group's atomicity comes from the counters going last (see the module's design note).
    fn write_group(&mut self, group: Group) -> Result<(), OutboxError> {
        if group.chunks.is_empty() {
            return Ok(());
        }
        let mut staged = self.stats;
        staged.next_seq += group.events;
        staged.backlog_events += group.events;
        let result = insert_group(self.tree()?, group, &mut staged);
        match result {
            Ok(()) => {
                self.stats = staged;
                Ok(())
            }
            Err(e) => {
                self.dirty = true;
                Err(e.into())
            }
        }
    }
}

/// Inserts `group`'s chunk pieces and id index entries, in seq order, then the counters of
/// `staged` with its backlog bytes raised by the chunks'; stops at the first error.
fn insert_group(tree: &sled::Tree, group: Group, staged: &mut OutboxStats) -> sled::Result<()> {
    let mut ids = group.ids;
    ids.sort_unstable_by_key(|(_, seq, _)| *seq);
    let mut ids = ids.iter().peekable();
    for open in &group.chunks {
        staged.backlog_bytes += open.stored_bytes();
        for (key, piece) in chunk::pieces(open.first_seq, &open.encode()) {
            tree.insert(&key[..], piece)?;
        }
        let end = open.first_seq + u64::from(open.count());
        while let Some((id, seq, digest)) = ids.next_if(|(_, seq, _)| *seq < end) {
            tree.insert(&id_key(id)[..], &index_value(*seq, *digest)[..])?;
            tree.insert(&id_by_seq_key(*seq)[..], id.as_bytes())?;
        }
    }
    store_counters(tree, staged)
}
