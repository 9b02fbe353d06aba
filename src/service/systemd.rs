//! systemd service protocol: `READY=1`, `STATUS=`, `WATCHDOG=1` driven by heartbeats, `STOPPING=1`.
//
// Everything goes through `sd_notify::notify`, which sends nothing when `NOTIFY_SOCKET` is unset;
// a failed send is logged (a warning the first time) and never stops the daemon.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use sd_notify::NotifyState;
use tokio_util::sync::CancellationToken;

use crate::outbox::Outbox;
use crate::service::heartbeat::{Verdict, Watchdog};
use crate::status::{StatusBoard, StatusReport, UpstreamState};

/// How often `STATUS=` is recomputed; it is sent only when its text changed.
pub const STATUS_PERIOD: Duration = Duration::from_secs(1);
/// Longest `last error` quoted in `STATUS=` (systemctl shows one line), characters.
const STATUS_ERROR_CHARS: usize = 120;

/// The watchdog interval systemd asks for (`WATCHDOG_USEC`, for this process), if any.
pub fn watchdog_interval() -> Option<Duration> {
    sd_notify::watchdog_enabled().filter(|d| !d.is_zero())
}

/// One line for `systemctl status`: upstream state, backlog and acked seq, the last error if down.
pub fn status_line(r: &StatusReport) -> String {
    let mut line = format!(
        "upstream {}; backlog {} events ({} bytes); acked_seq {}, next_seq {}",
        r.upstream, r.backlog_events, r.backlog_bytes, r.acked_seq, r.next_seq
    );
    if r.dropped_events > 0 {
        line.push_str(&format!("; dropped {}", r.dropped_events));
    }
    if let Some(newest) = r.stores_moved_aside.last() {
        line.push_str(&format!(
            "; {} store(s) moved aside, newest {newest}",
            r.stores_moved_aside.len()
        ));
    }
    if let (UpstreamState::Down, Some(e)) = (r.upstream, &r.last_error) {
        let e: String = e.chars().take(STATUS_ERROR_CHARS).collect();
        line.push_str(&format!("; last error: {}", e.replace('\n', " ")));
    }
    line
}

/// Talks to the service manager for a running daemon. Run its loop with [`Notifier::run`].
pub struct Notifier {
    status: Arc<StatusBoard>,
    outbox: Outbox,
    gateway: String,
    watchdog: Option<Watchdog>,
}

impl Notifier {
    /// A notifier reporting `status` and `outbox`; pings only while `watchdog` says alive.
    pub fn new(
        status: Arc<StatusBoard>,
        outbox: Outbox,
        gateway: &str,
        watchdog: Option<Watchdog>,
    ) -> Self {
        Self {
            status,
            outbox,
            gateway: gateway.to_owned(),
            watchdog,
        }
    }

    fn line(&self) -> String {
        status_line(&self.status.report(&self.gateway, &self.outbox.stats()))
    }

    /// `READY=1` with the first `STATUS=`: call once the store is open and listeners are bound.
    pub fn ready(&self) {
        send(&[NotifyState::Ready, NotifyState::Status(&self.line())]);
    }

    /// Sends `STATUS=` on change and `WATCHDOG=1` every half interval while every heartbeat is
    /// fresh, until `shutdown`. A stalled loop is logged once when it stalls and once when it
    /// recovers.
    pub async fn run(self, shutdown: CancellationToken) {
        let mut status_tick = tokio::time::interval(STATUS_PERIOD);
        let period = self
            .watchdog
            .as_ref()
            .map_or(Duration::from_secs(3600), Watchdog::period);
        let mut watchdog_tick = tokio::time::interval(period);
        let mut last_line = self.line();
        let mut stalled = false;
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                _ = status_tick.tick() => {
                    let line = self.line();
                    if line != last_line {
                        send(&[NotifyState::Status(&line)]);
                        last_line = line;
                    }
                }
                _ = watchdog_tick.tick(), if self.watchdog.is_some() => {
                    let Some(dog) = &self.watchdog else { continue };
                    match dog.check(tokio::time::Instant::now()) {
                        Verdict::Ping => {
                            if stalled {
                                log::info!("watchdog: every loop turns again; pinging");
                                stalled = false;
                            }
                            send(&[NotifyState::Watchdog]);
                        }
                        Verdict::Stalled { task, silent_for } => {
                            if !stalled {
                                log::error!(task = task, silent_ms = silent_for.as_millis() as u64;
                                    "watchdog: the {task} loop has not turned for {silent_for:?}; withholding WATCHDOG=1");
                                stalled = true;
                            }
                        }
                    }
                }
            }
        }
    }
}

/// `STOPPING=1`: shutdown has begun.
pub fn stopping() {
    send(&[
        NotifyState::Stopping,
        NotifyState::Status("stopping: draining ingest, finishing the in-flight batch"),
    ]);
}

fn send(states: &[NotifyState<'_>]) {
    // Warned once: a missing service manager socket would otherwise repeat every second.
    static WARNED: AtomicBool = AtomicBool::new(false);
    if let Err(e) = sd_notify::notify(states) {
        if WARNED.swap(true, Ordering::Relaxed) {
            log::debug!(error:% = e; "sd_notify failed");
        } else {
            log::warn!(error:% = e; "sd_notify failed (further failures are logged at debug level)");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use uuid::Uuid;

    fn report(upstream: UpstreamState, error: Option<&str>) -> StatusReport {
        StatusReport {
            client_certs: Vec::new(),
            gateway: "gw".into(),
            stream: Uuid::nil(),
            backlog_events: 12,
            backlog_bytes: 3456,
            next_seq: 113,
            acked_seq: 100,
            dropped_events: 0,
            store_compactions: 0,
            upstream,
            last_error: error.map(str::to_owned),
            protocol_version: None,
            events_delivered: 0,
            batches_delivered: 0,
            reconnects: 0,
            sessions_expired: 0,
            upstream_failovers: 0,
            stores_moved_aside: Vec::new(),
        }
    }

    #[test]
    fn status_line_names_a_moved_aside_store() {
        let mut r = report(UpstreamState::Connected, None);
        r.stores_moved_aside = vec!["/var/lib/edge-relay/aside-20261130T2000Z".into()];
        assert!(
            status_line(&r).ends_with(
                "; 1 store(s) moved aside, newest /var/lib/edge-relay/aside-20261130T2000Z"
            ),
            "{}",
            status_line(&r)
        );
    }

    #[test]
    fn status_line_names_upstream_backlog_and_acked_seq_and_the_error_only_when_down() {
        assert_eq!(
            status_line(&report(UpstreamState::Connected, Some("old"))),
            "upstream connected; backlog 12 events (3456 bytes); acked_seq 100, next_seq 113"
        );
        let long = format!("connect refused\n{}", "x".repeat(500));
        let down = status_line(&report(UpstreamState::Down, Some(&long)));
        assert!(
            down.starts_with("upstream down; backlog 12 events (3456 bytes); acked_seq 100, next_seq 113; last error: connect refused x"),
            "{down}"
        );
        assert!(!down.contains('\n'));
        assert!(down.len() < 250, "{}", down.len());
    }
}
