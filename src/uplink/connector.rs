//! [`Connector`]: how the relay opens sessions to an upstream, one implementation per transport.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use super::{Session, SessionConfig, UplinkError};

/// A session start in flight, as a [`Connector`] returns it.
pub type Connecting<'a> = Pin<Box<dyn Future<Output = Result<Session, UplinkError>> + Send + 'a>>;

/// Opens sessions to the upstream; the seam between the relay loop and a transport
/// ([`super::http::HttpConnector`], [`super::mqtt::MqttConnector`],
/// [`super::failover::FailoverConnector`], or a test's own).
pub trait Connector: Send + Sync + 'static {
    /// Connects and starts a session in `config.era` (`server/discover` and/or `initialize`).
    fn connect(&self, config: SessionConfig) -> Connecting<'_>;

    /// Where it connects to, for logs and status (no secrets).
    fn describe(&self) -> String;

    /// The longest one [`Connector::connect`] can take by its own timeouts when each network
    /// exchange takes up to `request_timeout` (`relay.request_timeout_ms`). The relay's
    /// watchdog allows a silent connect this long. The default: two session starts (the
    /// second when the server serves only the `initialize` era, [`super::negotiate`]).
    fn longest_connect(&self, request_timeout: Duration) -> Duration {
        request_timeout * 2
    }
}

/// What a transport knows about one of its errors that rmcp's error types do not say.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TransportSignal {
    /// The server forgot the session (Streamable HTTP: 404 to a request carrying
    /// `Mcp-Session-Id`, MCP 2025-11-25, Basic/Transports, §Session Management).
    SessionExpired,
    /// The server asked to wait this long before the next attempt (HTTP 429/503 with
    /// `Retry-After`).
    Throttled(Duration),
}

/// A transport's reading of its own errors, given to [`Session::start`]: `None` when the error
/// is a plain transport failure.
pub type ReadTransportError =
    fn(&(dyn std::error::Error + Send + Sync + 'static)) -> Option<TransportSignal>;

/// [`ReadTransportError`] of a transport with nothing to add (MCP over MQTT).
pub fn nothing_to_read(
    _: &(dyn std::error::Error + Send + Sync + 'static),
) -> Option<TransportSignal> {
    None
}
