//! Why an outbox operation failed.

use uuid::Uuid;

/// Outbox failures. `Full` and `DiskFull` map to HTTP 507, `Closed` and `Storage` to 503.
#[derive(Debug, Clone, thiserror::Error)]
pub enum OutboxError {
    /// `overflow = "reject"` and the events do not fit, or one request alone exceeds `max_bytes`.
    #[error("buffer full: {needed} more bytes do not fit ({used} of {max} bytes used)")]
    Full {
        /// Bytes the request needed.
        needed: u64,
        /// Bytes buffered now.
        used: u64,
        /// `buffer.max_bytes`.
        max: u64,
    },
    /// The data dir's filesystem has less than `buffer.min_free_bytes` free, or ran out of
    /// space during the write; nothing of the request was acknowledged. Acks and deletes go
    /// on, so space comes back as the upstream acknowledges.
    #[error(
        "disk full: {free} bytes free on the data dir's filesystem, {min_free} are kept free \
         for acks and deletes (buffer.min_free_bytes); retry later"
    )]
    DiskFull {
        /// Bytes available, from statvfs.
        free: u64,
        /// `buffer.min_free_bytes`.
        min_free: u64,
    },
    /// The daemon is shutting down; nothing of the request was stored.
    #[error("outbox is shutting down")]
    Closed,
    /// The store failed with an I/O error and is being reopened; retry shortly. The source is
    /// the error a write met, `None` for a request that found the store closed.
    #[error("outbox store is being reopened after an I/O error; retry shortly")]
    Reopening(#[source] Option<Box<OutboxError>>),
    /// sled or the disk failed (e.g. no space left); the request may be partly stored but was not
    /// acknowledged. Producers retrying with the same `id` get the original `seq`.
    #[error("storage error: {0}")]
    Storage(#[from] sled::Error),
    /// A producer-supplied `id` was stored before with another payload (HTTP 409); nothing of
    /// the request was stored.
    #[error("event {index}: id {id} was accepted before as seq {seq} with a different payload")]
    IdConflict {
        /// Position of the event in the request.
        index: usize,
        /// The reused id.
        id: Uuid,
        /// The seq it was stored under.
        seq: u64,
    },
    /// The store holds bytes this version cannot read.
    #[error("corrupt outbox record at seq {seq}: {reason}")]
    Corrupt {
        /// Seq of the record.
        seq: u64,
        /// What was wrong.
        reason: String,
    },
}

impl OutboxError {
    /// Whether the store itself cannot be opened (damage, a layout this build cannot read), so
    /// that it is moved aside ([`crate::aside`]); a held lock or a permission error is not.
    pub fn is_unopenable(&self) -> bool {
        match self {
            Self::Storage(e) => crate::durable::is_unopenable(e),
            Self::Corrupt { .. } => true,
            Self::Full { .. }
            | Self::DiskFull { .. }
            | Self::IdConflict { .. }
            | Self::Closed
            | Self::Reopening(_) => false,
        }
    }
}
