//! The event model (docs/DESIGN.md §2): what producers send, what the outbox stores, what the upstream gets.

use serde::{Deserialize, Serialize};
use serde_json::Value;
use uuid::Uuid;

/// Default cap on the encoded size of one event's `data`, in bytes (64 KiB).
pub const DEFAULT_MAX_EVENT_BYTES: usize = 64 * 1024;
/// Longest accepted `source`, in bytes.
pub const MAX_SOURCE_LEN: usize = 256;
/// Longest accepted `kind`, in bytes.
pub const MAX_KIND_LEN: usize = 64;
/// Longest accepted `time`, in bytes.
pub const MAX_TIME_LEN: usize = 64;
/// `kind` used when a producer gives none.
pub const DEFAULT_KIND: &str = "event";

/// A committed event: `seq` assigned by the outbox, strictly increasing, never reused.
///
/// Wire and storage shape:
/// `{"id":uuid,"seq":u64,"source":str,"kind":str,"time":rfc3339,"data":any}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    /// Producer idempotency key, or a fresh UUIDv7.
    pub id: Uuid,
    /// Position in this outbox's stream; the order key and the acked seq.
    pub seq: u64,
    /// Producer name: sensor id, tool name or local MQTT topic (1..=256 bytes).
    pub source: String,
    /// `sensor`, `tool` or another short string (1..=64 bytes).
    pub kind: String,
    /// Producer timestamp, else the gateway clock when the relay took the event (RFC 3339).
    /// Never used for ordering.
    pub time: String,
    /// Any JSON value, at most `max_event_bytes` when encoded.
    pub data: Value,
}

/// An event as a producer submits it, before validation and before a `seq` exists.
#[derive(Debug, Clone, PartialEq)]
pub struct NewEvent {
    /// Producer-supplied idempotency key, if any.
    pub id: Option<Uuid>,
    /// See [`Event::source`].
    pub source: String,
    /// See [`Event::kind`].
    pub kind: String,
    /// Producer timestamp, if given.
    pub time: Option<String>,
    /// See [`Event::data`].
    pub data: Value,
}

/// Why a submitted event was refused; names the field so a 4xx can say which.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("field `{field}`: {reason}")]
pub struct FieldError {
    /// JSON field name (`id`, `source`, `kind`, `time`, `data`, or `(event)` for the whole).
    pub field: &'static str,
    /// Human-readable reason.
    pub reason: String,
    /// `data`'s encoded size, bytes, when that is what exceeded the cap; `None` otherwise.
    pub oversize: Option<usize>,
}

impl FieldError {
    fn new(field: &'static str, reason: impl Into<String>) -> Self {
        Self {
            field,
            reason: reason.into(),
            oversize: None,
        }
    }
}

impl NewEvent {
    /// Checks one submitted JSON value against the event model.
    ///
    /// Accepts an object with `source` (string, required), `data` (required, any JSON),
    /// optional `id` (UUID string), `kind` (string, default `"event"`) and `time` (string).
    /// `seq` is assigned by the outbox and refused here; unknown fields are refused too.
    ///
    /// # Errors
    /// A [`FieldError`] naming the first offending field.
    pub fn from_json(value: Value, max_event_bytes: usize) -> Result<Self, FieldError> {
        let Value::Object(mut obj) = value else {
            return Err(FieldError::new("(event)", "expected a JSON object"));
        };
        let id = match obj.remove("id") {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) => Some(
                Uuid::parse_str(&s)
                    .map_err(|e| FieldError::new("id", format!("not a UUID: {e}")))?,
            ),
            Some(_) => return Err(FieldError::new("id", "expected a UUID string")),
        };
        let source = take_string(&mut obj, "source", MAX_SOURCE_LEN)?
            .ok_or_else(|| FieldError::new("source", "missing"))?;
        let kind =
            take_string(&mut obj, "kind", MAX_KIND_LEN)?.unwrap_or_else(|| DEFAULT_KIND.to_owned());
        let time = take_string(&mut obj, "time", MAX_TIME_LEN)?;
        if let Some(time) = &time {
            check_rfc3339(time)?;
        }
        let data = obj
            .remove("data")
            .ok_or_else(|| FieldError::new("data", "missing"))?;
        if let Some(field) = obj.keys().next() {
            let reason = if field == "seq" {
                "assigned by the relay; do not send it".to_owned()
            } else {
                format!("unknown field `{field}`")
            };
            return Err(FieldError {
                field: if field == "seq" { "seq" } else { "(event)" },
                reason,
                oversize: None,
            });
        }
        let size = encoded_len(&data);
        if size > max_event_bytes {
            return Err(FieldError {
                oversize: Some(size),
                ..FieldError::new(
                    "data",
                    format!("{size} bytes encoded, limit is {max_event_bytes}"),
                )
            });
        }
        Ok(Self {
            id,
            source,
            kind,
            time,
            data,
        })
    }

    /// [`NewEvent::from_json`] straight from the JSON text of one event, without building its
    /// top-level object: `Some` exactly when `raw` is one well-formed JSON object that
    /// `from_json` accepts, and then the same event. `None` means only "not decided here":
    /// duplicate or escaped-differently keys, any refusal, malformed text; the caller then takes
    /// the general path, which names the error. Numbers are not checked (see
    /// [`crate::ingest::numbers`]).
    pub fn from_json_text(raw: &[u8], max_event_bytes: usize) -> Option<Self> {
        let mut de = serde_json::Deserializer::from_slice(raw);
        let fields = serde::Deserializer::deserialize_map(&mut de, wire::Fields).ok()?;
        de.end().ok()?;
        let id = match fields.id {
            Some(s) => Some(Uuid::parse_str(&s).ok()?),
            None => None,
        };
        let fits = |s: &String, max: usize| !s.is_empty() && s.len() <= max;
        let source = fields.source?;
        let kind = fields.kind.unwrap_or_else(|| DEFAULT_KIND.to_owned());
        let time = fields.time;
        if !fits(&source, MAX_SOURCE_LEN) || !fits(&kind, MAX_KIND_LEN) {
            return None;
        }
        if let Some(time) = &time
            && (!fits(time, MAX_TIME_LEN) || check_rfc3339(time).is_err())
        {
            return None;
        }
        let data = fields.data?;
        if encoded_len(&data) > max_event_bytes {
            return None;
        }
        Some(Self {
            id,
            source,
            kind,
            time,
            data,
        })
    }

    /// A digest of what the producer submitted (`source`, `kind`, `time` as given, `data`), to
    /// tell a repeated `id` with the same payload (an idempotent retry) from one with another
    /// (a conflict). FNV-1a 64 over the JSON of those fields; object keys are sorted by
    /// serde_json's map, so the digest does not depend on their order in the request.
    ///
    /// The JSON is hashed as it is written, never held in memory.
    pub fn digest(&self) -> u64 {
        let mut fnv = Fnv1a(0xcbf2_9ce4_8422_2325);
        // Writing into the hasher cannot fail (nor can encoding these types): an error would
        // leave the digest of what was written so far, as the old `unwrap_or_default` did of
        // nothing.
        let _ = serde_json::to_writer(
            &mut fnv,
            &(&self.source, &self.kind, &self.time, &self.data),
        );
        fnv.0
    }

    /// Turns a validated submission into a committed event at `seq`.
    pub fn commit(self, seq: u64, id: Uuid, now: &str) -> Event {
        Event {
            id,
            seq,
            source: self.source,
            kind: self.kind,
            time: self.time.unwrap_or_else(|| now.to_owned()),
            data: self.data,
        }
    }
}

/// Bytes of `value` encoded as compact JSON (`serde_json::to_vec(value).len()`), counted as it
/// is written, without holding the encoding.
pub fn encoded_len(value: &Value) -> usize {
    let mut count = Count(0);
    // Counting cannot fail, nor can encoding a `Value`.
    let _ = serde_json::to_writer(&mut count, value);
    count.0
}

/// A writer that only counts the bytes written to it.
struct Count(usize);

impl std::io::Write for Count {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0 += buf.len();
        Ok(buf.len())
    }

    fn write_all(&mut self, buf: &[u8]) -> std::io::Result<()> {
        self.0 += buf.len();
        Ok(())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// A writer that folds the bytes written to it into an FNV-1a 64 hash.
struct Fnv1a(u64);

impl std::io::Write for Fnv1a {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.write_all(buf)?;
        Ok(buf.len())
    }

    fn write_all(&mut self, buf: &[u8]) -> std::io::Result<()> {
        self.0 = buf.iter().fold(self.0, |h, b| {
            (h ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3)
        });
        Ok(())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The fields of one submitted event object, read straight from its text
/// ([`NewEvent::from_json_text`]).
mod wire {
    use serde::de::{Error as _, MapAccess, Visitor};
    use serde_json::Value;

    /// The fields as sent: a string field absent or `null` is `None` (as in
    /// [`super::NewEvent::from_json`]); `data` is `None` only when absent (`null` is a value).
    #[derive(Default)]
    pub(super) struct Parts {
        pub(super) id: Option<String>,
        pub(super) source: Option<String>,
        pub(super) kind: Option<String>,
        pub(super) time: Option<String>,
        pub(super) data: Option<Value>,
    }

    #[derive(serde::Deserialize, Clone, Copy)]
    #[serde(field_identifier, rename_all = "lowercase")]
    enum Field {
        Id,
        Source,
        Kind,
        Time,
        Data,
    }

    /// Reads an object of the five known fields; anything else (another field, one twice,
    /// a value of another type) is an error, which only means "take the general path".
    pub(super) struct Fields;

    impl<'de> Visitor<'de> for Fields {
        type Value = Parts;

        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("an event object")
        }

        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Parts, A::Error> {
            let mut parts = Parts::default();
            let mut seen = 0u8;
            while let Some(field) = map.next_key::<Field>()? {
                let bit = 1 << field as u8;
                if seen & bit != 0 {
                    return Err(A::Error::custom("repeated field"));
                }
                seen |= bit;
                match field {
                    Field::Id => parts.id = map.next_value()?,
                    Field::Source => parts.source = map.next_value()?,
                    Field::Kind => parts.kind = map.next_value()?,
                    Field::Time => parts.time = map.next_value()?,
                    Field::Data => parts.data = Some(map.next_value()?),
                }
            }
            Ok(parts)
        }
    }
}

fn take_string(
    obj: &mut serde_json::Map<String, Value>,
    field: &'static str,
    max_len: usize,
) -> Result<Option<String>, FieldError> {
    match obj.remove(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if s.is_empty() => Err(FieldError::new(field, "empty string")),
        Some(Value::String(s)) if s.len() > max_len => Err(FieldError::new(
            field,
            format!("{} bytes, limit is {max_len}", s.len()),
        )),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(_) => Err(FieldError::new(field, "expected a string")),
    }
}

/// Refuses a `time` that is not an RFC 3339 date-time (`2026-11-21T05:00:00.015Z`,
/// `2026-11-21T07:00:00+02:00`): an upstream that validates it could refuse the batch forever.
fn check_rfc3339(time: &str) -> Result<(), FieldError> {
    chrono::DateTime::parse_from_rfc3339(time)
        .map(drop)
        .map_err(|e| {
            FieldError::new(
                "time",
                format!("not an RFC 3339 date-time like 2026-11-21T05:00:00.015Z: {e}"),
            )
        })
}

/// Current UTC time as RFC 3339 with millisecond precision, e.g. `2026-11-21T05:00:00.015Z`.
pub fn now_rfc3339() -> String {
    rfc3339_from_unix_ms(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as i64)
            .unwrap_or(0),
    )
}

/// Formats milliseconds since the Unix epoch as RFC 3339 UTC with milliseconds
/// (`2026-11-21T05:00:00.015Z`); a time outside chrono's ±262,000 years as the epoch.
pub fn rfc3339_from_unix_ms(ms: i64) -> String {
    // Out of chrono's range (beyond ±262,000 years) only by a broken clock: the epoch then.
    chrono::DateTime::from_timestamp_millis(ms)
        .unwrap_or(chrono::DateTime::UNIX_EPOCH)
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn accepts_minimal_and_full_events() {
        let e = NewEvent::from_json(json!({"source":"ankle","data":{"x":1}}), 1024).unwrap();
        assert_eq!(e.kind, DEFAULT_KIND);
        assert!(e.id.is_none());
        let id = "01936f0e-5b7c-7d2a-9c1e-2f0a3b4c5d6e";
        let e = NewEvent::from_json(
            json!({"id":id,"source":"a","kind":"tool","time":"2026-01-01T00:00:00Z","data":1}),
            1024,
        )
        .unwrap();
        assert_eq!(e.id.unwrap().to_string(), id);
        for time in [
            "2026-11-21T05:00:00.015Z",
            "2026-11-21T07:00:00+02:00",
            "2016-12-31T23:59:60Z",
        ] {
            let e = json!({"source":"a","data":1,"time":time});
            assert!(NewEvent::from_json(e, 1024).is_ok(), "{time}");
        }
    }

    #[test]
    fn names_the_offending_field() {
        let cases = [
            (json!([1]), "(event)"),
            (json!({"data":1}), "source"),
            (json!({"source":1,"data":1}), "source"),
            (json!({"source":"a"}), "data"),
            (json!({"source":"a","data":1,"id":"nope"}), "id"),
            (json!({"source":"a","data":1,"kind":""}), "kind"),
            (json!({"source":"a","data":1,"seq":3}), "seq"),
            (json!({"source":"a","data":1,"extra":3}), "(event)"),
            (json!({"source":"a","data":"x".repeat(100)}), "data"),
            (json!({"source":"a","data":1,"time":"yesterday"}), "time"),
            (
                json!({"source":"a","data":1,"time":"2026-13-45T99:99:99Z"}),
                "time",
            ),
            (
                json!({"source":"a","data":1,"time":"2026-02-29T00:00:00Z"}),
                "time",
            ),
            (
                json!({"source":"a","data":1,"time":"2026-01-01T00:00:00"}),
                "time",
            ),
            (json!({"source":"a","data":1,"time":1767225600}), "time"),
        ];
        for (value, field) in cases {
            let err = NewEvent::from_json(value.clone(), 64).unwrap_err();
            assert_eq!(err.field, field, "{value}: {err}");
        }
    }

    #[test]
    fn from_text_agrees_with_from_json() {
        let id = "01936f0e-5b7c-7d2a-9c1e-2f0a3b4c5d6e";
        let taken = [
            r#"{"source":"ankle","kind":"sensor","data":{"fwd":-12,"unit":"mg"}}"#.to_owned(),
            r#" {"data":null,"source":"a"} "#.to_owned(),
            r#"{"source":"a","kind":null,"time":null,"id":null,"data":[]}"#.to_owned(),
            r#"{"sourc\u0065":"\u00e9","data":"x"}"#.to_owned(),
            format!(r#"{{"id":"{id}","source":"a","time":"2026-11-21T07:00:00+02:00","data":1}}"#),
            format!(r#"{{"source":"a","data":"{}"}}"#, "x".repeat(62)),
        ];
        let general = [
            r#"{"source":"a","data":1,"source":"b"}"#.to_owned(),
            r#"{"source":"a","data":1,"data":2}"#.to_owned(),
            r#"{"source":"a","data":1,"kind":null,"kind":"k"}"#.to_owned(),
            r#"{"source":"a"}"#.to_owned(),
            r#"{"data":1}"#.to_owned(),
            r#"{"source":null,"data":1}"#.to_owned(),
            r#"{"source":"","data":1}"#.to_owned(),
            r#"{"source":"a","kind":"","data":1}"#.to_owned(),
            r#"{"source":"a","kind":7,"data":1}"#.to_owned(),
            r#"{"source":"a","time":"","data":1}"#.to_owned(),
            r#"{"source":"a","time":"yesterday","data":1}"#.to_owned(),
            r#"{"source":"a","id":"nope","data":1}"#.to_owned(),
            r#"{"source":"a","id":7,"data":1}"#.to_owned(),
            r#"{"source":"a","seq":1,"data":1}"#.to_owned(),
            r#"{"source":"a","extra":1,"data":1}"#.to_owned(),
            r#"{"source":"a","data":1} x"#.to_owned(),
            r#"{"source":"a","data":1"#.to_owned(),
            r#"[{"source":"a","data":1}]"#.to_owned(),
            format!(r#"{{"source":"a","data":"{}"}}"#, "x".repeat(63)),
            format!(
                r#"{{"source":"{}","data":1}}"#,
                "s".repeat(MAX_SOURCE_LEN + 1)
            ),
        ];
        let slow = |raw: &str| {
            serde_json::from_str::<Value>(raw)
                .ok()
                .and_then(|v| NewEvent::from_json(v, 64).ok())
        };
        for raw in &taken {
            let fast = NewEvent::from_json_text(raw.as_bytes(), 64);
            assert!(fast.is_some(), "{raw}");
            assert_eq!(fast, slow(raw), "{raw}");
        }
        for raw in &general {
            assert_eq!(NewEvent::from_json_text(raw.as_bytes(), 64), None, "{raw}");
        }
    }

    #[test]
    fn digest_and_size_are_those_of_the_encoded_json() {
        let fnv = |bytes: &[u8]| {
            bytes.iter().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
                (h ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3)
            })
        };
        for event in [
            json!({"source":"ankle","kind":"sensor","data":{"fwd":-12,"vert":990,"unit":"mg"}}),
            json!({"source":"a\"é\n","time":"2026-01-01T00:00:00Z","data":[1.5,"x",null]}),
        ] {
            let e = NewEvent::from_json(event, 1024).unwrap();
            let json = serde_json::to_vec(&(&e.source, &e.kind, &e.time, &e.data)).unwrap();
            assert_eq!(e.digest(), fnv(&json));
            let data = serde_json::to_vec(&e.data).unwrap();
            assert_eq!(encoded_len(&e.data), data.len());
        }
        // A fixed value: stored id index entries carry digests, which must not change.
        let e = NewEvent::from_json(json!({"source":"a","data":1}), 64).unwrap();
        assert_eq!(e.digest(), fnv(br#"["a","event",null,1]"#));
    }

    #[test]
    fn formats_rfc3339() {
        assert_eq!(rfc3339_from_unix_ms(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(
            rfc3339_from_unix_ms(1_795_237_200_015),
            "2026-11-21T05:00:00.015Z"
        );
        assert_eq!(
            rfc3339_from_unix_ms(951_782_400_000),
            "2000-02-29T00:00:00.000Z"
        );
    }
}
