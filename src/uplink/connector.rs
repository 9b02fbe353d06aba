//! [`Connector`]: how the relay opens sessions to an upstream, one implementation per transport.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use super::error::UplinkError;
use super::session::{Session, SessionConfig};

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
    /// second when the server serves only the `initialize` era, [`super::session::negotiate`]).
    fn longest_connect(&self, request_timeout: Duration) -> Duration {
        request_timeout * 2
    }
}
