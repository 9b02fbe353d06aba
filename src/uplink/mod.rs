//! The MCP client session to the upstream (docs/DESIGN.md §9): rmcp's client over a chosen transport,
//! in the current era (MCP 2026-07-28) when the server serves it, else the `initialize` era.
//!
//! - [`session`]: one session, its era, the `edge_cursor` / `edge_ingest` calls.
//! - [`connector`]: [`Connector`], how the relay opens sessions; each transport implements it.
//! - [`error`]: [`UplinkError`] and the mapping from rmcp's errors.
//! - [`diagnose`]: the contract check of a server's tools (`probe`, and `run` after a refusal).
//! - [`http`], [`http_client`]: Streamable HTTP over hyper; [`https`]: its TLS connector.
//! - [`mqtt`]: MCP over MQTT.
//! - [`failover`]: several upstream URLs as one connector (`upstream.urls`).
//! - [`from_config`]: the session and connector `[upstream]` describes, built in one place.

pub mod connector;
pub mod diagnose;
pub mod error;
pub mod failover;
pub mod from_config;
pub mod http;
pub mod http_client;
pub mod https;
pub mod mqtt;
pub mod session;

use std::future::Future;
use std::time::Duration;

pub use connector::Connector;
pub use error::UplinkError;
pub use from_config::{build_connector, upstream_tls};
pub use session::{Negotiated, Session, client_info, parse_ack};

/// How long a graceful session close may take in all (HTTP: `DELETE` of a legacy session;
/// MQTT: `notifications/disconnected` and DISCONNECT).
pub const CLOSE_TIMEOUT: Duration = Duration::from_secs(2);

/// Which MCP era a session start negotiates (MCP 2026-07-28, Basic/Lifecycle).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum EraChoice {
    /// `server/discover` at 2026-07-28 first (rmcp's `Auto` lifecycle). A server that rejects
    /// it as a legacy server would (an error other than -32020/-32021/-32022, a 4xx without a
    /// JSON-RPC body, no answer within 10 s) gets `initialize` on the same transport; one that
    /// answers -32022 listing only `initialize` revisions gets a second session start with
    /// `initialize` ([`negotiate`]).
    #[default]
    PreferCurrent,
    /// Only `server/discover` at 2026-07-28.
    Current,
    /// Only `initialize`, offering 2025-11-25 (the server may answer an older revision).
    Legacy,
}

/// Tool names, era and per-request timeout of one session.
#[derive(Debug, Clone)]
pub struct SessionConfig {
    /// Name of the ingest tool (`upstream.ingest_tool`).
    pub ingest_tool: String,
    /// Name of the cursor tool (`upstream.cursor_tool`).
    pub cursor_tool: String,
    /// Timeout of the session start and of each request.
    pub request_timeout: Duration,
    /// The era to negotiate.
    pub era: EraChoice,
}

/// Starts a session with `open` (one transport's session start) as `config.era` asks; when
/// that prefers the current era and the server answers -32022 listing only `initialize`
/// revisions, starts another with `initialize`. Both transports negotiate here.
///
/// # Errors
/// The last start's [`UplinkError`].
pub async fn negotiate<F, Fut>(config: SessionConfig, open: F) -> Result<Session, UplinkError>
where
    F: Fn(SessionConfig) -> Fut,
    Fut: Future<Output = Result<Session, UplinkError>>,
{
    let prefer_current = config.era == EraChoice::PreferCurrent;
    match open(config.clone()).await {
        Err(e) if prefer_current && e.offers_legacy() => {
            log::debug!(error:% = e; "the upstream serves only the initialize era; initializing");
            let legacy = SessionConfig {
                era: EraChoice::Legacy,
                ..config
            };
            open(legacy).await
        }
        other => other,
    }
}
