//! Why the reference upstream's store refused or failed a request.

use std::path::PathBuf;

/// Why the sink store refused or failed a request.
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    /// The batch breaks the contract (order, seq range, gap); nothing of it was stored.
    #[error("invalid batch: {0}")]
    InvalidBatch(String),
    /// The data dir could not be opened (bad path, or another process holds its lock).
    #[error("open sink store at {}: {source}", path.display())]
    Open {
        /// The data dir given to [`crate::sink::SinkStore::open`].
        path: PathBuf,
        /// sled's reason.
        source: sled::Error,
    },
    /// sled failed a read, write or fsync.
    #[error("sink storage: {0}")]
    Storage(#[from] sled::Error),
    /// PostgreSQL failed a statement or no connection could be had (the server's message).
    #[error("sink database: {0}")]
    Database(String),
    /// A stored record does not decode; the data dir is damaged.
    #[error("corrupt sink record: {0}")]
    Corrupt(String),
    /// A stored key or stream record does not decode; the data dir is damaged.
    #[error("corrupt sink record")]
    Key(#[from] crate::sink::keys::KeyError),
}

impl From<sled::transaction::TransactionError<std::convert::Infallible>> for SinkError {
    /// A transaction that cannot abort fails only on storage.
    fn from(e: sled::transaction::TransactionError<std::convert::Infallible>) -> Self {
        match e {
            sled::transaction::TransactionError::Abort(never) => match never {},
            sled::transaction::TransactionError::Storage(e) => SinkError::Storage(e),
        }
    }
}
