//! edge-relay: a durable, resumable relay of gateway events to an upstream MCP server.
//!
//! Producers post events to the local ingest; the [`outbox`] commits them to sled (fsync) before
//! answering; the [`relay`] loop delivers them in seq order as `edge_ingest` tool calls over an
//! MCP session ([`uplink`]) and advances only on the upstream's `acked_seq`.
//!
//! Layout:
//! - [`aside`]: a store that cannot be opened is moved aside, never a crash loop.
//! - [`audit`]: exactly-once audit of accepted events against the upstream's store.
//! - [`config`]: TOML config, defaults, `validate()`, `Secret`.
//! - [`event`]: the event model and its validation.
//! - [`contract`]: `edge_ingest` / `edge_cursor` arguments and results.
//! - [`durable`]: sled flush plus the filesystem sync sled leaves out.
//! - [`outbox`]: sled outbox, group commit, batches after a cursor, acks, bounds.
//! - [`ingest`]: local producers (HTTP and the gateway's MQTT broker).
//! - [`inspect`]: `edge-relay inspect`, an offline look at a data dir.
//! - [`relay`]: the delivery loop, reconnect and backoff.
//! - [`reconnect`]: the one reconnect pacing (capped jittered backoff, its log line, its sleep).
//! - [`redact`]: URL userinfo and echoed tokens kept out of logs, status and errors.
//! - [`mosquitto`]: a private Mosquitto broker for the demo, tests and benchmarks.
//! - [`mqtt`]: MQTT 5 links (rumqttc v5) and MCP over MQTT topics.
//! - [`uplink`]: rmcp client session in either MCP era, Streamable HTTP over hyper, MQTT; failover over several upstreams.
//! - [`sink`]: the reference upstream (rmcp server + its sled store, or PostgreSQL for a fleet).
//! - [`status`]: status board, `/v1/status` and `/metrics`.
//! - [`http_serve`]: the shared HTTP/1.1 accept loop and its `Listener` seam.
//! - [`tls`]: rustls client configs from PEM files, the sink's HTTPS, TLS errors in words.
//! - [`probe`]: `edge-relay probe`, the era and contract check of an upstream.
//! - [`shutdown`]: SIGTERM/SIGINT to a cancellation token.
//! - [`heartbeat`]: progress heartbeats of the relay and writer loops, the watchdog's verdict.
//! - [`systemd`]: sd_notify `READY=1`, `STATUS=`, `WATCHDOG=1`, `STOPPING=1`.
//! - [`local_client`]: the CLI's HTTP client to a running daemon.
//! - [`demo`]: the end-to-end demo on the Daphnet recording.
//! - [`logging`]: journald or stderr.

// Lets test code shared with the integration tests (`sink/contract_cases.rs`) name the crate.
#[cfg(test)]
extern crate self as edge_relay;

pub mod aside;
pub mod audit;
pub mod config;
pub mod contract;
pub mod demo;
pub mod durable;
pub mod event;
pub mod heartbeat;
pub mod http_serve;
pub mod ingest;
pub mod inspect;
pub mod local_client;
pub mod logging;
pub mod mosquitto;
pub mod mqtt;
pub mod outbox;
pub mod probe;
pub mod reconnect;
pub mod redact;
pub mod relay;
pub mod shutdown;
pub mod sink;
pub mod status;
pub mod systemd;
pub mod tls;
pub mod uplink;

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use config::{Config, Secret, Transport};
use heartbeat::{Heartbeat, Watchdog};
use outbox::{Outbox, OutboxConfig};
use relay::{Connector, Relay};
use status::StatusBoard;
use uplink::SessionConfig;

/// A started daemon: its bound ingest address and handles for tests and the demo.
pub struct Daemon {
    /// Address the HTTP ingest listens on (useful with port 0).
    pub ingest_addr: SocketAddr,
    /// The outbox handle.
    pub outbox: Outbox,
    /// The relay's status board.
    pub status: Arc<StatusBoard>,
    /// Heartbeats of the relay and writer loops.
    pub heartbeats: Vec<Heartbeat>,
    shutdown: CancellationToken,
    task: JoinHandle<()>,
}

/// Opens the store, binds the ingest listener and starts the writer, ingest and relay tasks.
///
/// `connector` overrides the uplink built from `config.upstream` (tests, simulations).
///
/// # Errors
/// The data dir cannot be created or opened, the listener cannot bind, the token file cannot
/// be read, or the upstream config is unusable.
pub async fn start(
    config: Config,
    connector: Option<Box<dyn Connector>>,
) -> anyhow::Result<Daemon> {
    start_watched(config, connector, None).await
}

/// As [`start`], with the relay and writer loops ticking for a watchdog of `watchdog` (the
/// systemd interval), so that an idle but healthy loop still beats its [`Heartbeat`].
///
/// # Errors
/// As [`start`].
pub async fn start_watched(
    config: Config,
    connector: Option<Box<dyn Connector>>,
    watchdog: Option<std::time::Duration>,
) -> anyhow::Result<Daemon> {
    config.validate()?;
    let ingest_token = config
        .ingest
        .http
        .token_file
        .as_deref()
        .map(Secret::from_file)
        .transpose()
        .context("ingest.http.token_file")?;
    std::fs::create_dir_all(&config.data_dir)
        .with_context(|| format!("creating data dir {}", config.data_dir.display()))?;
    let outbox_config = OutboxConfig::from(&config.buffer);
    let ((outbox, writer), _moved) = aside::open_guarded(
        &config.data_dir,
        move |dir| Outbox::open(dir, outbox_config.clone()),
        outbox::OutboxError::is_unopenable,
        |e| outbox::OutboxError::Storage(sled::Error::Io(e)),
    )
    .with_context(|| format!("opening the outbox in {}", config.data_dir.display()))?;
    let listener = tokio::net::TcpListener::bind(config.ingest.http.listen)
        .await
        .with_context(|| format!("binding ingest.http.listen {}", config.ingest.http.listen))?;
    let ingest_addr = listener.local_addr()?;
    let status = Arc::new(StatusBoard::default());
    let connector = match connector {
        Some(c) => c,
        None => {
            let tls = upstream_tls(&config);
            status.watch_client_cert(tls.clone());
            build_connector_counted(&config, tls, Some(status.clone()))?
        }
    };
    status.set_stores_moved_aside(aside::list(&config.data_dir));
    let relay_beat = Heartbeat::new(
        "relay",
        watchdog,
        relay::longest_turn(config.relay.request_timeout()),
    );
    let writer_beat = Heartbeat::new("writer", watchdog, std::time::Duration::ZERO);
    let writer = writer.with_heartbeat(writer_beat.clone());
    let stats = outbox.stats();
    log::info!(gateway = config.gateway_id.as_str(), stream:% = stats.stream, next_seq = stats.next_seq,
        acked_seq = stats.acked_seq, backlog = stats.backlog_events;
        "outbox open in {}; ingest listening on http://{ingest_addr}", config.data_dir.display());

    let shutdown = CancellationToken::new();
    let ingest = ingest::http::IngestHttp::new(
        outbox.clone(),
        status.clone(),
        &config.gateway_id,
        &config.ingest.http,
        ingest_token,
    );
    let ingest_mqtt = match &config.ingest.mqtt {
        Some(mqtt) => {
            let password = mqtt
                .password_file
                .as_deref()
                .map(Secret::from_file)
                .transpose()
                .context("ingest.mqtt.password_file")?;
            let ingest =
                ingest::mqtt::IngestMqtt::new(outbox.clone(), &config.gateway_id, mqtt, password)
                    .max_event_bytes(config.ingest.http.max_event_bytes);
            status.watch_client_cert(ingest.tls().clone());
            Some(ingest)
        }
        None => None,
    };
    let session = SessionConfig::from_config(&config);
    let relay = Relay::new(
        outbox.clone(),
        status.clone(),
        &config.gateway_id,
        config.relay.clone(),
        session,
        connector,
    )
    .with_heartbeat(relay_beat.clone());
    let stop = shutdown.clone();
    let task = tokio::spawn(async move {
        // The writer outlives ingest and relay so that what they queued is committed.
        let writer_stop = CancellationToken::new();
        let writer = tokio::spawn(writer.run(writer_stop.clone()));
        let ingest = tokio::spawn(ingest.run(listener, stop.clone()));
        let ingest_mqtt = ingest_mqtt.map(|i| tokio::spawn(i.run(stop.clone())));
        let relay = tokio::spawn(relay.run(stop.clone()));
        stop.cancelled().await;
        let _ = ingest.await;
        if let Some(ingest_mqtt) = ingest_mqtt {
            let _ = ingest_mqtt.await;
        }
        let _ = relay.await;
        writer_stop.cancel();
        let _ = writer.await;
    });
    Ok(Daemon {
        ingest_addr,
        outbox,
        status,
        heartbeats: vec![relay_beat, writer_beat],
        shutdown,
        task,
    })
}

/// The uplink `config.upstream` asks for (HTTP or MQTT), with its token or password read.
///
/// # Errors
/// The token file cannot be read or the TLS client cannot be built.
pub fn build_connector(config: &Config) -> anyhow::Result<Box<dyn Connector>> {
    build_connector_with(config, upstream_tls(config))
}

/// As [`build_connector`], with the upstream's TLS settings given (whose clones share what
/// its connections saw: the certificates for `/metrics` and `probe`).
///
/// # Errors
/// As [`build_connector`].
pub fn build_connector_with(
    config: &Config,
    tls: tls::ClientTls,
) -> anyhow::Result<Box<dyn Connector>> {
    build_connector_counted(config, tls, None)
}

/// [`build_connector_with`]; with several `upstream.urls`, a
/// [`uplink::failover::FailoverConnector`] over them that counts its failovers on `status`.
///
/// # Errors
/// As [`build_connector`].
pub fn build_connector_counted(
    config: &Config,
    tls: tls::ClientTls,
    status: Option<Arc<StatusBoard>>,
) -> anyhow::Result<Box<dyn Connector>> {
    let token = config
        .upstream
        .token_file
        .as_deref()
        .map(Secret::from_file)
        .transpose()?;
    let one = |url: &str| -> anyhow::Result<Box<dyn Connector>> {
        match config.upstream.transport {
            Transport::Http => Ok(Box::new(uplink::http::HttpConnector::new(
                url,
                token.clone(),
                tls.clone(),
                config.relay.request_timeout(),
            )?)),
            Transport::Mqtt => Ok(Box::new(uplink::mqtt::MqttConnector::new(
                url,
                &config.upstream.server_name,
                token.clone(),
                tls.clone(),
                &config.gateway_id,
            ))),
        }
    };
    match config.upstream.endpoints()[..] {
        [url] => one(url),
        ref urls => {
            let upstreams = urls
                .iter()
                .map(|url| one(url))
                .collect::<anyhow::Result<_>>()?;
            Ok(Box::new(uplink::failover::FailoverConnector::new(
                upstreams, status,
            )))
        }
    }
}

/// The upstream's TLS settings (`[upstream.tls]`), for either transport.
pub fn upstream_tls(config: &Config) -> tls::ClientTls {
    tls::ClientTls::new("upstream.tls", config.upstream.tls.clone())
}

impl Daemon {
    /// Graceful stop: ingest stops accepting and drains, the in-flight batch finishes, the
    /// session closes, queued appends are committed; returns when all of it is done.
    pub async fn stop(self) {
        self.shutdown.cancel();
        let _ = self.task.await;
    }

    /// A token that stops the daemon when cancelled.
    pub fn shutdown_token(&self) -> CancellationToken {
        self.shutdown.clone()
    }

    /// Waits until the daemon has stopped (after its shutdown token was cancelled).
    pub async fn wait(self) {
        let _ = self.task.await;
    }
}

/// Runs the daemon until `shutdown` is cancelled (SIGTERM/SIGINT in `main`), speaking the
/// systemd notify protocol when `NOTIFY_SOCKET` is set: `READY=1` once the store is open and
/// the listener bound, `STATUS=` and heartbeat-driven `WATCHDOG=1` while running, `STOPPING=1`
/// when shutdown begins.
///
/// # Errors
/// As [`start`].
pub async fn run(config: Config, shutdown: CancellationToken) -> anyhow::Result<()> {
    let interval = systemd::watchdog_interval();
    let gateway = config.gateway_id.clone();
    let daemon = start_watched(config, None, interval).await?;
    let watchdog = interval.map(|i| Watchdog::new(i, daemon.heartbeats.clone()));
    let notifier = systemd::Notifier::new(
        daemon.status.clone(),
        daemon.outbox.clone(),
        &gateway,
        watchdog,
    );
    notifier.ready();
    let notifier = tokio::spawn(notifier.run(shutdown.clone()));
    shutdown.cancelled().await;
    // The notifier has returned before STOPPING=1, so no ping or status follows it.
    let _ = notifier.await;
    systemd::stopping();
    let stats = daemon.outbox.stats();
    log::info!(gateway = gateway.as_str(), stream:% = stats.stream, backlog = stats.backlog_events,
        acked_seq = stats.acked_seq; "shutting down");
    daemon.stop().await;
    Ok(())
}
