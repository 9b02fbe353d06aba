//! Retiring events: acks and `drop_oldest` delete whole chunks, a few per sled batch, each
//! batch carrying the counters as of its last chunk; remembered ids are pruned behind the acked
//! seq.

use super::super::chunk;
use super::super::error::OutboxError;
use super::super::keys::id_by_seq_key;
use super::super::recovery::{forget_id, put_counters};
use super::{CHUNKS_PER_BATCH, PRUNE_BATCH, PRUNE_IDS_PER_ACK, Writer};

impl Writer {
    /// `overflow = "drop_oldest"`: deletes the oldest chunks until `needed` more bytes fit,
    /// counting their undelivered events as dropped (the relay reports them as a gap).
    pub(super) fn drop_oldest(&mut self, needed: u64) -> Result<(), OutboxError> {
        let (mut first, mut last, mut dropped) = (None, 0, 0u64);
        while self.stats.backlog_bytes + needed > self.config.max_bytes {
            let chunks = chunk::from_seq(self.tree()?, 0)
                .take(CHUNKS_PER_BATCH)
                .collect::<Result<Vec<_>, _>>()?;
            if chunks.is_empty() {
                break;
            }
            let mut staged = self.stats;
            let mut batch = sled::Batch::default();
            for stored in chunks {
                let (lo, hi) = self.unacked_range(&stored)?;
                let events = (hi + 1).saturating_sub(lo);
                staged.backlog_bytes -= stored.stored_bytes().min(staged.backlog_bytes);
                staged.backlog_events -= events.min(staged.backlog_events);
                staged.dropped_events += events;
                if events > 0 {
                    (first, last, dropped) = (first.or(Some(lo)), hi, dropped + events);
                }
                for key in &stored.keys {
                    batch.remove(key);
                }
                if staged.backlog_bytes + needed <= self.config.max_bytes {
                    break;
                }
            }
            put_counters(&mut batch, &staged);
            self.tree()?.apply_batch(batch)?;
            self.stats = staged;
        }
        if let Some(first) = first {
            log::warn!(dropped_from = first, dropped_to = last, dropped = dropped;
                "buffer full: dropped the oldest undelivered events (overflow = drop_oldest)");
        }
        Ok(())
    }

    /// Seqs of `stored` above the acked seq, as `(lo, hi)` (empty when `hi < lo`).
    fn unacked_range(&self, stored: &chunk::Chunk) -> Result<(u64, u64), OutboxError> {
        let last = stored.last_seq().map_err(|e| OutboxError::Corrupt {
            seq: stored.first_seq,
            reason: e.to_string(),
        })?;
        Ok((stored.first_seq.max(self.stats.acked_seq + 1), last))
    }

    /// Moves the acked seq to `upto` (at most the last stored seq), deleting every chunk whose
    /// events are all acknowledged, a few per sled batch with the counters as of its last one.
    pub(super) fn ack(&mut self, upto: u64) -> Result<(), OutboxError> {
        let upto = upto.min(self.stats.sent_seq);
        while self.stats.acked_seq < upto {
            let chunks = chunk::from_seq(self.tree()?, self.stats.acked_seq + 1)
                .take(CHUNKS_PER_BATCH)
                .collect::<Result<Vec<_>, _>>()?;
            let mut staged = self.stats;
            let mut batch = sled::Batch::default();
            // Whether `upto` lies within the chunks read (or past the last stored one).
            let mut reached = chunks.len() < CHUNKS_PER_BATCH;
            for stored in &chunks {
                if stored.first_seq > upto {
                    reached = true;
                    break;
                }
                let (lo, hi) = self.unacked_range(stored)?;
                let acked_to = hi.min(upto);
                staged.backlog_events -=
                    (acked_to + 1).saturating_sub(lo).min(staged.backlog_events);
                staged.acked_seq = staged.acked_seq.max(acked_to);
                if hi <= upto {
                    staged.backlog_bytes -= stored.stored_bytes().min(staged.backlog_bytes);
                    for key in &stored.keys {
                        batch.remove(key);
                    }
                } else {
                    reached = true;
                }
            }
            // Seqs between the chunks read and `upto` were dropped: the acked seq goes all the way.
            if reached {
                staged.acked_seq = upto;
            }
            put_counters(&mut batch, &staged);
            self.tree()?.apply_batch(batch)?;
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
        let old = self
            .tree()?
            .range(id_by_seq_key(0)..=id_by_seq_key(horizon))
            .take(PRUNE_IDS_PER_ACK)
            .collect::<Result<Vec<_>, _>>()?;
        for entries in old.chunks(PRUNE_BATCH) {
            let mut batch = sled::Batch::default();
            for (key, id) in entries {
                forget_id(self.tree()?, &mut batch, key, id)?;
            }
            self.tree()?.apply_batch(batch)?;
        }
        Ok(())
    }
}
