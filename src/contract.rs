//! The upstream tool contract (docs/DESIGN.md §3): arguments and results of `edge_ingest` and
//! `edge_cursor`; and the relay's answer to producers ([`IngestAnswer`]).

pub mod answer;
pub mod packed;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use uuid::Uuid;

use crate::event::Event;
pub use answer::IngestAnswer;
pub use packed::EVENTS_ZSTD;

/// Default name of the ingest tool.
pub const INGEST_TOOL: &str = "edge_ingest";
/// Default name of the `edge_cursor` tool.
pub const CURSOR_TOOL: &str = "edge_cursor";
/// `clientInfo.name` the relay announces.
pub const CLIENT_NAME: &str = "edge-relay";

/// A hole in a stream left by the `drop_oldest` overflow policy: seqs `dropped_from..=dropped_to`
/// were accepted from producers but will never be delivered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Gap {
    /// First missing seq (inclusive).
    pub dropped_from: u64,
    /// Last missing seq (inclusive), `>= dropped_from`.
    pub dropped_to: u64,
}

/// `edge_ingest` arguments: `{"gateway": str, "stream": uuid, "events": [Event],
/// "events_zstd"?: str, "gap"?: Gap}`.
///
/// `events` are in strictly increasing `seq` order. `gap`, when present, covers the seqs
/// between the upstream's acked seq and the first event of this batch.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct IngestArgs {
    /// Gateway id (`gateway_id` in the relay's config).
    pub gateway: String,
    /// The outbox's stream UUID; a re-created store is a new stream.
    pub stream: Uuid,
    /// Events in seq order (empty when they come as `events_zstd`).
    #[schemars(with = "Vec<serde_json::Value>")]
    #[serde(default)]
    pub events: Vec<Event>,
    /// The events as one zstd frame of NDJSON, base64 ([`packed`]), instead of `events`;
    /// sent only to an upstream whose `inputSchema` lists it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub events_zstd: Option<String>,
    /// Dropped range the upstream must record before these events.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gap: Option<Gap>,
}

impl IngestArgs {
    /// The arguments with `events_zstd`, if given, decoded into `events` (at most `max_bytes`
    /// of NDJSON decompressed).
    ///
    /// # Errors
    /// A message for the caller: both `events` and `events_zstd` carry events, or
    /// [`packed::unpack`] refused the value.
    pub fn expanded(mut self, max_bytes: usize) -> Result<Self, String> {
        if let Some(packed) = self.events_zstd.take() {
            if !self.events.is_empty() {
                return Err(format!("both `events` and `{EVENTS_ZSTD}` given; send one"));
            }
            self.events = packed::unpack(&packed, max_bytes)?;
        }
        Ok(self)
    }
}

/// An `edge_ingest` call as the relay sends it: its events still as the outbox stores them.
#[derive(Debug, Clone)]
pub struct IngestBatch {
    /// Gateway id.
    pub gateway: String,
    /// Stream UUID.
    pub stream: Uuid,
    /// The events' JSON, one per line, in seq order (empty for a gap alone).
    pub ndjson: Vec<u8>,
    /// Dropped range before these events.
    pub gap: Option<Gap>,
}

impl IngestBatch {
    /// The tool's arguments ([`IngestArgs`] on the wire): with `packed`, the events as
    /// `events_zstd` (and `events: []`); else `events`, each line parsed once into the JSON
    /// value the transport sends.
    ///
    /// # Errors
    /// A stored line that is not JSON (a damaged outbox).
    pub fn arguments(&self, packed: bool) -> Result<Map<String, Value>, serde_json::Error> {
        let mut args = Map::new();
        args.insert("gateway".into(), Value::String(self.gateway.clone()));
        args.insert("stream".into(), Value::String(self.stream.to_string()));
        let events = if packed && !self.ndjson.is_empty() {
            args.insert(
                EVENTS_ZSTD.into(),
                Value::String(packed::pack(&self.ndjson)),
            );
            Vec::new()
        } else {
            serde_json::Deserializer::from_slice(&self.ndjson)
                .into_iter::<Value>()
                .collect::<Result<_, _>>()?
        };
        args.insert("events".into(), Value::Array(events));
        if let Some(gap) = self.gap {
            args.insert("gap".into(), serde_json::to_value(gap)?);
        }
        Ok(args)
    }
}

/// `edge_cursor` arguments: `{"gateway": str, "stream": uuid}`.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct CursorArgs {
    /// Gateway id.
    pub gateway: String,
    /// Stream UUID.
    pub stream: Uuid,
}

/// Result (`structuredContent`) of both tools: the highest seq of this stream the upstream has
/// durably stored contiguously from the start (gaps count as stored), and that event's id.
///
/// `acked_seq` is `null` from `edge_cursor` when the upstream has nothing of this stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Ack {
    /// Contiguous acked seq; `None` = nothing stored yet.
    pub acked_seq: Option<u64>,
    /// Id of the event at `acked_seq`, `None` when that seq was a gap or nothing is stored.
    pub acked_id: Option<Uuid>,
}

impl Ack {
    /// The acked seq as a plain number: 0 means "nothing acknowledged" (seqs start at 1).
    pub fn acked_seq_or_zero(&self) -> u64 {
        self.acked_seq.unwrap_or(0)
    }
}
