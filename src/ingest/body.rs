//! Parsing a `POST /v1/events` body: one JSON event, a JSON array of events, or NDJSON.

use serde_json::Value;

use crate::event::NewEvent;

/// Most events accepted in one request.
pub const MAX_EVENTS_PER_REQUEST: usize = 100_000;

/// Why a body was refused. Nothing of a refused body is stored.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum BodyError {
    /// Zero bytes, only whitespace, or an empty array.
    #[error("empty body: send one JSON event, a JSON array of events, or NDJSON")]
    Empty,
    /// Not JSON (or a bad NDJSON line); `index` is the event index (NDJSON: line's event index).
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
    /// More than [`MAX_EVENTS_PER_REQUEST`] events.
    #[error("too many events in one request: {count} (limit {MAX_EVENTS_PER_REQUEST})")]
    TooMany {
        /// Events found.
        count: usize,
    },
}

impl BodyError {
    /// Event index and field the error points at, for the JSON error body.
    pub fn location(&self) -> (Option<usize>, Option<&'static str>) {
        match self {
            Self::Malformed { index, .. } => (Some(*index), None),
            Self::Invalid { index, source } => (Some(*index), Some(source.field)),
            _ => (None, None),
        }
    }

    /// True when the event's `data` exceeded the size limit (answered with 413).
    pub fn is_oversize(&self) -> bool {
        matches!(self, Self::Invalid { source, .. } if source.field == "data" && source.reason.contains("limit"))
    }
}

/// Parses and validates every event of a body; all or nothing.
///
/// Shape detection: a body that parses as one JSON value is an object (one event) or an array;
/// otherwise it is read as NDJSON, one event per non-blank line.
///
/// # Errors
/// The first [`BodyError`], naming the event index and field.
pub fn parse_events(body: &[u8], max_event_bytes: usize) -> Result<Vec<NewEvent>, BodyError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err(BodyError::Empty);
    }
    let values = match serde_json::from_slice::<Value>(body) {
        Ok(Value::Array(items)) => items,
        Ok(value) => vec![value],
        Err(whole) => parse_ndjson(body, whole)?,
    };
    if values.is_empty() {
        return Err(BodyError::Empty);
    }
    if values.len() > MAX_EVENTS_PER_REQUEST {
        return Err(BodyError::TooMany {
            count: values.len(),
        });
    }
    values
        .into_iter()
        .enumerate()
        .map(|(index, value)| {
            NewEvent::from_json(value, max_event_bytes)
                .map_err(|source| BodyError::Invalid { index, source })
        })
        .collect()
}

fn parse_ndjson(body: &[u8], whole: serde_json::Error) -> Result<Vec<Value>, BodyError> {
    let lines: Vec<&[u8]> = body
        .split(|b| *b == b'\n')
        .filter(|l| !l.iter().all(u8::is_ascii_whitespace))
        .collect();
    if lines.len() < 2 {
        return Err(BodyError::Malformed {
            index: 0,
            reason: whole.to_string(),
        });
    }
    lines
        .into_iter()
        .enumerate()
        .map(|(index, line)| {
            serde_json::from_slice(line).map_err(|e| BodyError::Malformed {
                index,
                reason: e.to_string(),
            })
        })
        .collect()
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
}
