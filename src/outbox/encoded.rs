//! An accepted event encoded before it has a seq: [`super::Outbox::append`] encodes it in the
//! producer's task (on any worker thread, in parallel), and the single writer only puts
//! `{"id":…,"seq":N` in front of it.

use std::io::Write as _;

use serde::Serialize;
use serde_json::Value;
use uuid::Uuid;

use crate::event::NewEvent;

/// A validated [`NewEvent`] in its stored wire form, all but the seq.
///
/// [`Encoded::write_at`] writes exactly the bytes `serde_json::to_vec(&event)` gives for the
/// committed [`crate::event::Event`] (`{"id":uuid,"seq":u64,"source":str,"kind":str,"time":str,
/// "data":any}`, compact, fields in that order), which a unit test pins.
#[derive(Debug, Clone, PartialEq)]
pub struct Encoded {
    /// The producer-supplied id, indexed for idempotent retries; `None` when the relay made one.
    pub supplied: Option<Uuid>,
    /// The id the event is stored with: `supplied`, or a fresh UUIDv7.
    pub id: Uuid,
    /// [`NewEvent::digest`] of the submission when `supplied` is set (only such events are
    /// indexed, so only they need it); 0 otherwise.
    pub digest: u64,
    /// The wire form after the seq: `,"source":…,"kind":…,"time":…,"data":…}`.
    tail: Vec<u8>,
}

/// The fields after `seq`, in wire order.
#[derive(Serialize)]
struct Tail<'a> {
    source: &'a str,
    kind: &'a str,
    time: &'a str,
    data: &'a Value,
}

/// Bytes of `{"id":"` + a hyphenated UUID + `","seq":`.
const PREFIX_BYTES: usize = 7 + 36 + 8;

impl Encoded {
    /// Encodes `event`; `now` (RFC 3339) is its `time` when the producer gave none, and a fresh
    /// UUIDv7 its id when it gave none.
    ///
    /// # Errors
    /// serde_json failed to encode it (not expected: every part is a string or a `Value`).
    pub fn new(event: &NewEvent, now: &str) -> Result<Self, serde_json::Error> {
        let mut tail = serde_json::to_vec(&Tail {
            source: &event.source,
            kind: &event.kind,
            time: event.time.as_deref().unwrap_or(now),
            data: &event.data,
        })?;
        // `{"source":…}` becomes `,"source":…}`: the rest of the object after the seq.
        tail[0] = b',';
        Ok(Self {
            supplied: event.id,
            id: event.id.unwrap_or_else(Uuid::now_v7),
            digest: event.id.map(|_| event.digest()).unwrap_or_default(),
            tail,
        })
    }

    /// Bytes of the wire form at `seq`.
    pub fn len_at(&self, seq: u64) -> usize {
        PREFIX_BYTES + decimal_digits(seq) + self.tail.len()
    }

    /// Appends the committed event's wire form at `seq` to `out`.
    pub fn write_at(&self, seq: u64, out: &mut Vec<u8>) {
        out.reserve(self.len_at(seq));
        out.extend_from_slice(br#"{"id":""#);
        let mut id = Uuid::encode_buffer();
        out.extend_from_slice(self.id.hyphenated().encode_lower(&mut id).as_bytes());
        out.extend_from_slice(br#"","seq":"#);
        // Writing to a Vec cannot fail.
        let _ = write!(out, "{seq}");
        out.extend_from_slice(&self.tail);
    }
}

/// Decimal digits of `n` (1 for 0).
fn decimal_digits(n: u64) -> usize {
    n.checked_ilog10().map_or(1, |d| d as usize + 1)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn submitted(id: Option<Uuid>, time: Option<&str>, data: Value) -> NewEvent {
        NewEvent {
            id,
            source: "imu \"left\"\n".into(),
            kind: "sensor".into(),
            time: time.map(str::to_owned),
            data,
        }
    }

    #[test]
    fn writes_the_bytes_of_the_committed_event() {
        let now = "2026-12-01T14:00:00.000Z";
        let id = Uuid::now_v7();
        let data = json!({"z": [1, 2.5, -3e-7], "a": {"é": null, "q": "\u{1}\\"}, "t": true});
        for (supplied, time) in [
            (Some(id), Some("2024-01-02T03:04:05Z")),
            (None, None),
            (Some(id), None),
        ] {
            let new = submitted(supplied, time, data.clone());
            let encoded = Encoded::new(&new, now).unwrap();
            assert_eq!(encoded.supplied, supplied);
            if let Some(id) = supplied {
                assert_eq!(encoded.id, id);
                assert_eq!(encoded.digest, new.digest());
            } else {
                assert_eq!(encoded.digest, 0);
            }
            for seq in [0, 1, 9, 10, 99, 100, 123_456_789, u64::MAX] {
                let mut out = b"kept".to_vec();
                encoded.write_at(seq, &mut out);
                let expected =
                    serde_json::to_vec(&new.clone().commit(seq, encoded.id, now)).unwrap();
                assert_eq!(out[4..], expected[..], "seq {seq}");
                assert_eq!(&out[..4], b"kept");
                assert_eq!(encoded.len_at(seq), expected.len(), "seq {seq}");
            }
        }
    }

    #[test]
    fn decimal_digits_counts_every_width() {
        let mut n = 1u64;
        for digits in 1..=19 {
            assert_eq!(decimal_digits(n), digits);
            assert_eq!(decimal_digits(n * 10 - 1), digits);
            n *= 10;
        }
        assert_eq!(decimal_digits(0), 1);
        assert_eq!(decimal_digits(u64::MAX), 20);
    }
}
