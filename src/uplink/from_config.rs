//! The uplink `[upstream]` and `[relay]` describe: the one place a [`SessionConfig`] and a
//! [`Connector`] are built from a [`Config`].

use std::sync::Arc;

use super::connector::Connector;
use super::failover::FailoverConnector;
use super::http::HttpConnector;
use super::mqtt::MqttConnector;
use super::session::{EraChoice, SessionConfig};
use crate::config::{Config, Secret, Transport};
use crate::status::StatusBoard;
use crate::tls::ClientTls;

impl SessionConfig {
    /// The session `config.upstream` and `config.relay` describe, preferring the current era.
    pub fn from_config(config: &Config) -> Self {
        Self {
            ingest_tool: config.upstream.ingest_tool.clone(),
            cursor_tool: config.upstream.cursor_tool.clone(),
            request_timeout: config.relay.request_timeout(),
            era: EraChoice::PreferCurrent,
        }
    }
}

/// The upstream's TLS settings (`[upstream.tls]`), for either transport. Its clones share what
/// the connections saw (the certificates `/metrics` and `probe` report).
pub fn upstream_tls(config: &Config) -> ClientTls {
    ClientTls::new("upstream.tls", config.upstream.tls.clone())
}

/// The connector `config.upstream` asks for: HTTP or MQTT (`upstream.transport`), with its
/// token or password read from `upstream.token_file`, over `tls`; with several
/// `upstream.urls`, a [`FailoverConnector`] over them that counts its failovers on `status`.
///
/// # Errors
/// The token file cannot be read or the HTTP client cannot be built.
pub fn build_connector(
    config: &Config,
    tls: ClientTls,
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
            Transport::Http => Ok(Box::new(HttpConnector::new(
                url,
                token.clone(),
                tls.clone(),
                config.relay.request_timeout(),
            )?)),
            Transport::Mqtt => Ok(Box::new(MqttConnector::new(
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
            Ok(Box::new(FailoverConnector::new(upstreams, status)))
        }
    }
}
