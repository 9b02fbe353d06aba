//! `edge-relay sink`: the reference upstream, from its flags.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use crate::config::TlsConfig;
use crate::service::shutdown;
use crate::sink::{self, Eras, SinkOptions, StoreLocation};
use crate::tls::ClientTls;
use crate::tls::server::ServerTls;

/// Flags of `edge-relay sink`.
#[derive(clap::Args)]
pub struct SinkArgs {
    /// Listen address; the MCP endpoint is http://ADDR/mcp.
    #[arg(long, default_value = "127.0.0.1:8787")]
    pub listen: SocketAddr,
    /// Directory of the sink's own sled store.
    #[arg(long, default_value = "./edge-relay-sink-data")]
    pub data_dir: PathBuf,
    /// Store in this PostgreSQL database instead (postgres://user@host/db; several sink
    /// nodes may share one; README "Run a fleet").
    #[arg(long, env = "EDGE_RELAY_SINK_STORE", conflicts_with = "data_dir")]
    pub store: Option<String>,
    /// Also serve over MCP over MQTT through this broker (mqtt://HOST or mqtt://HOST:PORT, or mqtts://...).
    #[arg(long)]
    pub mqtt: Option<String>,
    /// server-name announced over MQTT.
    #[arg(long, default_value = "edge/ingest", requires = "mqtt")]
    pub server_name: String,
    /// MCP revisions served: both eras, only the current one (2026-07-28: server/discover,
    /// no sessions), or only the legacy initialize revisions (up to 2025-11-25).
    #[arg(long, value_enum, default_value_t = Eras::Both)]
    pub eras: Eras,
    /// Serve HTTPS with this certificate chain (PEM, leaf first); needs --tls-key.
    #[arg(long, requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// The private key of --tls-cert (PEM).
    #[arg(long, requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// Require client certificates signed by a CA in this PEM file (mutual TLS).
    #[arg(long, requires = "tls_cert")]
    pub client_ca: Option<PathBuf>,
    /// mqtts:// broker: trust only the CA(s) in this PEM file (default: the public roots).
    #[arg(long, requires = "mqtt")]
    pub mqtt_ca: Option<PathBuf>,
    /// mqtts:// broker: present this client certificate (PEM); needs --mqtt-key.
    #[arg(long, requires_all = ["mqtt", "mqtt_key"])]
    pub mqtt_cert: Option<PathBuf>,
    /// The private key of --mqtt-cert (PEM).
    #[arg(long, requires = "mqtt_cert")]
    pub mqtt_key: Option<PathBuf>,
}

impl SinkArgs {
    /// The sink's options these flags describe.
    pub fn options(self) -> SinkOptions {
        let mqtt = self.mqtt.map(|url| sink::mqtt::MqttServe {
            url,
            server_name: self.server_name,
            password: None,
            reconnect_max: sink::mqtt::BACKOFF.1,
        });
        let mqtt_tls = TlsConfig {
            ca_file: self.mqtt_ca,
            cert_file: self.mqtt_cert,
            key_file: self.mqtt_key,
            ..TlsConfig::default()
        };
        let client_ca_file = self.client_ca;
        let tls = self
            .tls_cert
            .zip(self.tls_key)
            .map(|(cert_file, key_file)| ServerTls {
                cert_file,
                key_file,
                client_ca_file,
            });
        SinkOptions {
            listen: self.listen,
            store: self
                .store
                .map_or(StoreLocation::Dir(self.data_dir), StoreLocation::Postgres),
            mqtt,
            mqtt_tls: Some(ClientTls::new("--mqtt", mqtt_tls)),
            eras: self.eras,
            tls,
        }
    }
}

/// Serves until SIGTERM/SIGINT.
///
/// # Errors
/// The store cannot be opened or the listener cannot bind (as [`sink::run`]).
pub async fn run(args: SinkArgs) -> anyhow::Result<ExitCode> {
    let token = shutdown::on_signals()?;
    sink::run(args.options(), token).await?;
    Ok(ExitCode::SUCCESS)
}
