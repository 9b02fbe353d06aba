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

pub use connector::Connector;
pub use error::UplinkError;
pub use from_config::{build_connector, upstream_tls};
pub use session::{
    CLOSE_TIMEOUT, EraChoice, Negotiated, Session, SessionConfig, client_info, negotiate, parse_ack,
};
