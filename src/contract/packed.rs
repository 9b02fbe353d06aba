//! `events_zstd`: the events of an `edge_ingest` call as one zstd frame of NDJSON, in base64.
//!
//! An upstream offers it by listing the property `events_zstd` in the ingest tool's
//! `inputSchema`; the relay sends it only then (and `events: []` beside it, for upstreams
//! whose schema still requires `events`). Sensor JSON shrinks about 5x per batch, which is
//! what a gateway pays for on a metered cellular link, and neither side builds a JSON value
//! per event: the relay sends its stored lines, the upstream parses each line once.

use std::io::Read as _;

use base64::Engine as _;

use crate::event::Event;

/// Name of the argument, and of the `inputSchema` property that offers it.
pub const EVENTS_ZSTD: &str = "events_zstd";
/// Most bytes an `events_zstd` may decompress to in the reference upstream (16 MiB: 64 batches
/// of the relay's default `batch_max_bytes`); a larger one is refused, nothing stored.
pub const MAX_UNPACKED_BYTES: usize = 16 * 1024 * 1024;
/// zstd level: the fastest. The relay compresses every batch it sends on a small ARM board.
const LEVEL: i32 = 1;
/// Most a decompression buffer is sized up front, bytes.
const PRESIZE_MAX_BYTES: usize = 1 << 20;

/// `ndjson` (events, one per line) as an `events_zstd` value: a zstd frame (RFC 8878) in
/// base64 with padding (RFC 4648 §4).
pub fn pack(ndjson: &[u8]) -> String {
    // In-memory compression fails only on allocation failure, which aborts first.
    let frame = zstd::bulk::compress(ndjson, LEVEL).unwrap_or_default();
    base64::engine::general_purpose::STANDARD.encode(frame)
}

/// The events of an `events_zstd` value, in the order of its lines; at most `max_bytes` of
/// NDJSON are decompressed.
///
/// # Errors
/// A message for the caller: not base64, not a zstd frame, more than `max_bytes`
/// decompressed, or a line that is not an event.
pub fn unpack(packed: &str, max_bytes: usize) -> Result<Vec<Event>, String> {
    let frame = base64::engine::general_purpose::STANDARD
        .decode(packed)
        .map_err(|e| format!("`{EVENTS_ZSTD}` is not base64: {e}"))?;
    let mut ndjson = Vec::with_capacity((frame.len() * 6).min(PRESIZE_MAX_BYTES));
    zstd::stream::read::Decoder::new(&frame[..])
        .and_then(|d| d.take(max_bytes as u64 + 1).read_to_end(&mut ndjson))
        .map_err(|e| format!("`{EVENTS_ZSTD}` does not decompress: {e}"))?;
    if ndjson.len() > max_bytes {
        return Err(format!(
            "`{EVENTS_ZSTD}` decompresses to more than {max_bytes} bytes"
        ));
    }
    ndjson
        .split(|&b| b == b'\n')
        .filter(|line| !line.trim_ascii().is_empty())
        .enumerate()
        .map(|(i, line)| {
            serde_json::from_slice(line)
                .map_err(|e| format!("`{EVENTS_ZSTD}` line {}: not an event: {e}", i + 1))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ndjson(n: u64) -> Vec<u8> {
        let lines: Vec<String> = (1..=n)
            .map(|seq| {
                format!(
                    r#"{{"id":"{}","seq":{seq},"source":"ankle","kind":"imu","time":"2026-11-21T05:00:00.015Z","data":{{"x":[101,1000,297]}}}}"#,
                    uuid::Uuid::now_v7()
                )
            })
            .collect();
        lines.join("\n").into_bytes()
    }

    #[test]
    fn packed_events_round_trip_smaller() {
        let plain = ndjson(100);
        let packed = pack(&plain);
        assert!(
            packed.len() * 2 < plain.len(),
            "{} vs {}",
            packed.len(),
            plain.len()
        );
        let events = unpack(&packed, MAX_UNPACKED_BYTES).unwrap();
        assert_eq!(events.len(), 100);
        assert!(events.iter().zip(1..).all(|(e, seq)| e.seq == seq));
        assert!(unpack(&pack(b""), 10).unwrap().is_empty());
    }

    #[test]
    fn bad_values_are_refused_with_the_reason() {
        let err = |packed: &str, max| unpack(packed, max).unwrap_err();
        assert!(err("%%%", 100).contains("not base64"));
        let not_zstd = base64::engine::general_purpose::STANDARD.encode(b"hello");
        assert!(err(&not_zstd, 100).contains("does not decompress"));
        let plain = ndjson(10);
        let big = err(&pack(&plain), plain.len() - 1);
        assert!(big.contains("more than"), "{big}");
        assert!(unpack(&pack(&plain), plain.len()).is_ok());
        assert!(err(&pack(b"{\"seq\":1}"), 100).contains("line 1: not an event"));
    }
}
