//! The reference upstream in-process, stopped and restarted on the same store and address: the
//! one the demo, the tests and the benches run.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context as _;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::backend::SinkBackend;
use super::era::Eras;
use super::mqtt::{MqttServe, serve_mqtt_tls};
use super::server::{HttpOptions, MCP_PATH, serve_http_options};
use super::store::SinkStore;
use crate::tls::ClientTls;
use crate::tls::server::{ServerTls, TlsListener};

/// What a [`SinkHandle`] serves; kept across restarts.
#[derive(Debug, Clone)]
pub struct SinkSpec {
    /// HTTP(S) listen address; port 0 picks a free port, which restarts then keep. `None`
    /// serves no HTTP face (MCP over MQTT only).
    pub listen: Option<SocketAddr>,
    /// Serve HTTPS with these files instead of plain HTTP.
    pub tls: Option<ServerTls>,
    /// Also serve MCP over MQTT through this broker.
    pub mqtt: Option<MqttServe>,
    /// TLS settings for an `mqtts://` broker (`None`: the public roots, no client certificate).
    pub mqtt_tls: Option<ClientTls>,
    /// MCP revisions served.
    pub eras: Eras,
}

impl SinkSpec {
    /// Plain HTTP on a free loopback port, both MCP eras, no MQTT.
    pub fn http() -> Self {
        Self {
            listen: Some(SocketAddr::from(([127, 0, 0, 1], 0))),
            tls: None,
            mqtt: None,
            mqtt_tls: None,
            eras: Eras::Both,
        }
    }

    /// MCP over MQTT through `opts.url` only, both MCP eras.
    pub fn mqtt(opts: MqttServe) -> Self {
        Self {
            listen: None,
            mqtt: Some(opts),
            ..Self::http()
        }
    }
}

/// Where a [`SinkHandle`]'s store comes from, and so what a restart does with it.
#[derive(Clone)]
enum StoreSource {
    /// Opened from this sled dir at each start; a stop releases it (unless the caller holds a
    /// clone of [`SinkHandle::store`]).
    Dir(PathBuf),
    /// Opened by the caller and shared (several instances of one upstream); kept open.
    Shared(Arc<SinkStore>),
}

/// A stopped [`SinkHandle`]: what [`StoppedSink::start`] starts again (same address, same
/// store, same [`SinkSpec`]).
#[derive(Clone)]
pub struct StoppedSink {
    spec: SinkSpec,
    source: StoreSource,
}

impl StoppedSink {
    /// The HTTP address the sink had (and takes again), if it serves HTTP.
    pub fn addr(&self) -> Option<SocketAddr> {
        self.spec.listen
    }

    /// The sled dir of the store, unless the store was shared ([`SinkHandle::share`]).
    pub fn dir(&self) -> Option<&Path> {
        match &self.source {
            StoreSource::Dir(dir) => Some(dir),
            StoreSource::Shared(_) => None,
        }
    }

    /// Starts the sink again on its address and store.
    ///
    /// # Errors
    /// As [`SinkHandle::start`].
    pub async fn start(self) -> anyhow::Result<SinkHandle> {
        SinkHandle::launch(self.spec, self.source).await
    }
}

/// Serves `store` until `stop` as `spec` says, each face in its own task: HTTP(S) on
/// `spec.listen` (bound before this returns, and written back into `spec.listen`, so a port 0
/// becomes the port taken) and MCP over MQTT through `spec.mqtt`. `edge-relay sink` and
/// [`SinkHandle`] both start a sink this way.
///
/// # Errors
/// The address cannot be bound or a TLS file is unusable (nothing is left running then).
pub(super) async fn spawn_faces(
    spec: &mut SinkSpec,
    store: SinkBackend,
    stop: &CancellationToken,
) -> anyhow::Result<Vec<JoinHandle<anyhow::Result<()>>>> {
    let mut tasks = Vec::new();
    if let Some(listen) = spec.listen {
        let tls = spec.tls.as_ref().map(ServerTls::load).transpose()?;
        let listener = TcpListener::bind(listen)
            .await
            .with_context(|| format!("binding the sink on {listen}"))?;
        spec.listen = Some(listener.local_addr()?);
        let options = HttpOptions {
            eras: spec.eras,
            ..HttpOptions::default()
        };
        let (store, stop) = (store.clone(), stop.clone());
        tasks.push(match tls {
            Some(config) => {
                let listener = TlsListener::new(listener, config);
                tokio::spawn(serve_http_options(listener, store, stop, options))
            }
            None => tokio::spawn(serve_http_options(listener, store, stop, options)),
        });
    }
    if let Some(opts) = &spec.mqtt {
        let serve = serve_mqtt_tls(
            opts.clone(),
            spec.mqtt_tls.clone(),
            spec.eras,
            store,
            stop.clone(),
        );
        tasks.push(tokio::spawn(serve));
    }
    Ok(tasks)
}

/// The reference upstream serving one sled [`SinkStore`] over HTTP(S) and/or MCP over MQTT
/// until [`SinkHandle::stop`].
pub struct SinkHandle {
    spec: SinkSpec,
    source: StoreSource,
    store: Arc<SinkStore>,
    stop: CancellationToken,
    tasks: Vec<JoinHandle<anyhow::Result<()>>>,
}

impl SinkHandle {
    /// Opens (creating if needed) the store in `dir` and serves it as `spec` says. The HTTP
    /// port is bound before this returns, so clients may connect at once.
    ///
    /// # Errors
    /// The dir cannot be created or its store opened (another process holds it), the address
    /// cannot be bound, or a TLS file is unusable.
    pub async fn start(dir: &Path, spec: SinkSpec) -> anyhow::Result<Self> {
        Self::launch(spec, StoreSource::Dir(dir.to_owned())).await
    }

    /// Serves an already open store as `spec` says (a second instance of the same upstream);
    /// restarts keep serving that store.
    ///
    /// # Errors
    /// As [`SinkHandle::start`], without the store's.
    pub async fn share(store: Arc<SinkStore>, spec: SinkSpec) -> anyhow::Result<Self> {
        Self::launch(spec, StoreSource::Shared(store)).await
    }

    async fn launch(mut spec: SinkSpec, source: StoreSource) -> anyhow::Result<Self> {
        let store = match &source {
            StoreSource::Dir(dir) => {
                std::fs::create_dir_all(dir)
                    .with_context(|| format!("creating sink data dir {}", dir.display()))?;
                Arc::new(SinkStore::open(dir)?)
            }
            StoreSource::Shared(store) => store.clone(),
        };
        let stop = CancellationToken::new();
        let tasks = spawn_faces(&mut spec, store.clone().into(), &stop).await?;
        Ok(Self {
            spec,
            source,
            store,
            stop,
            tasks,
        })
    }

    /// The bound HTTP address.
    ///
    /// # Panics
    /// The sink serves no HTTP ([`SinkSpec::listen`] was `None`).
    pub fn addr(&self) -> SocketAddr {
        self.spec.listen.expect("this sink serves no HTTP")
    }

    /// The MCP endpoint, `http://{addr}/mcp` (`https://` with TLS).
    ///
    /// # Panics
    /// As [`SinkHandle::addr`].
    pub fn url(&self) -> String {
        let scheme = if self.spec.tls.is_some() {
            "https"
        } else {
            "http"
        };
        format!("{scheme}://{}{MCP_PATH}", self.addr())
    }

    /// The store served.
    pub fn store(&self) -> &Arc<SinkStore> {
        &self.store
    }

    /// What this sink serves (with the bound HTTP address).
    pub fn spec(&self) -> &SinkSpec {
        &self.spec
    }

    /// Stops both faces: HTTP connections are dropped at once (an abrupt upstream stop), MQTT
    /// sessions are told `notifications/disconnected`. Returns once no task holds the store, so
    /// a store opened from a dir is released (unless the caller holds a clone of it).
    ///
    /// # Errors
    /// A face failed while serving, or MCP sessions still held the store after the sink's
    /// release timeout.
    pub async fn stop(self) -> anyhow::Result<StoppedSink> {
        self.stop.cancel();
        for task in self.tasks {
            task.await.context("sink task panicked")??;
        }
        drop(self.store);
        Ok(StoppedSink {
            spec: self.spec,
            source: self.source,
        })
    }

    /// [`SinkHandle::stop`], then [`StoppedSink::start`]: same address and store, sessions
    /// forgotten.
    ///
    /// # Errors
    /// As those two.
    pub async fn restart(self) -> anyhow::Result<Self> {
        self.stop().await?.start().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn restarts_on_the_same_address_and_store() {
        let tmp = tempfile::tempdir().unwrap();
        let sink = SinkHandle::start(&tmp.path().join("sink"), SinkSpec::http())
            .await
            .unwrap();
        let addr = sink.addr();
        assert_ne!(addr.port(), 0);
        assert_eq!(sink.url(), format!("http://{addr}/mcp"));
        let stopped = sink.stop().await.unwrap();
        assert_eq!(stopped.addr(), Some(addr));
        // The store was released: the dir opens again, here and in the restarted sink.
        drop(SinkStore::open(stopped.dir().unwrap()).unwrap());
        let sink = stopped.start().await.unwrap().restart().await.unwrap();
        assert_eq!(sink.addr(), addr);
        tokio::net::TcpStream::connect(addr).await.unwrap();
        sink.stop().await.unwrap();
    }
}
