//! MCP over MQTT harness: the reference upstream served through a real Mosquitto.

use std::path::Path;
use std::sync::Arc;

use edge_relay::config::{Config, Transport};
use edge_relay::sink::Eras;
use edge_relay::sink::SinkStore;
use edge_relay::sink::mqtt::{MqttServe, serve_mqtt_tls};
use edge_relay::tls::ClientTls;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// server-name the tests use.
pub const SERVER_NAME: &str = "test/ingest";

/// One sink instance serving `store` over MQTT (several may share a store and a name).
pub struct MqttSink {
    pub store: Arc<SinkStore>,
    stop: CancellationToken,
    task: JoinHandle<anyhow::Result<()>>,
}

impl MqttSink {
    /// Opens the store in `dir` and serves it through `broker`.
    pub fn open(dir: &Path, broker: &str) -> MqttSink {
        Self::serve(Arc::new(SinkStore::open(dir).unwrap()), broker)
    }

    /// Serves an already open store (a second instance of the same upstream).
    pub fn serve(store: Arc<SinkStore>, broker: &str) -> MqttSink {
        Self::serve_eras(store, broker, Eras::Both)
    }

    /// Serves `store` in the MCP revisions of `eras` only.
    pub fn serve_eras(store: Arc<SinkStore>, broker: &str, eras: Eras) -> MqttSink {
        Self::serve_tls(store, broker, eras, None)
    }

    /// Serves `store` through an `mqtts://` broker, connecting with `tls`.
    pub fn serve_tls(
        store: Arc<SinkStore>,
        broker: &str,
        eras: Eras,
        tls: Option<ClientTls>,
    ) -> MqttSink {
        let stop = CancellationToken::new();
        let opts = MqttServe {
            url: broker.to_owned(),
            server_name: SERVER_NAME.into(),
            password: None,
            reconnect_max: std::time::Duration::from_millis(300),
        };
        let task = tokio::spawn(serve_mqtt_tls(opts, tls, eras, store.clone(), stop.clone()));
        MqttSink { store, stop, task }
    }

    /// Graceful stop: sessions told `notifications/disconnected`, presence cleared.
    pub async fn stop(self) -> Arc<SinkStore> {
        self.stop.cancel();
        self.task.await.unwrap().unwrap();
        self.store
    }
}

/// A relay config whose uplink is MCP over MQTT through `broker`.
pub fn relay_config_mqtt(data_dir: &Path, broker: &str) -> Config {
    let mut c = super::relay_config(data_dir, "http://unused");
    c.upstream.transport = Transport::Mqtt;
    c.upstream.url = broker.to_owned();
    c.upstream.server_name = SERVER_NAME.into();
    c
}
