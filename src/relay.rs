//! The relay loop (docs/DESIGN.md §8): connect → `edge_cursor` → batches in seq order → advance on `acked_seq`.
//!
//! One reconnect loop owns every failure: any error drops the session, waits out a capped,
//! jittered backoff and starts over with a new session and a fresh `edge_cursor`. That is also
//! how a lost answer is handled: the upstream's acked seq says what it stored, and the relay
//! resends from the event after it (same seqs, new JSON-RPC id).

pub mod window;

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt as _;
use futures::stream::FuturesOrdered;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::config::RelayConfig;
use crate::contract::{CursorArgs, EVENTS_ZSTD, IngestBatch};
use crate::outbox::{Delivery, Outbox, OutboxError};
use crate::reconnect::{Pace, Reconnect};
use crate::service::heartbeat::Heartbeat;
use crate::status::{StatusBoard, UpstreamState};
use crate::uplink::diagnose::Diagnosis;
use crate::uplink::{CLOSE_TIMEOUT, Connector, Session, SessionConfig, UplinkError};
use window::Window;

/// Longest an in-flight exchange (the `edge_cursor` or `edge_ingest` call) may run on after
/// shutdown starts; then it is abandoned, which is safe: the upstream keeps what it stored and
/// the next start resends from its acked seq. Bounds the stop time whatever `request_timeout_ms` is.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// Longest one turn of the loop waits on the network by its own timeouts: a connect through
/// `connector` ([`Connector::longest_connect`]) plus closing the previous session. The
/// watchdog allows a silent relay this long.
pub fn longest_turn(connector: &dyn Connector, request_timeout: Duration) -> Duration {
    connector.longest_connect(request_timeout) + CLOSE_TIMEOUT
}

/// Why a session ended.
#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    /// The upstream exchange failed.
    #[error(transparent)]
    Uplink(#[from] UplinkError),
    /// The local outbox failed.
    #[error("outbox: {0}")]
    Outbox(#[from] OutboxError),
    /// The upstream's answers break the contract (acked seq ahead of the outbox, no progress...).
    #[error("contract violation: {0}")]
    Contract(String),
    /// A tool call was refused and the server's tools show why: `summary` is
    /// [`Diagnosis::summary`] (`upstream lacks the contract: tool edge_cursor is missing`).
    #[error("{summary} ({refusal})")]
    LacksContract {
        /// What the server's tools lack.
        summary: String,
        /// The refused call.
        refusal: UplinkError,
    },
}

/// The last refusal diagnosed, so a repeated one does not list the tools again: the refusal's
/// text and the diagnosis' summary (`None`: the tools meet the contract).
type DiagnosisCache = Option<(String, Option<String>)>;

/// The relay task. Run it with [`Relay::run`].
pub struct Relay {
    outbox: Outbox,
    status: Arc<StatusBoard>,
    gateway: String,
    config: RelayConfig,
    session: SessionConfig,
    connector: Box<dyn Connector>,
    heartbeat: Heartbeat,
}

impl Relay {
    /// Builds the relay for `gateway` over `outbox`, opening sessions with `connector`.
    pub fn new(
        outbox: Outbox,
        status: Arc<StatusBoard>,
        gateway: &str,
        config: RelayConfig,
        session: SessionConfig,
        connector: Box<dyn Connector>,
    ) -> Self {
        Self {
            outbox,
            status,
            gateway: gateway.to_owned(),
            config,
            session,
            connector,
            heartbeat: Heartbeat::unwatched("relay"),
        }
    }

    /// Beats `heartbeat` on every turn of the loop (for the systemd watchdog).
    pub fn with_heartbeat(mut self, heartbeat: Heartbeat) -> Self {
        self.heartbeat = heartbeat;
        self
    }

    /// Delivers until `shutdown`. On shutdown an in-flight batch finishes (bounded by the
    /// request timeout), the session is closed, and the function returns.
    pub async fn run(self, shutdown: CancellationToken) {
        let upstream = self.connector.describe();
        let mut reconnect = Reconnect::new(
            module_path!(),
            Duration::from_millis(self.config.backoff_initial_ms),
            Duration::from_millis(self.config.backoff_max_ms),
        )
        .field("gateway", self.gateway.as_str())
        .field("upstream", upstream.as_str())
        .heartbeat(self.heartbeat.clone());
        let mut previous_expired = false;
        let mut diagnosed: DiagnosisCache = None;
        while !shutdown.is_cancelled() {
            self.heartbeat.beat();
            self.status.set_upstream(UpstreamState::Connecting, None);
            let connected = tokio::select! {
                () = shutdown.cancelled() => break,
                r = self.connector.connect(self.session.clone()) => r,
            };
            let started = Instant::now();
            let outcome = match connected {
                Ok(session) => {
                    self.heartbeat.beat();
                    let negotiated = session.negotiated();
                    self.status.reconnected(&negotiated.version);
                    log::info!(gateway = self.gateway.as_str(), upstream = upstream.as_str(),
                        server = negotiated.server.as_str(), protocol_version = negotiated.version.as_str();
                        "upstream session opened: MCP {}, {} era", negotiated.version, negotiated.era());
                    let r = tokio::select! {
                        r = self.deliver(&session, &shutdown) => r,
                        () = abandon_after(&shutdown, SHUTDOWN_GRACE) => {
                            log::warn!(gateway = self.gateway.as_str(), upstream = upstream.as_str();
                                "shutdown: abandoned the in-flight exchange after {SHUTDOWN_GRACE:?}; it is resent after restart");
                            Ok(())
                        }
                    };
                    let r = match r {
                        Err(RelayError::Uplink(e)) if is_refusal(&e) => {
                            Err(self.diagnose(&session, e, &mut diagnosed).await)
                        }
                        r => r,
                    };
                    session.close().await;
                    r
                }
                Err(e) => Err(e.into()),
            };
            let err = match outcome {
                Ok(()) => break,
                Err(e) => e,
            };
            let expired = matches!(err, RelayError::Uplink(UplinkError::SessionExpired(_)));
            if expired {
                self.status.session_expired();
            }
            // An expired session is renewed at once, but only once in a row: a server that
            // forgets every new session must not turn this into a hot loop.
            let asked = match &err {
                RelayError::Uplink(e) => e.retry_after(),
                _ => None,
            };
            let pace = match asked {
                _ if expired && !previous_expired => Pace::Now,
                Some(asked) => Pace::AtLeast(asked),
                None => Pace::Backoff,
            };
            previous_expired = expired;
            self.status
                .set_upstream(UpstreamState::Down, Some(format!("{err:#}")));
            if reconnect
                .retry(&err, started.elapsed(), pace, &shutdown)
                .await
                .is_none()
            {
                break;
            }
        }
        self.status.set_upstream(UpstreamState::Down, None);
        log::info!("relay stopped");
    }

    /// After a refused tool call: lists the server's tools (once per distinct refusal, see
    /// [`DiagnosisCache`]) and, when they lack the contract, says so at ERROR (once per
    /// listing) and returns [`RelayError::LacksContract`], which `status` and `STATUS=` show.
    async fn diagnose(
        &self,
        session: &Session,
        refusal: UplinkError,
        cache: &mut DiagnosisCache,
    ) -> RelayError {
        let text = refusal.to_string();
        let (summary, fresh) = match cache.take() {
            Some((seen, summary)) if seen == text => (summary, false),
            _ => match Diagnosis::of_session(session, &self.session).await {
                Ok(diagnosis) => (diagnosis.summary(), true),
                Err(e) => {
                    log::warn!(gateway = self.gateway.as_str(), error:% = e;
                        "listing the upstream's tools after a refused call failed");
                    return RelayError::Uplink(refusal);
                }
            },
        };
        *cache = Some((text, summary.clone()));
        let Some(summary) = summary else {
            return RelayError::Uplink(refusal);
        };
        // Once per diagnosis; the retries that follow carry it in their own WARN record.
        if fresh {
            log::error!(gateway = self.gateway.as_str(), upstream = self.connector.describe().as_str(),
                error:% = refusal; "{summary}; the upstream refused: {refusal}");
        }
        RelayError::LacksContract { summary, refusal }
    }

    /// One session's life: acked seq, then batches until an error or shutdown (`Ok`): up to
    /// `relay.max_in_flight` (`max_in_flight_plain` without `events_zstd`) calls outstanding, sent in seq order, their answers
    /// applied in that order ([`Window`]). On shutdown no new batch is sent and the calls
    /// outstanding are awaited (bounded by [`SHUTDOWN_GRACE`] in [`Relay::run`]).
    async fn deliver(
        &self,
        session: &Session,
        shutdown: &CancellationToken,
    ) -> Result<(), RelayError> {
        let stream = self.outbox.stats().stream;
        let gateway = self.gateway.as_str();
        let ack = session
            .cursor(&CursorArgs {
                gateway: self.gateway.clone(),
                stream,
            })
            .await?;
        let acked_seq = ack.acked_seq_or_zero();
        let stats = self.outbox.stats();
        if acked_seq > stats.sent_seq {
            let violation = format!(
                "upstream acked seq {acked_seq} is above the highest seq ever sent to it ({}; next seq {}); nothing deleted, refusing to deliver",
                stats.sent_seq, stats.next_seq
            );
            log::error!(gateway = gateway, stream:% = stream, acked_seq = acked_seq; "contract violation: {violation}");
            return Err(RelayError::Contract(violation));
        }
        if acked_seq < stats.acked_seq {
            log::warn!(gateway = gateway, stream:% = stream, acked_seq = acked_seq;
                "upstream acked seq {acked_seq} is behind the local one ({}); events in between were acknowledged earlier and will be reported as a gap",
                stats.acked_seq);
        }
        self.outbox.ack(acked_seq).await?;
        self.status.set_upstream(UpstreamState::Connected, None);
        log::info!(gateway = gateway, stream:% = stream, acked_seq = acked_seq; "resuming after the upstream's acked seq");
        let packed = self.config.compress && session.offers_packed().await?;
        if packed {
            log::info!(gateway = gateway, stream:% = stream; "the upstream takes {EVENTS_ZSTD}: batches go compressed");
        }
        let mut changes = self.outbox.watch();
        let calls = if packed {
            self.config.max_in_flight
        } else {
            self.config.max_in_flight_plain
        };
        let mut window = Window::new(acked_seq, calls);
        // Calls sent and not yet answered, answered in the order they were sent.
        let mut outstanding = FuturesOrdered::new();
        // The acked seq as last answered, committed with the next batch's sent seq (one fsync
        // for both) or, when nothing follows, on its own.
        let mut pending_ack: Option<u64> = None;
        loop {
            self.heartbeat.beat();
            let stopping = shutdown.is_cancelled();
            while !stopping && window.has_room() {
                changes.borrow_and_update();
                let Delivery {
                    ndjson,
                    count,
                    last_seq,
                    gap,
                } = self.outbox.next_delivery(
                    window.last_sent(),
                    self.config.batch_max_events,
                    self.config.batch_max_bytes,
                )?;
                let Some(sent_to) = last_seq.or(gap.map(|g| g.dropped_to)) else {
                    break;
                };
                if let Some(g) = gap {
                    log::warn!(gateway = gateway, stream:% = stream, dropped_from = g.dropped_from, dropped_to = g.dropped_to;
                        "reporting a gap of {} events to the upstream", g.dropped_to - g.dropped_from + 1);
                }
                // Durably first: an acked seq or ack can never delete what was never sent.
                if sent_to > self.outbox.stats().sent_seq || pending_ack.is_some() {
                    self.outbox.progress(pending_ack.take(), sent_to).await?;
                }
                window.sent(sent_to, count as u64);
                let batch = IngestBatch {
                    gateway: self.gateway.clone(),
                    stream,
                    ndjson,
                    gap,
                };
                outstanding.push_back(async move {
                    (sent_to, session.ingest_batch(&batch, packed).await)
                });
            }
            if outstanding.is_empty() {
                if let Some(acked) = pending_ack.take() {
                    self.outbox.ack(acked).await?;
                    continue;
                }
                if stopping {
                    return Ok(());
                }
                tokio::select! {
                    () = shutdown.cancelled() => {}
                    r = changes.changed() => if r.is_err() { return Ok(()) },
                    () = self.heartbeat.tick() => {}
                }
                continue;
            }
            // The next answer; meanwhile new events may be sent while the window has room.
            let (sent_to, answer) = tokio::select! {
                Some(answered) = outstanding.next() => answered,
                r = changes.changed(), if window.has_room() && !stopping => {
                    if r.is_err() { return Ok(()) }
                    continue;
                }
                () = shutdown.cancelled(), if !stopping => continue,
                () = self.heartbeat.tick() => continue,
            };
            let before = window.acked_seq();
            let covered = window.answer(answer?.acked_seq_or_zero()).map_err(|violation| {
                log::error!(gateway = gateway, stream:% = stream, acked_seq = window.acked_seq(); "contract violation: {violation}");
                RelayError::Contract(violation)
            })?;
            if outstanding.is_empty() && !window.is_covered() {
                window.settle().map_err(RelayError::Contract)?;
            }
            let acked_seq = window.acked_seq();
            if acked_seq > before {
                pending_ack = Some(acked_seq);
                self.status.delivered(covered);
                log::debug!(gateway = gateway, stream:% = stream, seq = before + 1, last_seq = sent_to,
                    acked_seq = acked_seq; "batch acknowledged");
            }
        }
    }
}

/// A tool call the upstream answered but refused: a JSON-RPC error (unknown tool, invalid
/// params), `isError: true`, or a result that does not fit the contract.
fn is_refusal(e: &UplinkError) -> bool {
    matches!(
        e,
        UplinkError::Refused { .. } | UplinkError::Malformed { .. }
    )
}

/// Resolves `grace` after `shutdown` was cancelled.
async fn abandon_after(shutdown: &CancellationToken, grace: Duration) {
    shutdown.cancelled().await;
    tokio::time::sleep(grace).await;
}
