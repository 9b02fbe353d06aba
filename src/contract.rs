//! The upstream tool contract (DESIGN §2): arguments and results of `edge_ingest` and `edge_cursor`.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::event::Event;

/// Default name of the ingest tool.
pub const INGEST_TOOL: &str = "edge_ingest";
/// Default name of the cursor tool.
pub const CURSOR_TOOL: &str = "edge_cursor";
/// `clientInfo.name` the relay announces (DESIGN §2).
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

/// `edge_ingest` arguments: `{"gateway": str, "stream": uuid, "events": [Event], "gap"?: Gap}`.
///
/// `events` are in strictly increasing `seq` order. `gap`, when present, covers the seqs
/// between the upstream's cursor and the first event of this batch.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct IngestArgs {
    /// Gateway id (`gateway_id` in the relay's config).
    pub gateway: String,
    /// The outbox's stream UUID; a re-created store is a new stream.
    pub stream: Uuid,
    /// Events in seq order.
    #[schemars(with = "Vec<serde_json::Value>")]
    pub events: Vec<Event>,
    /// Dropped range the upstream must record before these events.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gap: Option<Gap>,
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
    /// Contiguous high-water mark; `None` = nothing stored yet.
    pub acked_seq: Option<u64>,
    /// Id of the event at `acked_seq`, `None` when that seq was a gap or nothing is stored.
    pub acked_id: Option<Uuid>,
}

impl Ack {
    /// The cursor as a plain number: 0 means "nothing acknowledged" (seqs start at 1).
    pub fn cursor(&self) -> u64 {
        self.acked_seq.unwrap_or(0)
    }
}
