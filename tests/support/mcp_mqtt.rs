//! MCP over MQTT harness: the reference upstream served through a real Mosquitto.

use std::path::Path;
use std::sync::Arc;

use edge_relay::config::{Config, Transport};
use edge_relay::sink::mqtt::MqttServe;
use edge_relay::sink::{Eras, SinkHandle, SinkSpec, SinkStore};
use edge_relay::tls::ClientTls;

/// server-name the tests use.
pub const SERVER_NAME: &str = "test/ingest";

/// One sink instance serving a store over MQTT only ([`SinkHandle`]; several may share a
/// store and a name); the constructors panic on failure.
pub struct MqttSink(SinkHandle);

impl std::ops::Deref for MqttSink {
    type Target = SinkHandle;
    fn deref(&self) -> &SinkHandle {
        &self.0
    }
}

impl MqttSink {
    /// Opens the store in `dir` and serves it through `broker`.
    pub async fn open(dir: &Path, broker: &str) -> MqttSink {
        Self::serve(Arc::new(SinkStore::open(dir).unwrap()), broker).await
    }

    /// Serves an already open store (a second instance of the same upstream).
    pub async fn serve(store: Arc<SinkStore>, broker: &str) -> MqttSink {
        Self::serve_eras(store, broker, Eras::Both).await
    }

    /// Serves `store` in the MCP revisions of `eras` only.
    pub async fn serve_eras(store: Arc<SinkStore>, broker: &str, eras: Eras) -> MqttSink {
        Self::serve_tls(store, broker, eras, None).await
    }

    /// Serves `store` through an `mqtts://` broker, connecting with `tls`.
    pub async fn serve_tls(
        store: Arc<SinkStore>,
        broker: &str,
        eras: Eras,
        tls: Option<ClientTls>,
    ) -> MqttSink {
        let spec = SinkSpec {
            mqtt_tls: tls,
            eras,
            ..SinkSpec::mqtt(MqttServe {
                url: broker.to_owned(),
                server_name: SERVER_NAME.into(),
                password: None,
                reconnect_max: std::time::Duration::from_millis(300),
            })
        };
        MqttSink(SinkHandle::share(store, spec).await.unwrap())
    }

    /// Graceful stop: sessions told `notifications/disconnected`, presence cleared. Returns
    /// the store, still open.
    pub async fn stop(self) -> Arc<SinkStore> {
        let store = self.0.store().clone();
        self.0.stop().await.unwrap();
        store
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
