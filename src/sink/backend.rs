//! The sink's store, whichever it is: the embedded sled store or a PostgreSQL database shared by several sink nodes.

use std::sync::Arc;

use uuid::Uuid;

use crate::contract::{Ack, Gap, IngestArgs};
use crate::event::Event;
use crate::sink::error::SinkError;
use crate::sink::postgres::PgStore;
use crate::sink::store::{SinkStats, SinkStore};

/// One sink store behind the MCP tools (docs/DESIGN.md §11). Both give the same answers to the same
/// calls (the contract tests run against both); cheap to clone (an `Arc`).
#[derive(Clone)]
pub enum SinkBackend {
    /// The embedded sled store in a data dir: one node, no outside service (the default).
    Sled(Arc<SinkStore>),
    /// A PostgreSQL database: any number of sink nodes on one database.
    Postgres(Arc<PgStore>),
}

impl From<Arc<SinkStore>> for SinkBackend {
    fn from(store: Arc<SinkStore>) -> Self {
        SinkBackend::Sled(store)
    }
}

impl From<Arc<PgStore>> for SinkBackend {
    fn from(store: Arc<PgStore>) -> Self {
        SinkBackend::Postgres(store)
    }
}

impl SinkBackend {
    /// `edge_ingest`: see [`SinkStore::ingest`] and [`PgStore::ingest`] (same answers).
    ///
    /// # Errors
    /// [`SinkError::InvalidBatch`] (nothing stored), or a storage or database failure.
    pub async fn ingest(&self, args: &IngestArgs) -> Result<Ack, SinkError> {
        match self {
            SinkBackend::Sled(store) => store.ingest(args).await,
            SinkBackend::Postgres(store) => store.ingest(args).await,
        }
    }

    /// `edge_cursor`: the stream's durable acked seq.
    ///
    /// # Errors
    /// A storage or database failure.
    pub async fn cursor(&self, gateway: &str, stream: Uuid) -> Result<Ack, SinkError> {
        match self {
            SinkBackend::Sled(store) => store.cursor(gateway, stream).await,
            SinkBackend::Postgres(store) => store.cursor(gateway, stream).await,
        }
    }

    /// All stored events of a stream, in seq order (empty for an unknown stream).
    ///
    /// # Errors
    /// A storage or database failure, or a record that does not decode.
    pub async fn events(&self, gateway: &str, stream: Uuid) -> Result<Vec<Event>, SinkError> {
        match self {
            SinkBackend::Sled(store) => store.events(gateway, stream),
            SinkBackend::Postgres(store) => store.events(gateway, stream).await,
        }
    }

    /// Recorded gaps of a stream, merged, in seq order.
    ///
    /// # Errors
    /// A storage or database failure.
    pub async fn gaps(&self, gateway: &str, stream: Uuid) -> Result<Vec<Gap>, SinkError> {
        match self {
            SinkBackend::Sled(store) => store.gaps(gateway, stream),
            SinkBackend::Postgres(store) => store.gaps(gateway, stream).await,
        }
    }

    /// Every known (gateway, stream), sorted.
    ///
    /// # Errors
    /// A storage or database failure.
    pub async fn streams(&self) -> Result<Vec<(String, Uuid)>, SinkError> {
        match self {
            SinkBackend::Sled(store) => store.streams(),
            SinkBackend::Postgres(store) => store.streams().await,
        }
    }

    /// Counters of this node since it opened its store (not shared between nodes).
    pub fn stats(&self) -> SinkStats {
        match self {
            SinkBackend::Sled(store) => store.stats(),
            SinkBackend::Postgres(store) => store.stats(),
        }
    }
}
