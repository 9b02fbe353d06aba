//! The sink store's first layout, converted to runs at open: a tree `events` with one key per
//! event, `prefix (u64 BE) | seq (u64 BE)` → the event as JSON (its first 4 KiB), and for
//! events over 4 KiB `prefix | seq | piece (u16 BE)` → the next 4 KiB, piece = 1, 2, ...

use crate::outbox::chunk::Builder;
use crate::sink::error::SinkError;
use crate::sink::keys::key_seq;
use crate::sink::runs;

/// Name of the first layout's tree.
pub(super) const TREE: &str = "events";

/// One event of the first layout, its pieces joined.
struct Old {
    prefix: u64,
    seq: u64,
    keys: Vec<sled::IVec>,
    json: Vec<u8>,
}

/// The run being gathered, and the first-layout keys it replaces.
#[derive(Default)]
struct Pending {
    prefix: u64,
    run: Option<Builder>,
    keys: Vec<sled::IVec>,
}

/// Moves every event of the first layout from `events` into `runs` (runs of consecutive seqs,
/// each converted in one sled transaction that also removes its old keys, so a conversion cut
/// short by a crash resumes at the next open). Returns how many events it moved; the caller
/// syncs.
///
/// # Errors
/// [`SinkError::Storage`], or [`SinkError::Corrupt`] for an event that does not decode or
/// does not carry the seq of its key (nothing of its run is moved).
pub(super) fn convert(events: &sled::Tree, runs: &sled::Tree) -> Result<u64, SinkError> {
    let mut moved = 0;
    let mut pending = Pending::default();
    let mut current: Option<Old> = None;
    for item in events.iter() {
        let (key, value) = item?;
        match (&mut current, key.len()) {
            (Some(old), 18) => {
                old.json.extend_from_slice(&value);
                old.keys.push(key);
            }
            (_, 16) => {
                if let Some(old) = current.take() {
                    moved += pending.add(old, events, runs)?;
                }
                current = Some(Old {
                    prefix: crate::sink::keys::decode_u64(&key[..8], "event prefix")?,
                    seq: key_seq(&key)?,
                    keys: vec![key],
                    json: value.to_vec(),
                });
            }
            (_, n) => return Err(SinkError::Corrupt(format!("event key of {n} bytes"))),
        }
    }
    if let Some(old) = current {
        moved += pending.add(old, events, runs)?;
    }
    moved += pending.commit(events, runs)?;
    Ok(moved)
}

impl Pending {
    /// Adds `old` to the run, committing the run first when `old` cannot join it. Returns the
    /// events committed.
    fn add(&mut self, old: Old, events: &sled::Tree, runs: &sled::Tree) -> Result<u64, SinkError> {
        runs::decode(old.seq, &old.json)?;
        let joins = self.run.as_ref().is_some_and(|run| {
            self.prefix == old.prefix
                && !run.is_full()
                && run.first_seq + u64::from(run.count()) == old.seq
        });
        let committed = if joins { 0 } else { self.commit(events, runs)? };
        self.prefix = old.prefix;
        self.run
            .get_or_insert_with(|| Builder::new(old.seq))
            .push(&old.json);
        self.keys.extend(old.keys);
        Ok(committed)
    }

    /// Writes the run and removes the keys it replaces, in one transaction.
    fn commit(&mut self, events: &sled::Tree, runs: &sled::Tree) -> Result<u64, SinkError> {
        let Some(run) = self.run.take() else {
            return Ok(0);
        };
        let mut put = sled::Batch::default();
        runs::put_run(&mut put, self.prefix, &run);
        let mut remove = sled::Batch::default();
        for key in self.keys.drain(..) {
            remove.remove(key);
        }
        use sled::Transactional;
        (events, runs).transaction(|(events, runs)| {
            events.apply_batch(&remove)?;
            runs.apply_batch(&put)?;
            Ok::<_, sled::transaction::ConflictableTransactionError<std::convert::Infallible>>(())
        })?;
        Ok(u64::from(run.count()))
    }
}

/// Writes `event` (encoded) at `key` in the first layout; only tests write it now.
#[cfg(test)]
pub(super) fn put_event(tree: &sled::Tree, key: &[u8; 16], event: &[u8]) {
    for (n, piece) in event.chunks(crate::durable::MAX_VALUE_BYTES).enumerate() {
        if n == 0 {
            tree.insert(&key[..], piece).unwrap();
        } else {
            tree.insert([&key[..], &(n as u16).to_be_bytes()].concat(), piece)
                .unwrap();
        }
    }
}
