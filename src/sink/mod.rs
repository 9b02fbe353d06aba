//! The reference upstream (DESIGN §2): an MCP server with `edge_ingest`/`edge_cursor` over its own sled store.

pub mod era;
mod error;
mod keys;
mod legacy;
pub mod mqtt;
mod runs;
pub mod server;
pub mod store;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use anyhow::Context as _;
use tokio_util::sync::CancellationToken;

pub use era::Eras;
pub use server::{HttpOptions, SinkService, serve_http, serve_http_options, serve_http_with};
pub use store::{SinkError, SinkStore};

/// `edge-relay sink`: opens (creating if needed) the store in `data_dir`, binds `listen` and
/// serves the MCP endpoint at `http://{listen}/mcp` until `shutdown`; with `mqtt`, also serves
/// the same tools and store over MCP over MQTT. Both serve the MCP revisions of `eras`.
///
/// # Errors
/// The data dir cannot be created or opened (e.g. another sink holds it), the address cannot
/// be bound, or [`serve_http`] fails.
pub async fn run(
    listen: SocketAddr,
    data_dir: &Path,
    mqtt: Option<mqtt::MqttServe>,
    eras: Eras,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    std::fs::create_dir_all(data_dir)
        .with_context(|| format!("creating sink data dir {}", data_dir.display()))?;
    let store = Arc::new(SinkStore::open(data_dir)?);
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("binding the sink on {listen}"))?;
    let streams = store.streams()?.len();
    log::info!(streams = streams; "sink store open in {}", data_dir.display());
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
