//! Shared daemon status: upstream state and relay counters, reported by `/v1/status` and `/metrics`.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::outbox::OutboxStats;

/// Connection state of the uplink, as `GET /v1/status` names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum UpstreamState {
    /// A session is open and the acked seq is known.
    Connected,
    /// (Re)connecting: initialize and `edge_cursor` in progress.
    #[default]
    Connecting,
    /// The last attempt failed; waiting out the backoff.
    Down,
}

impl std::fmt::Display for UpstreamState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Connected => "connected",
            Self::Connecting => "connecting",
            Self::Down => "down",
        })
    }
}

/// Written by the relay loop, read by the status endpoints. Cheap to share in an `Arc`.
#[derive(Debug, Default)]
pub struct StatusBoard {
    upstream: Mutex<(UpstreamState, Option<String>)>,
    protocol_version: Mutex<Option<String>>,
    events_delivered: AtomicU64,
    batches_delivered: AtomicU64,
    reconnects: AtomicU64,
    sessions_expired: AtomicU64,
    upstream_failovers: AtomicU64,
    stores_moved_aside: Mutex<Vec<String>>,
    client_tls: Mutex<Vec<crate::tls::ClientTls>>,
    changed: tokio::sync::watch::Sender<()>,
}

/// The client certificate a TLS client side presented on its last connection.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ClientCert {
    /// Its config section: `upstream.tls` or `ingest.mqtt.tls`.
    pub section: String,
    /// Its `notAfter`, Unix seconds (UTC).
    pub not_after: i64,
}

/// `GET /v1/status` body.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct StatusReport {
    /// Gateway id.
    pub gateway: String,
    /// Stream UUID of the outbox.
    pub stream: Uuid,
    /// Events waiting for an upstream ack.
    pub backlog_events: u64,
    /// Their bytes in the outbox budget.
    pub backlog_bytes: u64,
    /// Next seq to be assigned.
    pub next_seq: u64,
    /// Highest seq the upstream acknowledged (0: none).
    pub acked_seq: u64,
    /// Events dropped by `drop_oldest` since the store was created.
    pub dropped_events: u64,
    /// Compactions of the outbox into a fresh store since start (each gives back the disk a
    /// drained backlog held; `buffer.compact_min_bytes`).
    #[serde(default)]
    pub store_compactions: u64,
    /// Uplink state.
    pub upstream: UpstreamState,
    /// Last uplink error, cleared on a healthy ack.
    pub last_error: Option<String>,
    /// MCP protocol version of the last session opened (`2026-07-28`: current era, no
    /// session; `2025-11-25` and older: `initialize` era); `None` before the first.
    #[serde(default)]
    pub protocol_version: Option<String>,
    /// Events acknowledged by the upstream since start.
    pub events_delivered: u64,
    /// `edge_ingest` calls acknowledged since start.
    pub batches_delivered: u64,
    /// Sessions opened since start.
    pub reconnects: u64,
    /// Sessions the upstream forgot (HTTP 404) since start.
    pub sessions_expired: u64,
    /// Switches to another of `upstream.urls` since start.
    #[serde(default)]
    pub upstream_failovers: u64,
    /// Stores that could not be opened and were moved aside (paths, oldest first); they hold
    /// whatever was undelivered in them. Empty when none.
    #[serde(default)]
    pub stores_moved_aside: Vec<String>,
    /// Client certificates presented on the last connection of each TLS client side (read
    /// again at every connection); empty before any, or without client certificates.
    #[serde(default)]
    pub client_certs: Vec<ClientCert>,
}

impl StatusBoard {
    /// Records the moved-aside stores found in the data dir ([`crate::aside::list`]).
    pub fn set_stores_moved_aside(&self, paths: Vec<std::path::PathBuf>) {
        *self
            .stores_moved_aside
            .lock()
            .unwrap_or_else(|p| p.into_inner()) =
            paths.iter().map(|p| p.display().to_string()).collect();
    }

    /// Reports the client certificate of `tls` (as loaded at its last connection).
    pub fn watch_client_cert(&self, tls: crate::tls::ClientTls) {
        self.client_tls
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(tls);
    }

    /// Sets the uplink state; `error` replaces the last error when given.
    pub fn set_upstream(&self, state: UpstreamState, error: Option<String>) {
        let mut guard = self.upstream.lock().unwrap_or_else(|p| p.into_inner());
        guard.0 = state;
        if error.is_some() || state == UpstreamState::Connected {
            guard.1 = error;
        }
        drop(guard);
        self.changed.send_replace(());
    }

    /// A receiver told of every uplink state change (for tests and waiters; no history).
    pub fn watch(&self) -> tokio::sync::watch::Receiver<()> {
        self.changed.subscribe()
    }

    /// Counts one acknowledged batch of `events` events.
    pub fn delivered(&self, events: u64) {
        self.events_delivered.fetch_add(events, Ordering::Relaxed);
        self.batches_delivered.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts one new session, which negotiated MCP `protocol_version`.
    pub fn reconnected(&self, protocol_version: &str) {
        self.reconnects.fetch_add(1, Ordering::Relaxed);
        *self
            .protocol_version
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = Some(protocol_version.to_owned());
    }

    /// Counts one session the upstream forgot.
    pub fn session_expired(&self) {
        self.sessions_expired.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts one switch to another upstream URL ([`crate::uplink::failover`]).
    pub fn failed_over(&self) {
        self.upstream_failovers.fetch_add(1, Ordering::Relaxed);
    }

    /// Current uplink state.
    pub fn upstream(&self) -> UpstreamState {
        self.upstream.lock().unwrap_or_else(|p| p.into_inner()).0
    }

    /// Snapshot combined with the outbox counters.
    pub fn report(&self, gateway: &str, outbox: &OutboxStats) -> StatusReport {
        let (upstream, last_error) = self
            .upstream
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        StatusReport {
            gateway: gateway.to_owned(),
            stream: outbox.stream,
            backlog_events: outbox.backlog_events,
            backlog_bytes: outbox.backlog_bytes,
            next_seq: outbox.next_seq,
            acked_seq: outbox.acked_seq,
            dropped_events: outbox.dropped_events,
            store_compactions: outbox.compactions,
            upstream,
            last_error,
            protocol_version: self
                .protocol_version
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone(),
            events_delivered: self.events_delivered.load(Ordering::Relaxed),
            batches_delivered: self.batches_delivered.load(Ordering::Relaxed),
            reconnects: self.reconnects.load(Ordering::Relaxed),
            sessions_expired: self.sessions_expired.load(Ordering::Relaxed),
            upstream_failovers: self.upstream_failovers.load(Ordering::Relaxed),
            stores_moved_aside: self
                .stores_moved_aside
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone(),
            client_certs: self
                .client_tls
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .iter()
                .filter_map(|tls| {
                    Some(ClientCert {
                        section: tls.section().to_owned(),
                        not_after: tls.client_not_after()?,
                    })
                })
                .collect(),
        }
    }
}

impl StatusReport {
    /// Prometheus text exposition format 0.0.4 (`GET /metrics`).
    pub fn to_prometheus(&self) -> String {
        let up = |s| u8::from(self.upstream == s);
        let rows: [(&str, &str, &str, u64); 13] = [
            (
                "edge_relay_backlog_events",
                "gauge",
                "Events waiting for an upstream ack.",
                self.backlog_events,
            ),
            (
                "edge_relay_backlog_bytes",
                "gauge",
                "Bytes of buffered events.",
                self.backlog_bytes,
            ),
            (
                "edge_relay_next_seq",
                "gauge",
                "Next seq to assign.",
                self.next_seq,
            ),
            (
                "edge_relay_acked_seq",
                "gauge",
                "Highest seq acknowledged upstream.",
                self.acked_seq,
            ),
            (
                "edge_relay_dropped_events_total",
                "counter",
                "Events dropped by drop_oldest.",
                self.dropped_events,
            ),
            (
                "edge_relay_store_compactions_total",
                "counter",
                "Compactions of the outbox into a fresh store since start.",
                self.store_compactions,
            ),
            (
                "edge_relay_delivered_events_total",
                "counter",
                "Events acknowledged upstream since start.",
                self.events_delivered,
            ),
            (
                "edge_relay_delivered_batches_total",
                "counter",
                "Batches acknowledged upstream since start.",
                self.batches_delivered,
            ),
            (
                "edge_relay_sessions_total",
                "counter",
                "Upstream sessions opened since start.",
                self.reconnects,
            ),
            (
                "edge_relay_sessions_expired_total",
                "counter",
                "Upstream sessions expired (HTTP 404) since start.",
                self.sessions_expired,
            ),
            (
                "edge_relay_upstream_failovers_total",
                "counter",
                "Switches to another of upstream.urls since start.",
                self.upstream_failovers,
            ),
            (
                "edge_relay_stores_moved_aside",
                "gauge",
                "Stores that could not be opened and were moved aside (see status).",
                self.stores_moved_aside.len() as u64,
            ),
            (
                "edge_relay_upstream_connected",
                "gauge",
                "1 when the uplink is connected.",
                u64::from(up(UpstreamState::Connected)),
            ),
        ];
        let mut out = String::new();
        for (name, kind, help, value) in rows {
            out.push_str(&format!(
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}\n"
            ));
        }
        if !self.client_certs.is_empty() {
            let name = "edge_relay_tls_client_cert_expiry_seconds";
            out.push_str(&format!(
                "# HELP {name} Seconds until the client certificate presented on the last \
                 connection expires (negative: expired).\n# TYPE {name} gauge\n"
            ));
            let now = crate::tls::x509::unix_now();
            for cert in &self.client_certs {
                let left = cert.not_after.saturating_sub(now);
                out.push_str(&format!("{name}{{section=\"{}\"}} {left}\n", cert.section));
            }
        }
        out
    }
}
