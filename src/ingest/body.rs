//! Parsing a `POST /v1/events` body: one JSON event, a JSON array of events, or NDJSON.

use std::cell::Cell;
use std::collections::HashMap;
use std::collections::hash_map::Entry;

use serde::Deserializer as _;
use serde::de::{SeqAccess, Visitor};
use serde_json::Value;
use serde_json::value::RawValue;

use super::numbers;
use crate::event::{FieldError, NewEvent};

/// Most events accepted in one request.
pub const MAX_EVENTS_PER_REQUEST: usize = 100_000;

/// Why a body was refused. Nothing of a refused body is stored.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum BodyError {
    /// Zero bytes, only whitespace, or an empty array.
    #[error("empty body: send one JSON event, a JSON array of events, or NDJSON")]
    Empty,
    /// Not JSON (or a bad NDJSON line, or a bad array element); `index` is the event index.
    #[error("event {index}: malformed JSON: {reason}")]
    Malformed {
        /// 0-based event index.
        index: usize,
        /// Parser message with line and column.
        reason: String,
    },
    /// A well-formed event that breaks the event model.
    #[error("event {index}: {source}")]
    Invalid {
        /// 0-based event index.
        index: usize,
        /// Offending field and reason.
        source: crate::event::FieldError,
    },
    /// Two events of the body share an `id` but differ in anything else (HTTP 409).
    #[error("event {index}: id {id} is already used by event {first} with another payload")]
    IdConflict {
        /// 0-based index of the later event.
        index: usize,
        /// 0-based index of the first event with that id.
        first: usize,
        /// The shared id.
        id: uuid::Uuid,
    },
    /// An event whose encoded `data` exceeds the cap (`ingest.http.max_event_bytes`; HTTP 413).
    #[error("event {index}: {source}")]
    TooLarge {
        /// 0-based event index.
        index: usize,
        /// The `data` field and its size against the cap.
        source: crate::event::FieldError,
    },
    /// More than [`MAX_EVENTS_PER_REQUEST`] events.
    #[error("too many events in one request: more than {MAX_EVENTS_PER_REQUEST}")]
    TooMany,
}

impl BodyError {
    /// Event index and field the error points at, for the JSON error body.
    pub fn location(&self) -> (Option<usize>, Option<&'static str>) {
        match self {
            Self::Malformed { index, .. } => (Some(*index), None),
            Self::Invalid { index, source } | Self::TooLarge { index, source } => {
                (Some(*index), Some(source.field))
            }
            Self::IdConflict { index, .. } => (Some(*index), Some("id")),
            _ => (None, None),
        }
    }

    /// True when the body or an event is too large (answered with 413).
    pub fn is_oversize(&self) -> bool {
        matches!(self, Self::TooLarge { .. } | Self::TooMany)
    }
}

/// Parses and validates every event of a body; all or nothing.
///
/// Shape detection: a body starting with `[` is an array of events, read element by element so
/// that an error names its element; otherwise a body that parses as one JSON value is one
/// event, and anything else is read as NDJSON, one event per non-blank line. Every number must
/// be one serde_json keeps exactly (64-bit integers; decimals an `f64` holds exactly to their
/// shortest form): others are refused, never rounded. Repeated ids must carry equal events.
///
/// # Errors
/// The first [`BodyError`], naming the event index and field.
pub fn parse_events(body: &[u8], max_event_bytes: usize) -> Result<Vec<NewEvent>, BodyError> {
    let first = body.iter().find(|b| !b.is_ascii_whitespace());
    let events = match first {
        None => return Err(BodyError::Empty),
        Some(b'[') => array_elements(body)?,
        Some(_) => match serde_json::from_slice::<&RawValue>(body) {
            Ok(one) => vec![one.get().as_bytes()],
            Err(whole) => ndjson_lines(body, whole)?,
        },
    };
    if events.is_empty() {
        return Err(BodyError::Empty);
    }
    let events: Vec<NewEvent> = events
        .into_iter()
        .enumerate()
        .map(|(index, raw)| parse_event(index, raw, max_event_bytes))
        .collect::<Result<_, _>>()?;
    check_repeated_ids(&events)?;
    Ok(events)
}

fn parse_event(index: usize, raw: &[u8], max_event_bytes: usize) -> Result<NewEvent, BodyError> {
    // The common case, an event accepted as it is, without its top-level `Value`; anything
    // else takes the general path below, which names the error.
    if let Some(event) = NewEvent::from_json_text(raw, max_event_bytes)
        && numbers::first_inexact(raw).is_none()
    {
        return Ok(event);
    }
    let value = serde_json::from_slice::<Value>(raw).map_err(|e| BodyError::Malformed {
        index,
        reason: e.to_string(),
    })?;
    if let Some(number) = numbers::first_inexact(raw) {
        let source = FieldError {
            field: field_of(raw),
            reason: format!(
                "number {number} cannot be kept exactly (integers must fit 64 bits, decimals \
                 an f64); send it as a string"
            ),
            oversize: None,
        };
        return Err(BodyError::Invalid { index, source });
    }
    NewEvent::from_json(value, max_event_bytes).map_err(|source| match source.oversize {
        Some(_) => BodyError::TooLarge { index, source },
        None => BodyError::Invalid { index, source },
    })
}

/// The top-level field of the event `raw` holding an inexact number (error path only).
fn field_of(raw: &[u8]) -> &'static str {
    let Ok(fields) = serde_json::from_slice::<HashMap<String, &RawValue>>(raw) else {
        return "(event)";
    };
    let inexact = |v: &&RawValue| numbers::first_inexact(v.get().as_bytes()).is_some();
    match fields
        .iter()
        .find(|(_, v)| inexact(v))
        .map(|(k, _)| k.as_str())
    {
        Some("data") => "data",
        Some("id") => "id",
        Some("source") => "source",
        Some("kind") => "kind",
        Some("time") => "time",
        Some("seq") => "seq",
        _ => "(event)",
    }
}

/// Same id twice in one body: the same event sent twice is fine (one seq), another is not.
fn check_repeated_ids(events: &[NewEvent]) -> Result<(), BodyError> {
    let mut seen: HashMap<uuid::Uuid, usize> = HashMap::new();
    for (index, event) in events.iter().enumerate() {
        let Some(id) = event.id else { continue };
        match seen.entry(id) {
            Entry::Vacant(slot) => {
                slot.insert(index);
            }
            Entry::Occupied(first) if events[*first.get()] != *event => {
                let first = *first.get();
                return Err(BodyError::IdConflict { index, first, id });
            }
            Entry::Occupied(_) => {}
        }
    }
    Ok(())
}

/// The raw elements of a top-level array; an error names the element it is in.
fn array_elements(body: &[u8]) -> Result<Vec<&[u8]>, BodyError> {
    struct Elements<'c>(&'c Cell<usize>, &'c Cell<bool>);
    impl<'de> Visitor<'de> for Elements<'_> {
        type Value = Vec<&'de [u8]>;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("an array of events")
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
            let mut out = Vec::new();
            while let Some(raw) = seq.next_element::<&'de RawValue>()? {
                if out.len() == MAX_EVENTS_PER_REQUEST {
                    self.1.set(true);
                    return Err(serde::de::Error::custom("too many events"));
                }
                out.push(raw.get().as_bytes());
                self.0.set(out.len());
            }
            Ok(out)
        }
    }
    let (parsed, too_many) = (Cell::new(0), Cell::new(false));
    let mut de = serde_json::Deserializer::from_slice(body);
    let elements = de
        .deserialize_seq(Elements(&parsed, &too_many))
        .and_then(|v| de.end().map(|()| v));
    elements.map_err(|e| match too_many.get() {
        true => BodyError::TooMany,
        false => BodyError::Malformed {
            index: parsed.get(),
            reason: e.to_string(),
        },
    })
}

fn ndjson_lines(body: &[u8], whole: serde_json::Error) -> Result<Vec<&[u8]>, BodyError> {
    let lines: Vec<&[u8]> = body
        .split(|b| *b == b'\n')
        .filter(|l| !l.iter().all(u8::is_ascii_whitespace))
        .take(MAX_EVENTS_PER_REQUEST + 1)
        .collect();
    match lines.len() {
        0 | 1 => Err(BodyError::Malformed {
            index: 0,
            reason: whole.to_string(),
        }),
        n if n > MAX_EVENTS_PER_REQUEST => Err(BodyError::TooMany),
        _ => Ok(lines),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sources(body: &str) -> Vec<String> {
        parse_events(body.as_bytes(), 1024)
            .unwrap()
            .into_iter()
            .map(|e| e.source)
            .collect()
    }

    #[test]
    fn three_shapes() {
        assert_eq!(sources(r#"{"source":"a","data":1}"#), ["a"]);
        assert_eq!(
            sources(r#"[{"source":"a","data":1},{"source":"b","data":2}]"#),
            ["a", "b"]
        );
        assert_eq!(
            sources("{\"source\":\"a\",\"data\":1}\n\n{\"source\":\"b\",\"data\":[]}\r\n"),
            ["a", "b"]
        );
    }

    #[test]
    fn errors_name_index_and_field() {
        let err = parse_events(b"  \n", 1024).unwrap_err();
        assert_eq!(err, BodyError::Empty);
        assert_eq!(parse_events(b"[]", 1024).unwrap_err(), BodyError::Empty);
        let err = parse_events(b"{\"source\":", 1024).unwrap_err();
        assert_eq!(err.location(), (Some(0), None));
        let err = parse_events(b"{\"source\":\"a\",\"data\":1}\n{oops}\n", 1024).unwrap_err();
        assert_eq!(err.location(), (Some(1), None));
        let err =
            parse_events(br#"[{"source":"a","data":1},{"source":7,"data":1}]"#, 1024).unwrap_err();
        assert_eq!(err.location(), (Some(1), Some("source")));
        assert!(err.to_string().contains("event 1"), "{err}");
        let big = format!(r#"{{"source":"a","data":"{}"}}"#, "x".repeat(2000));
        let err = parse_events(big.as_bytes(), 1024).unwrap_err();
        assert!(err.is_oversize(), "{err}");
    }

    #[test]
    fn array_errors_name_the_element() {
        let err =
            parse_events(br#"[{"source":"a","data":1},{"source":"b","data":}]"#, 1024).unwrap_err();
        assert_eq!(err.location(), (Some(1), None), "{err}");
        let err = parse_events(
            br#"[{"source":"a","data":1},{"source":"b","data":2}] x"#,
            1024,
        )
        .unwrap_err();
        assert_eq!(err.location(), (Some(2), None), "{err}");
    }

    #[test]
    fn numbers_are_kept_or_refused() {
        let big = br#"[{"source":"a","data":1},{"source":"a","data":{"n":123456789012345678901234567890}}]"#;
        let err = parse_events(big, 1024).unwrap_err();
        assert_eq!(err.location(), (Some(1), Some("data")), "{err}");
        let ok = parse_events(
            br#"{"source":"a","data":[18446744073709551615,-1,0.1]}"#,
            1024,
        )
        .unwrap();
        assert_eq!(ok[0].data.to_string(), "[18446744073709551615,-1,0.1]");
    }

    #[test]
    fn repeated_ids_must_carry_the_same_event() {
        let id = "01936f0e-5b7c-7d2a-9c1e-2f0a3b4c5d6e";
        let same = format!(
            r#"[{{"id":"{id}","source":"a","data":1}},{{"id":"{id}","source":"a","data":1}}]"#
        );
        assert_eq!(parse_events(same.as_bytes(), 1024).unwrap().len(), 2);
        let other = format!(
            r#"[{{"id":"{id}","source":"a","data":1}},{{"source":"b","data":0}},{{"id":"{id}","source":"a","data":2}}]"#
        );
        let err = parse_events(other.as_bytes(), 1024).unwrap_err();
        assert!(
            matches!(
                err,
                BodyError::IdConflict {
                    index: 2,
                    first: 0,
                    ..
                }
            ),
            "{err}"
        );
        assert_eq!(err.location(), (Some(2), Some("id")));
    }
}
