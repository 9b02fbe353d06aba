//! edge-relay: a durable, resumable relay of gateway events to an upstream MCP server.
//!
//! Producers post events to the local ingest; the [`outbox`] commits them to sled (fsync) before
//! answering; the [`relay`] loop delivers them in seq order as `edge_ingest` tool calls over an
//! MCP session ([`uplink`]) and advances only on the upstream's `acked_seq`.
//!
//! Layout (`ls src/`), docs/DESIGN.md for the why:
//!
//! The daemon, in the order an event travels:
//! - [`daemon`]: the one wiring place: [`daemon::start`] (with its [`daemon::Seams`]) and
//!   `edge-relay run`.
//! - [`ingest`]: local producers (HTTP `POST /v1/events`, the gateway's MQTT broker).
//! - [`event`]: the event model and its validation.
//! - [`outbox`]: the sled outbox: group commit, chunks, acks, bounds, recovery at open,
//!   compaction into a fresh store.
//! - [`durable`]: sled flush plus the filesystem syncs sled leaves out.
//! - [`aside`]: a store that cannot be opened is moved aside, never a crash loop.
//! - [`relay`]: the delivery loop: a window of `edge_ingest` calls, the upstream's `acked_seq`.
//! - [`reconnect`]: the one reconnect pacing (capped jittered backoff, its log line, its sleep).
//! - [`uplink`]: the MCP client session in either era, a `Connector` per transport (Streamable
//!   HTTP over hyper, MCP over MQTT), failover over several upstreams.
//! - [`contract`]: `edge_ingest` / `edge_cursor` arguments and results, the ingest answer.
//! - [`mqtt`]: MQTT 5 links (rumqttc v5) and MCP over MQTT topics and transport.
//! - [`tls`]: rustls client configs from PEM files, the sink's HTTPS, TLS errors in words.
//! - [`http_serve`]: the shared HTTP/1.1 accept loop and its `Listener` seam.
//! - [`status`]: the status board, `/v1/status` and `/metrics`.
//! - [`service`]: signals, logging, sd_notify and the watchdog's heartbeats.
//! - [`config`]: the TOML config, defaults, `validate()`, `Secret`.
//! - [`redact`]: URL userinfo and echoed tokens kept out of logs, status and errors.
//!
//! Around it:
//! - [`cli`]: the subcommands (`status`, `send`, `inspect`, `probe`, `check-config`, `sink`).
//! - [`sink`]: the reference upstream (rmcp server on sled, or PostgreSQL for a fleet).
//! - `demo` (cargo feature `demo`, on by default, off in shipped builds): the end-to-end demo
//!   on the Daphnet recording, its private Mosquitto and the exactly-once audit.

#![warn(missing_docs)]

// Lets test code shared with the integration tests (`sink/contract_cases.rs`) name the crate.
#[cfg(test)]
extern crate self as edge_relay;

pub mod aside;
pub mod cli;
pub mod config;
pub mod contract;
pub mod daemon;
#[cfg(feature = "demo")]
pub mod demo;
pub mod durable;
pub mod event;
pub mod http_serve;
pub mod ingest;
pub mod mqtt;
pub mod outbox;
pub mod reconnect;
pub mod redact;
pub mod relay;
pub mod service;
pub mod sink;
pub mod status;
pub mod tls;
pub mod uplink;
