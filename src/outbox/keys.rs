//! Byte layout of the outbox's sled tree: key prefixes, keys and the id index value.
//!
//! See [`crate::outbox`] for the layout. Integers are big-endian, so key order is seq order.

use uuid::Uuid;

/// Prefix of chunk keys (`c` + first seq + piece, see [`super::chunk`]).
pub(super) const CHUNK: u8 = b'c';
/// Prefix of the id index (`i` + id → seq ++ digest).
pub(super) const ID: u8 = b'i';
/// Prefix of the by-seq id index (`s` + seq → id).
pub(super) const ID_BY_SEQ: u8 = b's';
/// Prefix of meta values (`m` + name).
pub(super) const META: u8 = b'm';

/// `i` + the id's 16 bytes.
pub(super) fn id_key(id: &Uuid) -> [u8; 17] {
    let mut k = [ID; 17];
    k[1..].copy_from_slice(id.as_bytes());
    k
}

/// An id index value: the seq, then a digest of the submitted event ([`crate::event::NewEvent::digest`]) so
/// that a repeated id with another payload is told apart. Layout-1 entries hold the seq only.
pub(super) fn index_value(seq: u64, digest: u64) -> [u8; 16] {
    let mut v = [0; 16];
    v[..8].copy_from_slice(&seq.to_be_bytes());
    v[8..].copy_from_slice(&digest.to_be_bytes());
    v
}

/// The seq of an id index value.
pub(super) fn index_seq(value: &[u8]) -> Option<u64> {
    be_u64(value.get(..8)?)
}

/// The payload digest of an id index value (`None` for a layout-1 entry).
pub(super) fn index_digest(value: &[u8]) -> Option<u64> {
    be_u64(value.get(8..16)?)
}

/// `s` + seq.
pub(super) fn id_by_seq_key(seq: u64) -> [u8; 9] {
    let mut k = [ID_BY_SEQ; 9];
    k[1..].copy_from_slice(&seq.to_be_bytes());
    k
}

/// `m` + name.
pub(super) fn meta_key(name: &str) -> Vec<u8> {
    let mut k = vec![META];
    k.extend_from_slice(name.as_bytes());
    k
}

/// A big-endian u64 of exactly 8 bytes; `None` for any other length.
pub(super) fn be_u64(bytes: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(bytes.try_into().ok()?))
}
