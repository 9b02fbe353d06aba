//! Several upstream URLs as one [`Connector`] (`upstream.urls`): sticky while a URL works, the next one when it does not.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use super::connector::{Connecting, Connector};
use super::error::UplinkError;
use super::session::{Session, SessionConfig};
use crate::status::StatusBoard;

// Design: the relay loop reconnects only after a session failed (or never opened), so every
// `connect` is the moment to decide. It tries the current upstream first (sticky: a node that
// came back after a short blip keeps its relays), then each other one in list order; the first
// session opened wins and becomes current. Only when all fail does the relay back off.

/// Connects to the first of several upstreams that answers, starting at the one that worked
/// last; each switch is logged at WARN and counted (`edge_relay_upstream_failovers_total`).
pub struct FailoverConnector {
    upstreams: Vec<Box<dyn Connector>>,
    current: AtomicUsize,
    status: Option<Arc<StatusBoard>>,
}

impl FailoverConnector {
    /// Over `upstreams` in order of preference (the first is tried first); counts failovers on
    /// `status` when given.
    ///
    /// # Panics
    /// When `upstreams` is empty (config validation refuses an empty `upstream.urls`).
    pub fn new(upstreams: Vec<Box<dyn Connector>>, status: Option<Arc<StatusBoard>>) -> Self {
        assert!(!upstreams.is_empty(), "FailoverConnector needs an upstream");
        Self {
            upstreams,
            current: AtomicUsize::new(0),
            status,
        }
    }

    /// Index (into the list given to [`FailoverConnector::new`]) of the upstream in use or
    /// tried first next time.
    pub fn current(&self) -> usize {
        self.current.load(Ordering::Relaxed)
    }

    async fn open(&self, config: SessionConfig) -> Result<Session, UplinkError> {
        let n = self.upstreams.len();
        let first = self.current();
        let mut last = None;
        for i in (0..n).map(|k| (first + k) % n) {
            let upstream = &self.upstreams[i];
            match upstream.connect(config.clone()).await {
                Ok(session) => {
                    if i != first {
                        self.current.store(i, Ordering::Relaxed);
                        if let Some(status) = &self.status {
                            status.failed_over();
                        }
                        log::warn!(from = self.upstreams[first].describe().as_str(),
                            upstream = upstream.describe().as_str();
                            "upstream failover: now {}", upstream.describe());
                    }
                    return Ok(session);
                }
                Err(e) => {
                    log::info!(upstream = upstream.describe().as_str(), error:% = e;
                        "upstream {} failed: {e:#}", upstream.describe());
                    last = Some(e);
                }
            }
        }
        Err(last.expect("at least one upstream"))
    }
}

impl Connector for FailoverConnector {
    fn connect(&self, config: SessionConfig) -> Connecting<'_> {
        Box::pin(self.open(config))
    }

    /// Every upstream in turn: the sum of theirs.
    fn longest_connect(&self, request_timeout: Duration) -> Duration {
        self.upstreams
            .iter()
            .map(|u| u.longest_connect(request_timeout))
            .sum()
    }

    /// All upstreams, comma-separated, in order of preference.
    fn describe(&self) -> String {
        let all: Vec<String> = self.upstreams.iter().map(|u| u.describe()).collect();
        all.join(", ")
    }
}
