//! edge-relay: a durable, resumable relay of gateway events to an upstream MCP server.
//!
//! Producers post events to the local ingest; the [`outbox`] commits them to sled (fsync) before
//! answering; the [`relay`] loop delivers them in seq order as `edge_ingest` tool calls over an
//! MCP session ([`uplink`]) and advances only on the upstream's `acked_seq`.
//!
//! Layout:
//! - [`daemon`]: the one wiring place: `start(config, seams)` and `edge-relay run`.
//! - [`aside`]: a store that cannot be opened is moved aside, never a crash loop.
//! - [`audit`]: exactly-once audit of accepted events against the upstream's store.
//! - [`config`]: TOML config, defaults, `validate()`, `Secret`.
//! - [`event`]: the event model and its validation.
//! - [`contract`]: `edge_ingest` / `edge_cursor` arguments and results.
//! - [`durable`]: sled flush plus the filesystem sync sled leaves out.
//! - [`outbox`]: sled outbox, group commit, batches after a cursor, acks, bounds.
//! - [`ingest`]: local producers (HTTP and the gateway's MQTT broker).
//! - [`inspect`]: `edge-relay inspect`, an offline look at a data dir.
//! - [`relay`]: the delivery loop, reconnect and backoff.
//! - [`reconnect`]: the one reconnect pacing (capped jittered backoff, its log line, its sleep).
//! - [`redact`]: URL userinfo and echoed tokens kept out of logs, status and errors.
//! - [`mosquitto`]: a private Mosquitto broker for the demo, tests and benchmarks.
//! - [`mqtt`]: MQTT 5 links (rumqttc v5) and MCP over MQTT topics.
//! - [`uplink`]: rmcp client session in either MCP era, Streamable HTTP over hyper, MQTT; failover over several upstreams.
//! - [`sink`]: the reference upstream (rmcp server + its sled store, or PostgreSQL for a fleet).
//! - [`status`]: status board, `/v1/status` and `/metrics`.
//! - [`http_serve`]: the shared HTTP/1.1 accept loop and its `Listener` seam.
//! - [`tls`]: rustls client configs from PEM files, the sink's HTTPS, TLS errors in words.
//! - [`probe`]: `edge-relay probe`, the era and contract check of an upstream.
//! - [`shutdown`]: SIGTERM/SIGINT to a cancellation token.
//! - [`heartbeat`]: progress heartbeats of the relay and writer loops, the watchdog's verdict.
//! - [`systemd`]: sd_notify `READY=1`, `STATUS=`, `WATCHDOG=1`, `STOPPING=1`.
//! - [`local_client`]: the CLI's HTTP client to a running daemon.
//! - [`demo`]: the end-to-end demo on the Daphnet recording.
//! - [`logging`]: journald or stderr.

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
pub mod heartbeat;
pub mod http_serve;
pub mod ingest;
pub mod logging;
pub mod mqtt;
pub mod outbox;
pub mod reconnect;
pub mod redact;
pub mod relay;
pub mod shutdown;
pub mod sink;
pub mod status;
pub mod systemd;
pub mod tls;
pub mod uplink;
