//! The Streamable HTTP uplink: rmcp's client transport over our hyper client, as a [`Connector`].

use std::time::Duration;

use rmcp::transport::StreamableHttpClientTransport;
use rmcp::transport::streamable_http_client::{
    StreamableHttpClientTransportConfig, StreamableHttpError,
};

use hyper_util::client::legacy::connect::Connect;

use super::connector::{Connecting, Connector};
use super::error::{TransportSignal, UplinkError};
use super::http_client::{DefaultConnector, HttpClientError, HttpTimeouts, HyperHttpClient};
use super::session::{Session, SessionConfig, negotiate};
use crate::config::Secret;
use crate::tls::ClientTls;

/// TCP (and TLS) connect timeout of the HTTP uplink.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Opens MCP sessions over Streamable HTTP (MCP 2026-07-28 and 2025-11-25, Basic/Transports,
/// Streamable HTTP): sessionless in the current era, with `Mcp-Session-Id` in the legacy one.
///
/// `C` is the TCP/TLS connector of its [`HyperHttpClient`] (the network seam).
pub struct HttpConnector<C = DefaultConnector> {
    url: String,
    token: Option<Secret>,
    client: HyperHttpClient<C>,
}

impl HttpConnector {
    /// A connector for the MCP endpoint `url` (`http://` or `https://`, TLS by rustls per
    /// `tls`, its files read for each new connection), sending `Authorization: Bearer <token>`
    /// when a token is given. `request_timeout` bounds the wait for each response's headers.
    ///
    /// # Errors
    /// A timeout is zero.
    pub fn new(
        url: &str,
        token: Option<Secret>,
        tls: ClientTls,
        request_timeout: Duration,
    ) -> anyhow::Result<Self> {
        let timeouts = HttpTimeouts {
            connect: CONNECT_TIMEOUT,
            response_headers: request_timeout,
        };
        let client = HyperHttpClient::with_tls(timeouts, tls)?;
        Ok(Self::with_client(url, token, client))
    }
}

impl<C: Connect + Clone + Send + Sync + 'static> HttpConnector<C> {
    /// A connector for the MCP endpoint `url` over an already built `client`.
    pub fn with_client(url: &str, token: Option<Secret>, client: HyperHttpClient<C>) -> Self {
        Self {
            url: url.to_owned(),
            token,
            client,
        }
    }
}

impl<C: Connect + Clone + Send + Sync + 'static> HttpConnector<C> {
    /// One session start in `config.era` on a fresh transport (no session id yet).
    async fn open(&self, config: SessionConfig) -> Result<Session, UplinkError> {
        let mut transport_config = StreamableHttpClientTransportConfig::with_uri(self.url.as_str());
        // The relay loop owns session recovery: a new session always starts with edge_cursor.
        transport_config.reinit_on_expired_session = false;
        transport_config.auth_header = self.token.as_ref().map(|t| t.expose().to_owned());
        let transport =
            StreamableHttpClientTransport::with_client(self.client.clone(), transport_config);
        Session::start(transport, config, read_http_error).await
    }
}

/// What an error of rmcp's Streamable HTTP transport over our client says: 404 to a request
/// carrying `Mcp-Session-Id` is an expired session; 429/503 with `Retry-After` is a throttle.
fn read_http_error(
    error: &(dyn std::error::Error + Send + Sync + 'static),
) -> Option<TransportSignal> {
    match error.downcast_ref::<StreamableHttpError<HttpClientError>>()? {
        StreamableHttpError::SessionExpired => Some(TransportSignal::SessionExpired),
        StreamableHttpError::Client(e) => e.retry_after().map(TransportSignal::Throttled),
        _ => None,
    }
}

impl<C: Connect + Clone + Send + Sync + 'static> Connector for HttpConnector<C> {
    fn connect(&self, config: SessionConfig) -> Connecting<'_> {
        Box::pin(negotiate(config, |c| self.open(c)))
    }

    /// The endpoint with any userinfo masked (it is logged and shown in status).
    fn describe(&self) -> String {
        crate::redact::url(&self.url).into_owned()
    }
}
