//! The outbox's counters as of the last fsync.

use uuid::Uuid;

/// Counters of the outbox as of the last fsync.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize)]
pub struct OutboxStats {
    /// This store's stream UUID.
    pub stream: Uuid,
    /// Next seq to assign; everything below it is durable.
    pub next_seq: u64,
    /// Highest seq the upstream acknowledged (0: none).
    pub acked_seq: u64,
    /// Events stored and not yet acknowledged or dropped.
    pub backlog_events: u64,
    /// Their bytes (keys + encoded values).
    pub backlog_bytes: u64,
    /// Events deleted by `drop_oldest` since the store was created.
    pub dropped_events: u64,
    /// Highest seq ever sent upstream (0: none), recorded durably before it is sent: no ack or
    /// acked seq can delete past it (docs/DESIGN.md §8). Stores of layout 1 start with
    /// `next_seq - 1` (what they sent is unknown).
    pub sent_seq: u64,
    /// Compactions into a fresh store since the outbox was opened (not stored; see
    /// `outbox::compact`).
    pub compactions: u64,
}
