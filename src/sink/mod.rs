//! The reference upstream (DESIGN §2): an MCP server with `edge_ingest`/`edge_cursor` over its own sled store or a shared PostgreSQL database.

pub mod backend;
pub mod era;
mod error;
mod keys;
mod legacy;
pub mod mqtt;
pub mod postgres;
mod runs;
pub mod server;
pub mod store;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context as _;
use tokio_util::sync::CancellationToken;

pub use backend::SinkBackend;
pub use era::Eras;
pub use postgres::PgStore;
pub use server::{HttpOptions, SinkService, serve_http, serve_http_options, serve_http_with};
pub use store::{SinkError, SinkStore};

/// Where a sink node keeps what it receives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreLocation {
    /// Its own sled store in this directory (created if needed): one node.
    Dir(PathBuf),
    /// A PostgreSQL database (`postgres://...`), shared by any number of sink nodes.
    Postgres(String),
}

impl StoreLocation {
    /// Opens (creating or migrating if needed) the store.
    ///
    /// # Errors
    /// The data dir cannot be created or opened (e.g. another sink holds it); the database
    /// cannot be reached or migrated.
    pub async fn open(&self) -> anyhow::Result<SinkBackend> {
        Ok(match self {
            StoreLocation::Dir(dir) => {
                std::fs::create_dir_all(dir)
                    .with_context(|| format!("creating sink data dir {}", dir.display()))?;
                Arc::new(SinkStore::open(dir)?).into()
            }
            StoreLocation::Postgres(url) => {
                Arc::new(PgStore::connect(url).await.with_context(|| {
                    format!("opening the sink database {}", crate::redact::url(url))
                })?)
                .into()
            }
        })
    }
}

/// `edge-relay sink`: opens (creating if needed) the store at `store`, binds `listen` and
/// serves the MCP endpoint at `http://{listen}/mcp` until `shutdown`; with `mqtt`, also serves
/// the same tools and store over MCP over MQTT. Both serve the MCP revisions of `eras`.
///
/// # Errors
/// The store cannot be opened ([`StoreLocation::open`]), the address cannot be bound, or
/// [`serve_http`] fails.
pub async fn run(
    listen: SocketAddr,
    store: &StoreLocation,
    mqtt: Option<mqtt::MqttServe>,
    eras: Eras,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let store = store.open().await?;
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("binding the sink on {listen}"))?;
    let streams = store.streams().await?.len();
    log::info!(streams = streams; "sink store open");
    let over_mqtt = mqtt.map(|opts| {
        let serve = mqtt::serve_mqtt_eras(opts, eras, store.clone(), shutdown.clone());
        tokio::spawn(serve)
    });
    let options = HttpOptions {
        eras,
        ..HttpOptions::default()
    };
    serve_http_options(listener, store, shutdown, options).await?;
    if let Some(task) = over_mqtt {
        task.await??;
    }
    Ok(())
}
