//! The daemon's wiring, in one place: the store, the ingest, the relay and their tasks.
//!
//! `edge-relay run` ([`run`]), the demo, the tests, the turmoil simulation and the benchmarks
//! all start the daemon through [`start`]; what they replace is passed as [`Seams`].

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::aside;
use crate::config::{Config, Secret};
use crate::http_serve::Listener;
use crate::ingest::http::IngestHttp;
use crate::ingest::mqtt::IngestMqtt;
use crate::outbox::{Outbox, OutboxConfig, OutboxError, Writer};
use crate::relay::{self, Relay};
use crate::service::heartbeat::{Heartbeat, Watchdog};
use crate::service::systemd;
use crate::status::StatusBoard;
use crate::uplink::{self, Connector, SessionConfig};

/// What a caller of [`start`] replaces; [`Seams::default`] replaces nothing (what ships).
pub struct Seams<L = TcpListener> {
    /// The HTTP ingest's listener; `None`: bind `ingest.http.listen`.
    pub listener: Option<L>,
    /// Opens the upstream sessions; `None`: the uplink `config.upstream` describes
    /// ([`uplink::build_connector`]).
    pub connector: Option<Box<dyn Connector>>,
    /// The systemd watchdog interval: with it, the relay and writer loops tick (and beat their
    /// [`Heartbeat`]s) while idle.
    pub watchdog: Option<Duration>,
    /// The outbox's bounds; `None`: from `config.buffer`. The partition simulation uses it for
    /// a buffer smaller than `validate()` allows, so that its outages overflow it.
    pub outbox: Option<OutboxConfig>,
}

impl Default for Seams {
    fn default() -> Self {
        Self {
            listener: None,
            connector: None,
            watchdog: None,
            outbox: None,
        }
    }
}

impl Seams {
    /// The seams of a daemon whose upstream sessions `connector` opens.
    pub fn connector(connector: Box<dyn Connector>) -> Self {
        Self {
            connector: Some(connector),
            ..Self::default()
        }
    }
}

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

/// Opens the store (moving an unopenable one aside, [`aside`]), binds the ingest listener
/// unless `seams` gives one, and starts the writer, ingest (HTTP, and MQTT when configured) and
/// relay tasks.
///
/// # Errors
/// The config is invalid, the data dir cannot be created or opened, the listener cannot bind,
/// a token or password file cannot be read, or the upstream config is unusable.
pub async fn start<L: Listener>(config: Config, seams: Seams<L>) -> anyhow::Result<Daemon> {
    config.validate()?;
    let ingest_token =
        read_secret(config.ingest.http.token_file.as_deref()).context("ingest.http.token_file")?;
    std::fs::create_dir_all(&config.data_dir)
        .with_context(|| format!("creating data dir {}", config.data_dir.display()))?;
    let outbox_config = seams
        .outbox
        .unwrap_or_else(|| OutboxConfig::from(&config.buffer));
    let ((outbox, writer), _moved) = aside::open_guarded(
        &config.data_dir,
        move |dir| Outbox::open(dir, outbox_config.clone()),
        OutboxError::is_unopenable,
        |e| OutboxError::Storage(sled::Error::Io(e)),
    )
    .with_context(|| format!("opening the outbox in {}", config.data_dir.display()))?;
    let parts = Parts {
        config,
        ingest_token,
        outbox,
        writer,
    };
    match seams.listener {
        Some(listener) => launch(parts, listener, seams.connector, seams.watchdog),
        None => {
            let listen = parts.config.ingest.http.listen;
            let listener = TcpListener::bind(listen)
                .await
                .with_context(|| format!("binding ingest.http.listen {listen}"))?;
            launch(parts, listener, seams.connector, seams.watchdog)
        }
    }
}

/// What [`start`] opened before the listener.
struct Parts {
    config: Config,
    ingest_token: Option<Secret>,
    outbox: Outbox,
    writer: Writer,
}

fn read_secret(path: Option<&std::path::Path>) -> anyhow::Result<Option<Secret>> {
    path.map(Secret::from_file).transpose()
}

fn launch<L: Listener>(
    parts: Parts,
    listener: L,
    connector: Option<Box<dyn Connector>>,
    watchdog: Option<Duration>,
) -> anyhow::Result<Daemon> {
    let Parts {
        config,
        ingest_token,
        outbox,
        writer,
    } = parts;
    let ingest_addr = listener.local_addr()?;
    let status = Arc::new(StatusBoard::default());
    let connector = match connector {
        Some(c) => c,
        None => {
            let tls = uplink::upstream_tls(&config);
            status.watch_client_cert(tls.clone());
            uplink::build_connector(&config, tls, Some(status.clone()))?
        }
    };
    status.set_stores_moved_aside(aside::list(&config.data_dir));
    let request_timeout = config.relay.request_timeout();
    let relay_beat = Heartbeat::new(
        "relay",
        watchdog,
        relay::longest_turn(connector.as_ref(), request_timeout),
    );
    let writer_beat = Heartbeat::new("writer", watchdog, Duration::ZERO);
    let writer = writer.with_heartbeat(writer_beat.clone());
    let stats = outbox.stats();
    log::info!(gateway = config.gateway_id.as_str(), stream:% = stats.stream, next_seq = stats.next_seq,
        acked_seq = stats.acked_seq, backlog = stats.backlog_events;
        "outbox open in {}; ingest listening on http://{ingest_addr}", config.data_dir.display());

    let ingest = IngestHttp::new(
        outbox.clone(),
        status.clone(),
        &config.gateway_id,
        &config.ingest.http,
        ingest_token,
    );
    let ingest_mqtt = match &config.ingest.mqtt {
        Some(mqtt) => {
            let password =
                read_secret(mqtt.password_file.as_deref()).context("ingest.mqtt.password_file")?;
            let ingest = IngestMqtt::new(outbox.clone(), &config.gateway_id, mqtt, password)
                .max_event_bytes(config.ingest.http.max_event_bytes);
            status.watch_client_cert(ingest.tls().clone());
            Some(ingest)
        }
        None => None,
    };
    let relay = Relay::new(
        outbox.clone(),
        status.clone(),
        &config.gateway_id,
        config.relay.clone(),
        SessionConfig::from_config(&config),
        connector,
    )
    .with_heartbeat(relay_beat.clone());
    let shutdown = CancellationToken::new();
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

/// `edge-relay run`: the daemon until `shutdown` is cancelled (SIGTERM/SIGINT), speaking the
/// systemd notify protocol when `NOTIFY_SOCKET` is set: `READY=1` once the store is open and
/// the listener bound, `STATUS=` and heartbeat-driven `WATCHDOG=1` while running, `STOPPING=1`
/// when shutdown begins.
///
/// # Errors
/// As [`start`].
pub async fn run(config: Config, shutdown: CancellationToken) -> anyhow::Result<()> {
    let interval = systemd::watchdog_interval();
    let gateway = config.gateway_id.clone();
    let seams = Seams {
        watchdog: interval,
        ..Seams::default()
    };
    let daemon = start(config, seams).await?;
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
