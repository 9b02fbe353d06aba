//! Chunks: the events of one group commit in their encoded wire form, stored as sled values
//! ("pieces") small enough that sled never writes a blob file.
//!
//! Why pieces: sled 0.34 stores any log item over `segment_size / 4` (128 KiB) as a separate
//! blob file that it never fsyncs, and the log entry pointing at it can reach the disk first; a
//! power cut then leaves a torn blob that sled cannot recover past (issue 9). A leaf page holds
//! at most about 21 entries (it splits above 16, a merge adds at most 4), so entries of at most
//! [`PIECE_MAX_BYTES`] keep every page, and so every log item, far below that threshold.
//!
//! Chunk bytes (one or more pieces, concatenated), in one of two encodings:
//! - plain: `1 (u8) | count (u32 BE) | body_len (u32 BE) | body`;
//! - zstd: `2 (u8) | count (u32 BE) | body_len (u32 BE) | packed_len (u32 BE) | packed`, where
//!   `packed` is one zstd frame (RFC 8878) that decompresses to `body_len` bytes of body;
//!
//! and `body` is the `count` events as JSON, one per line (`\n` between them; serde_json never
//! writes a raw newline), with seqs `first_seq ..= first_seq + count - 1`. A chunk is written
//! compressed when that is smaller (sensor JSON: about 6x at level 1), and read back in the
//! plain encoding; stores of layout 2 hold plain chunks only, and read unchanged.
//!
//! Keys: `c` + first seq (u64 BE) + piece number (u16 BE), so a key range walks chunks in seq
//! order and each chunk's pieces in order.

use std::cell::RefCell;

use super::keys::{CHUNK, be_u64};

/// Largest sled value a chunk piece occupies, bytes: at most [`crate::durable::MAX_VALUE_BYTES`]
/// (see the module docs for the blob bound), and 1 KiB for memory. sled 0.34's page cache has
/// 256 LRU shards and each keeps its most recent page whatever `cache_capacity` says, so the
/// resident floor is about 256 pages of up to ~21 entries: ~22 KiB each with 1 KiB pieces.
/// Smaller pieces lower that floor at no cost in file size or write rate (README, "Measured").
pub const PIECE_MAX_BYTES: usize = 1024;
const _: () = assert!(PIECE_MAX_BYTES <= crate::durable::MAX_VALUE_BYTES);
/// A chunk is closed once its body reaches this many bytes (a larger single event still makes
/// one chunk of its own). Bounds what a reader decodes to find one event.
pub const CHUNK_TARGET_BYTES: usize = 32 * 1024;
/// Room past [`CHUNK_TARGET_BYTES`] that a chunk body is allocated with: the event that fills
/// a chunk ends past the target, by up to its own size.
const BODY_SLACK_BYTES: usize = 1024;
/// Bytes of the plain chunk header.
const HEADER_BYTES: usize = 9;
/// Bytes of the zstd chunk header (the plain header and `packed_len`).
const ZSTD_HEADER_BYTES: usize = 13;
/// Version byte of the plain encoding.
const PLAIN: u8 = 1;
/// Version byte of the zstd encoding.
const ZSTD: u8 = 2;
/// Most a decompression buffer is sized up front, bytes (it grows past that as data arrives).
const PRESIZE_MAX_BYTES: usize = 1 << 20;
/// zstd level of chunk compression: the fastest; level 3 gained under 1% on the Daphnet events.
const ZSTD_LEVEL: i32 = 1;
/// Bytes of a piece key.
pub const KEY_BYTES: usize = 11;

/// Key of piece `piece` of the chunk starting at `first_seq`.
pub fn key(first_seq: u64, piece: u16) -> [u8; KEY_BYTES] {
    let mut k = [CHUNK; KEY_BYTES];
    k[1..9].copy_from_slice(&first_seq.to_be_bytes());
    k[9..].copy_from_slice(&piece.to_be_bytes());
    k
}

/// First seq of the chunk a piece key belongs to.
pub fn first_seq_of(key: &[u8]) -> Option<u64> {
    be_u64(key.get(1..9)?)
}

/// Events being gathered into one chunk during a group commit.
#[derive(Debug)]
pub struct Builder {
    /// Seq of the first event.
    pub first_seq: u64,
    count: u32,
    body: Vec<u8>,
}

impl Builder {
    /// An empty chunk whose first event will get `first_seq`; its body is sized for a full
    /// chunk of small events at once (no regrowth while events are pushed).
    pub fn new(first_seq: u64) -> Self {
        Self {
            first_seq,
            count: 0,
            body: Vec::with_capacity(CHUNK_TARGET_BYTES + BODY_SLACK_BYTES),
        }
    }

    /// Whether the chunk should be closed before another event is added.
    pub fn is_full(&self) -> bool {
        self.body.len() >= CHUNK_TARGET_BYTES || self.count == u32::MAX
    }

    /// Appends the next event (seq `first_seq + count`), already encoded as JSON.
    pub fn push(&mut self, encoded: &[u8]) {
        self.push_with(|body| body.extend_from_slice(encoded));
    }

    /// Appends the next event (seq `first_seq + count`), which `write` appends to the body as
    /// JSON (one line: no raw newline).
    pub fn push_with(&mut self, write: impl FnOnce(&mut Vec<u8>)) {
        if self.count > 0 {
            self.body.push(b'\n');
        }
        write(&mut self.body);
        self.count += 1;
    }

    /// Events in the chunk.
    pub fn count(&self) -> u32 {
        self.count
    }

    /// The chunk's bytes as stored: the zstd encoding when it is smaller, else the plain one.
    pub fn encode(&self) -> Vec<u8> {
        let header = |version: u8, capacity: usize| {
            let mut out = Vec::with_capacity(capacity);
            out.push(version);
            out.extend_from_slice(&self.count.to_be_bytes());
            out.extend_from_slice(&(self.body.len() as u32).to_be_bytes());
            out
        };
        // Compressing a byte slice in memory cannot fail short of allocation failure, which
        // aborts; an error would only mean "store it plain".
        if let Ok(packed) = compress(&self.body)
            && ZSTD_HEADER_BYTES + packed.len() < HEADER_BYTES + self.body.len()
        {
            let mut out = header(ZSTD, ZSTD_HEADER_BYTES + packed.len());
            out.extend_from_slice(&(packed.len() as u32).to_be_bytes());
            out.extend_from_slice(&packed);
            return out;
        }
        let mut out = header(PLAIN, HEADER_BYTES + self.body.len());
        out.extend_from_slice(&self.body);
        out
    }

    /// Bytes the chunk occupies in the budget (see [`stored_bytes`]).
    pub fn stored_bytes(&self) -> u64 {
        stored_bytes(HEADER_BYTES + self.body.len())
    }
}

thread_local! {
    /// The zstd context of the thread encoding chunks (the outbox writer's), kept between
    /// chunks: a fresh one per chunk costs its allocation and table setup every time. It holds
    /// a workspace sized for the largest chunk it compressed (some hundred KiB at level 1).
    static COMPRESSOR: RefCell<Option<zstd::bulk::Compressor<'static>>> =
        const { RefCell::new(None) };
}

/// `body` as one zstd frame at [`ZSTD_LEVEL`], with this thread's context.
fn compress(body: &[u8]) -> std::io::Result<Vec<u8>> {
    COMPRESSOR.with(|slot| {
        let mut slot = slot.try_borrow_mut().map_err(std::io::Error::other)?;
        let compressor = match &mut *slot {
            Some(compressor) => compressor,
            empty => empty.insert(zstd::bulk::Compressor::new(ZSTD_LEVEL)?),
        };
        compressor.compress(body)
    })
}

/// Bytes a chunk whose plain encoding is `plain_len` bytes occupies in the budget: that and
/// its piece keys. The budget counts events uncompressed, so `buffer.max_bytes` bounds the
/// same events whatever they compress to; the disk holds at most that.
pub fn stored_bytes(plain_len: usize) -> u64 {
    (plain_len + plain_len.div_ceil(PIECE_MAX_BYTES) * KEY_BYTES) as u64
}

/// The event count in a chunk's header, from its first bytes (its first piece is enough);
/// `None` when fewer than the 5 bytes that hold it are given. Does not check the version.
pub fn header_count(first_bytes: &[u8]) -> Option<u32> {
    Some(u32::from_be_bytes(first_bytes.get(1..5)?.try_into().ok()?))
}

/// The pieces of `bytes` (a chunk starting at `first_seq`) with their keys, in key order.
pub fn pieces(first_seq: u64, bytes: &[u8]) -> impl Iterator<Item = ([u8; KEY_BYTES], &[u8])> {
    (bytes.chunks(PIECE_MAX_BYTES).enumerate())
        .map(move |(n, piece)| (key(first_seq, n as u16), piece))
}

/// Adds the pieces of `bytes` (a chunk starting at `first_seq`) to `batch`.
pub fn put(batch: &mut sled::Batch, first_seq: u64, bytes: &[u8]) {
    for (key, piece) in pieces(first_seq, bytes) {
        batch.insert(&key[..], piece);
    }
}

/// A stored chunk, read back whole.
#[derive(Debug, Clone)]
pub struct Chunk {
    /// Seq of its first event.
    pub first_seq: u64,
    /// Its piece keys, in order (to delete it).
    pub keys: Vec<sled::IVec>,
    /// Its bytes in the plain encoding (a compressed chunk decompressed); a compressed chunk
    /// that is incomplete or does not decompress stays as read, for [`Chunk::events`] to report.
    pub bytes: Vec<u8>,
}

/// Why stored chunk bytes cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChunkError {
    /// Fewer bytes than the header announces: a chunk being deleted while read, or damage.
    #[error("chunk at seq {first_seq} is incomplete ({have} of {want} bytes)")]
    Incomplete {
        /// First seq of the chunk.
        first_seq: u64,
        /// Bytes present.
        have: usize,
        /// Bytes the header announces.
        want: usize,
    },
    /// An unknown version byte or a malformed header.
    #[error("chunk at seq {first_seq}: {reason}")]
    Malformed {
        /// First seq of the chunk.
        first_seq: u64,
        /// What is wrong.
        reason: String,
    },
}

impl Chunk {
    /// Events in the chunk (from the header).
    ///
    /// # Errors
    /// [`ChunkError`] when the header is missing, of an unknown version, or the body is short.
    pub fn count(&self) -> Result<u32, ChunkError> {
        self.header().map(|(count, _)| count)
    }

    /// Seq of its last event.
    ///
    /// # Errors
    /// As [`Chunk::count`].
    pub fn last_seq(&self) -> Result<u64, ChunkError> {
        Ok(self.first_seq + u64::from(self.count()?.max(1)) - 1)
    }

    /// Bytes it occupies in the budget (see [`stored_bytes`]).
    pub fn stored_bytes(&self) -> u64 {
        stored_bytes(self.bytes.len())
    }

    /// `(count, body_len)` of a plain chunk; the error a compressed one left as read has.
    fn header(&self) -> Result<(u32, usize), ChunkError> {
        if self.bytes.first() == Some(&ZSTD) {
            return Err(self
                .unpacked()
                .err()
                .unwrap_or_else(|| ChunkError::Malformed {
                    first_seq: self.first_seq,
                    reason: "compressed chunk left compressed".to_owned(),
                }));
        }
        let (version, count, body_len) = self.fields(HEADER_BYTES)?;
        if version != PLAIN {
            return Err(ChunkError::Malformed {
                first_seq: self.first_seq,
                reason: format!("unknown chunk version {version}"),
            });
        }
        self.complete(HEADER_BYTES.saturating_add(body_len))?;
        Ok((count, body_len))
    }

    /// `(version, count, body_len)` from a header of `header_bytes`.
    fn fields(&self, header_bytes: usize) -> Result<(u8, u32, usize), ChunkError> {
        let h = self
            .bytes
            .get(..header_bytes)
            .ok_or_else(|| ChunkError::Malformed {
                first_seq: self.first_seq,
                reason: "shorter than its header".to_owned(),
            })?;
        let count = u32::from_be_bytes([h[1], h[2], h[3], h[4]]);
        let body_len = u32::from_be_bytes([h[5], h[6], h[7], h[8]]) as usize;
        Ok((h[0], count, body_len))
    }

    /// `Incomplete` unless the bytes are exactly `want` long.
    fn complete(&self, want: usize) -> Result<(), ChunkError> {
        if self.bytes.len() == want {
            return Ok(());
        }
        Err(ChunkError::Incomplete {
            first_seq: self.first_seq,
            have: self.bytes.len(),
            want,
        })
    }

    /// The plain encoding of a compressed chunk.
    fn unpacked(&self) -> Result<Vec<u8>, ChunkError> {
        let (_, count, body_len) = self.fields(ZSTD_HEADER_BYTES)?;
        let h = &self.bytes[HEADER_BYTES..ZSTD_HEADER_BYTES];
        let packed_len = u32::from_be_bytes([h[0], h[1], h[2], h[3]]) as usize;
        self.complete(ZSTD_HEADER_BYTES.saturating_add(packed_len))?;
        // A damaged `body_len` must not size an allocation: the buffer grows with what really
        // decompresses, read at most one byte past `body_len`, and the length is checked.
        let mut plain = Vec::with_capacity(HEADER_BYTES + body_len.min(PRESIZE_MAX_BYTES));
        plain.push(PLAIN);
        plain.extend_from_slice(&count.to_be_bytes());
        plain.extend_from_slice(&(body_len as u32).to_be_bytes());
        let mut decoded = zstd::stream::read::Decoder::new(&self.bytes[ZSTD_HEADER_BYTES..])
            .and_then(|d| {
                let mut bounded = std::io::Read::take(d, body_len as u64 + 1);
                std::io::copy(&mut bounded, &mut plain).map(|_| ())
            });
        if decoded.is_ok() && plain.len() - HEADER_BYTES != body_len {
            decoded = Err(std::io::Error::other(format!(
                "{} bytes, the header says {body_len}",
                plain.len() - HEADER_BYTES
            )));
        }
        decoded.map_err(|e| ChunkError::Malformed {
            first_seq: self.first_seq,
            reason: format!("compressed body does not decompress: {e}"),
        })?;
        Ok(plain)
    }

    /// The chunk with its bytes in the plain encoding where they decompress (a chunk that
    /// does not decompress stays as read, and [`Chunk::events`] reports why).
    pub fn unpack(mut self) -> Self {
        if self.bytes.first() == Some(&ZSTD)
            && let Ok(plain) = self.unpacked()
        {
            self.bytes = plain;
        }
        self
    }

    /// `(seq, encoded event)` for every event, in seq order.
    ///
    /// # Errors
    /// As [`Chunk::count`], or a body with fewer lines than the header's count.
    pub fn events(&self) -> Result<Vec<(u64, &[u8])>, ChunkError> {
        let (count, _) = self.header()?;
        let body = &self.bytes[HEADER_BYTES..];
        let events: Vec<(u64, &[u8])> = body
            .split(|&b| b == b'\n')
            .enumerate()
            .map(|(n, line)| (self.first_seq + n as u64, line))
            .collect();
        if events.len() != count as usize {
            return Err(ChunkError::Malformed {
                first_seq: self.first_seq,
                reason: format!("{} events in the body, {count} in the header", events.len()),
            });
        }
        Ok(events)
    }
}

/// Walks the stored chunks in seq order, starting with the chunk that holds `seq` (or the
/// first one after it), reading each chunk's pieces whole.
pub fn from_seq(tree: &sled::Tree, seq: u64) -> impl Iterator<Item = sled::Result<Chunk>> + '_ {
    let start = holding(tree, seq).ok().flatten().unwrap_or(seq);
    let mut pieces = tree
        .range(key(start, 0)..=key(u64::MAX, u16::MAX))
        .peekable();
    std::iter::from_fn(move || {
        let (k, v) = match pieces.next()? {
            Ok(kv) => kv,
            Err(e) => return Some(Err(e)),
        };
        let first_seq = first_seq_of(&k).unwrap_or(0);
        let mut chunk = Chunk {
            first_seq,
            keys: vec![k],
            bytes: v.to_vec(),
        };
        while let Some(Ok((k, _))) = pieces.peek() {
            if first_seq_of(k) != Some(first_seq) {
                break;
            }
            match pieces.next() {
                Some(Ok((k, v))) => {
                    chunk.keys.push(k);
                    chunk.bytes.extend_from_slice(&v);
                }
                Some(Err(e)) => return Some(Err(e)),
                None => break,
            }
        }
        Some(Ok(chunk.unpack()))
    })
}

/// First seq of the stored chunk that starts at or before `seq`, if any.
fn holding(tree: &sled::Tree, seq: u64) -> sled::Result<Option<u64>> {
    Ok(tree
        .range(key(0, 0)..=key(seq, u16::MAX))
        .next_back()
        .transpose()?
        .and_then(|(k, _)| first_seq_of(&k)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_chunk_round_trips_through_pieces() {
        let tree = sled::Config::new()
            .temporary(true)
            .open()
            .unwrap()
            .open_tree("t")
            .unwrap();
        let big = vec![b'x'; 3 * PIECE_MAX_BYTES + 5];
        let mut b = Builder::new(7);
        b.push(b"{\"a\":1}");
        b.push(&big);
        b.push(b"{}");
        let bytes = b.encode();
        let mut batch = sled::Batch::default();
        put(&mut batch, 7, &bytes);
        let mut next = Builder::new(10);
        next.push(b"1");
        put(&mut batch, 10, &next.encode());
        tree.apply_batch(batch).unwrap();

        let chunks: Vec<Chunk> = from_seq(&tree, 8).map(Result::unwrap).collect();
        assert_eq!(chunks.len(), 2);
        assert_eq!(chunks[0].keys.len(), bytes.len().div_ceil(PIECE_MAX_BYTES));
        assert_eq!(chunks[0].last_seq().unwrap(), 9);
        let events = chunks[0].events().unwrap();
        assert_eq!(events[0], (7, &b"{\"a\":1}"[..]));
        assert_eq!(events[1], (8, &big[..]));
        assert_eq!(events[2], (9, &b"{}"[..]));
        assert_eq!(chunks[1].events().unwrap(), [(10, &b"1"[..])]);
        assert_eq!(
            from_seq(&tree, 11).count(),
            1,
            "the chunk holding 10 is the last"
        );
    }

    #[test]
    fn a_short_chunk_is_reported_incomplete() {
        let mut b = Builder::new(1);
        b.push(b"{}");
        let mut bytes = b.encode();
        bytes.pop();
        let chunk = Chunk {
            first_seq: 1,
            keys: vec![],
            bytes,
        };
        assert!(matches!(chunk.events(), Err(ChunkError::Incomplete { .. })));
    }

    /// A chunk of 50 alike events, in the zstd encoding.
    fn compressed() -> Vec<u8> {
        let mut b = Builder::new(1);
        for n in 0..50 {
            b.push(format!("{{\"n\":{n},\"pad\":\"{}\"}}", "x".repeat(100)).as_bytes());
        }
        let bytes = b.encode();
        assert_eq!(bytes[0], ZSTD);
        assert!(
            bytes.len() < b.body.len() / 5,
            "{} of {}",
            bytes.len(),
            b.body.len()
        );
        bytes
    }

    #[test]
    fn a_compressed_chunk_reads_back_plain_and_a_damaged_one_is_reported() {
        let read = |bytes: Vec<u8>| {
            Chunk {
                first_seq: 1,
                keys: vec![],
                bytes,
            }
            .unpack()
        };
        let whole = read(compressed());
        let events = whole.events().unwrap();
        assert_eq!(events.len(), 50);
        assert_eq!(events[49].0, 50);
        assert!(events[49].1.starts_with(b"{\"n\":49,"));
        assert_eq!(whole.stored_bytes(), stored_bytes(whole.bytes.len()));

        let mut short = compressed();
        short.pop();
        let short = read(short);
        assert!(
            matches!(short.events(), Err(ChunkError::Incomplete { .. })),
            "{:?}",
            short.events()
        );

        let mut damaged = compressed();
        let middle = damaged.len() / 2;
        damaged[middle] ^= 0xff;
        damaged[middle + 1] ^= 0xff;
        let err = read(damaged).events().unwrap_err().to_string();
        assert!(err.contains("does not decompress"), "{err}");

        let mut lying = compressed();
        lying[5..9].copy_from_slice(&7u32.to_be_bytes()); // body_len
        let err = read(lying).events().unwrap_err().to_string();
        assert!(err.contains("the header says 7"), "{err}");

        // A huge body_len sizes nothing: the real content is read, then refused.
        let mut huge = compressed();
        huge[5..9].copy_from_slice(&u32::MAX.to_be_bytes());
        let err = read(huge).events().unwrap_err().to_string();
        assert!(
            err.contains(&format!("the header says {}", u32::MAX)),
            "{err}"
        );
    }
}
