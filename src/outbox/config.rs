//! The outbox's settings, from `[buffer]`.

use crate::config::{BufferConfig, Overflow};

/// Outbox settings, from `[buffer]`.
#[derive(Debug, Clone)]
pub struct OutboxConfig {
    /// Cap on buffered event bytes (keys + encoded values).
    pub max_bytes: u64,
    /// What happens when `max_bytes` would be exceeded.
    pub overflow: Overflow,
    /// sled page-cache cap, bytes.
    pub cache_bytes: u64,
    /// Delivered events whose ids are still remembered for idempotency.
    pub id_retention: u64,
    /// Free bytes kept on the data dir's filesystem; appends are refused below it.
    pub min_free_bytes: u64,
    /// Smallest store log compacted into a fresh store (0: never); see `outbox::compact`.
    pub compact_min_bytes: u64,
    /// Longest wait of a group commit for the appends it expects (0: none); see
    /// `writer::CommitDelay`.
    pub commit_delay_max: std::time::Duration,
}

impl From<&BufferConfig> for OutboxConfig {
    fn from(b: &BufferConfig) -> Self {
        Self {
            max_bytes: b.max_bytes,
            overflow: b.overflow,
            cache_bytes: b.cache_bytes,
            id_retention: b.id_retention,
            min_free_bytes: b.min_free_bytes,
            compact_min_bytes: b.compact_min_bytes,
            commit_delay_max: std::time::Duration::from_micros(b.commit_delay_max_us),
        }
    }
}
