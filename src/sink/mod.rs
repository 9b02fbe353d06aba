//! The reference upstream (docs/DESIGN.md §11): an MCP server with `edge_ingest`/`edge_cursor` over its own sled store or a shared PostgreSQL database.

pub mod backend;
pub mod era;
mod error;
pub mod handle;
mod keys;
mod legacy;
pub mod mqtt;
pub mod postgres;
mod runs;
pub mod server;
pub mod store;
mod uncovered;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context as _;
use tokio_util::sync::CancellationToken;

pub use backend::SinkBackend;
pub use era::Eras;
pub use handle::{SinkHandle, SinkSpec, StoppedSink};
pub use postgres::PgStore;
pub use server::{HttpOptions, SinkService, serve_http, serve_http_options, serve_http_with};
pub use store::{SinkError, SinkStore};

use crate::tls::ClientTls;
use crate::tls::server::ServerTls;

/// What `edge-relay sink` serves, and where.
#[derive(Debug, Clone)]
pub struct SinkOptions {
    /// HTTP(S) listen address.
    pub listen: SocketAddr,
    /// Where the sink stores what it receives: its own sled dir, or PostgreSQL.
    pub store: StoreLocation,
    /// Also serve over MCP over MQTT through this broker.
    pub mqtt: Option<mqtt::MqttServe>,
    /// TLS settings for an `mqtts://` broker (`--mqtt-ca`, `--mqtt-cert`, `--mqtt-key`).
    pub mqtt_tls: Option<ClientTls>,
    /// MCP revisions served.
    pub eras: Eras,
    /// Serve HTTPS with these files instead of plain HTTP.
    pub tls: Option<ServerTls>,
}

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
/// serves the MCP endpoint at `http://{listen}/mcp` (`https://` with `tls`) until `shutdown`;
/// with `mqtt`, also serves the same tools and store over MCP over MQTT. Both serve the MCP
/// revisions of `eras`.
///
/// # Errors
/// The store cannot be opened ([`StoreLocation::open`]), the address cannot be bound, a TLS
/// file is unusable, or [`serve_http`] fails.
pub async fn run(options: SinkOptions, shutdown: CancellationToken) -> anyhow::Result<()> {
    let SinkOptions {
        listen,
        store,
        mqtt,
        mqtt_tls,
        eras,
        tls,
    } = options;
    let store = store.open().await?;
    let streams = store.streams().await?.len();
    log::info!(streams = streams; "sink store open");
    let client_certs = tls.as_ref().is_some_and(|t| t.client_ca_file.is_some());
    let with_tls = tls.is_some();
    let mut spec = SinkSpec {
        listen: Some(listen),
        tls,
        mqtt,
        mqtt_tls,
        eras,
    };
    let tasks = handle::spawn_faces(&mut spec, store, &shutdown).await?;
    if with_tls {
        log::info!(client_certificates_required = client_certs;
            "sink: TLS on; the MCP endpoint is https://{listen}{}", server::MCP_PATH);
    }
    for task in tasks {
        task.await??;
    }
    Ok(())
}
