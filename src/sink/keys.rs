//! Byte layout of the sink store's sled trees: keys, the per-stream record and their codecs.

use uuid::Uuid;

use crate::contract::Ack;

// Design: three trees, written together by one sled transaction per ingest call:
//   streams: stream uuid (16) ++ gateway (utf8) -> prefix u64 ++ acked seq u64 [++ acked id (16)]
//   runs:    prefix u64 ++ first_seq u64 ++ piece u16 -> a piece of a run of events (`runs`)
//   gaps:    prefix u64 ++ dropped_from u64    -> dropped_to u64 (disjoint, non-touching ranges)
// Integers are big-endian, so key order is seq order and one stream is one key range. `prefix`
// is a sled-generated id per (gateway, stream): keys stay short whatever the gateway. A store
// of the first layout (a tree `events`, one key per event) is converted at open (`legacy`).

/// The answer for a stream with nothing stored.
pub(super) const NO_ACK: Ack = Ack {
    acked_seq: None,
    acked_id: None,
};

/// A key or record of this layout that does not decode: the data dir is damaged.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{what} of {len} bytes does not decode")]
pub struct KeyError {
    /// What was being decoded, e.g. `stream key`, `gap end`.
    pub what: &'static str,
    /// Its length, bytes.
    pub len: usize,
}

/// `streams` key of a (gateway, stream).
pub(super) fn stream_key(gateway: &str, stream: Uuid) -> Vec<u8> {
    [stream.as_bytes(), gateway.as_bytes()].concat()
}

/// Inverse of [`stream_key`].
pub(super) fn parse_stream_key(key: &[u8]) -> Result<(String, Uuid), KeyError> {
    let corrupt = || KeyError {
        what: "stream key",
        len: key.len(),
    };
    let stream = Uuid::from_slice(key.get(..16).ok_or_else(corrupt)?).map_err(|_| corrupt())?;
    let gateway = String::from_utf8(key[16..].to_vec()).map_err(|_| corrupt())?;
    Ok((gateway, stream))
}

/// `events` or `gaps` key: the stream's prefix, then the seq.
pub(super) fn seq_key(prefix: u64, seq: u64) -> [u8; 16] {
    let mut key = [0; 16];
    key[..8].copy_from_slice(&prefix.to_be_bytes());
    key[8..].copy_from_slice(&seq.to_be_bytes());
    key
}

/// The seq half of a [`seq_key`].
pub(super) fn key_seq(key: &[u8]) -> Result<u64, KeyError> {
    decode_u64(key.get(8..).unwrap_or_default(), "key seq")
}

/// A big-endian u64 of exactly 8 bytes; `what` names it in the error.
pub(super) fn decode_u64(raw: &[u8], what: &'static str) -> Result<u64, KeyError> {
    let bytes: [u8; 8] = raw.try_into().map_err(|_| KeyError {
        what,
        len: raw.len(),
    })?;
    Ok(u64::from_be_bytes(bytes))
}

/// What the `streams` tree holds for one (gateway, stream).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct StreamRecord {
    /// First 8 bytes of this stream's `events` and `gaps` keys.
    pub prefix: u64,
    /// Contiguous acked seq; 0 = nothing contiguous yet (seqs start at 1).
    pub acked_seq: u64,
    /// Id of the event at `acked_seq`; `None` when `acked_seq` is 0 or inside a gap.
    pub acked_id: Option<Uuid>,
}

impl StreamRecord {
    /// 16 bytes, or 32 with an `acked_id`.
    pub fn encode(&self) -> Vec<u8> {
        let id = self.acked_id.as_ref().map_or(&[][..], |id| id.as_bytes());
        [
            &self.prefix.to_be_bytes()[..],
            &self.acked_seq.to_be_bytes(),
            id,
        ]
        .concat()
    }

    /// Inverse of [`StreamRecord::encode`].
    pub fn decode(raw: &[u8]) -> Result<Self, KeyError> {
        let corrupt = || KeyError {
            what: "stream record",
            len: raw.len(),
        };
        let acked_id = match raw.len() {
            16 => None,
            32 => Some(Uuid::from_slice(&raw[16..]).map_err(|_| corrupt())?),
            _ => return Err(corrupt()),
        };
        Ok(Self {
            prefix: decode_u64(&raw[..8], "stream prefix")?,
            acked_seq: decode_u64(&raw[8..16], "stream acked seq")?,
            acked_id,
        })
    }

    /// The contract's view of this record.
    pub fn ack(&self) -> Ack {
        Ack {
            acked_seq: (self.acked_seq > 0).then_some(self.acked_seq),
            acked_id: self.acked_id,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_sort_by_seq_and_round_trip() {
        assert!(seq_key(7, 255) < seq_key(7, 256));
        assert!(seq_key(7, u64::MAX) < seq_key(8, 0));
        assert_eq!(key_seq(&seq_key(7, 42)).unwrap(), 42);
        let stream = Uuid::new_v4();
        let key = stream_key("gw-01", stream);
        assert_eq!(
            parse_stream_key(&key).unwrap(),
            ("gw-01".to_owned(), stream)
        );
        assert!(parse_stream_key(&key[..10]).is_err());
    }

    #[test]
    fn records_round_trip() {
        for acked_id in [None, Some(Uuid::now_v7())] {
            let record = StreamRecord {
                prefix: 3,
                acked_seq: 9,
                acked_id,
            };
            assert_eq!(StreamRecord::decode(&record.encode()).unwrap(), record);
            assert_eq!(record.ack().acked_seq, Some(9));
        }
        let empty = StreamRecord {
            prefix: 0,
            acked_seq: 0,
            acked_id: None,
        };
        assert_eq!(empty.ack(), NO_ACK);
        assert!(StreamRecord::decode(&[0; 20]).is_err());
    }
}
