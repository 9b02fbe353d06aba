//! Local HTTP ingest (docs/DESIGN.md §10): `POST /v1/events`, `GET /v1/status`, `GET /metrics`, `GET /healthz`.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode, header};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use super::admit::{Refusal, admit};
use super::body::{BodyError, parse_events};
use super::receive::{BodyBudget, ReceiveError};
use crate::config::HttpIngestConfig;
use crate::config::secret::Secret;
use crate::contract::IngestAnswer;
use crate::http_serve::Listener;
use crate::outbox::{Outbox, OutboxError};
use crate::status::StatusBoard;

/// How long in-flight requests may run after shutdown starts before their connections close.
pub const SHUTDOWN_DRAIN: Duration = Duration::from_secs(5);

/// File descriptors the daemon needs besides its ingest connections (sled's files, the upstream
/// and MQTT sockets, the journal), with room to spare.
pub const FD_RESERVE: u64 = 256;

/// The local HTTP ingest endpoint. Run it with [`IngestHttp::run`].
#[derive(Clone)]
pub struct IngestHttp {
    outbox: Outbox,
    status: Arc<StatusBoard>,
    gateway: Arc<str>,
    token: Option<Arc<Secret>>,
    budget: BodyBudget,
    max_connections: usize,
    max_event_bytes: usize,
}

type HttpResponse = Response<Full<Bytes>>;

impl IngestHttp {
    /// Builds the endpoint over `outbox`; `status` is the relay's board; `token` (read from
    /// `ingest.http.token_file`) is then required on `POST /v1/events`.
    pub fn new(
        outbox: Outbox,
        status: Arc<StatusBoard>,
        gateway: &str,
        config: &HttpIngestConfig,
        token: Option<Secret>,
    ) -> Self {
        if token.is_none() && !config.listen.ip().is_loopback() {
            log::warn!(listen:% = config.listen;
                "ingest listens on {} beyond loopback with no ingest.http.token_file: \
                 anyone who can reach it can post events", config.listen);
        }
        Self {
            outbox,
            status,
            gateway: gateway.into(),
            token: token.map(Arc::new),
            budget: BodyBudget::new(config.max_body_bytes),
            max_connections: config.max_connections,
            max_event_bytes: config.max_event_bytes,
        }
    }

    /// Serves on `listener` until `shutdown`, at most `ingest.http.max_connections` at once;
    /// in-flight requests get [`SHUTDOWN_DRAIN`].
    pub async fn run<L: Listener>(self, listener: L, shutdown: CancellationToken) {
        let max_connections = self.max_connections;
        warn_if_descriptors_short(max_connections);
        let this = Arc::new(self);
        let service = hyper::service::service_fn(move |req| {
            let this = this.clone();
            async move { Ok::<_, std::convert::Infallible>(this.handle(req).await) }
        });
        crate::http_serve::serve(
            listener,
            service,
            shutdown,
            SHUTDOWN_DRAIN,
            max_connections,
            "ingest-http",
        )
        .await;
    }

    async fn handle(&self, req: Request<Incoming>) -> HttpResponse {
        match (req.method(), req.uri().path()) {
            (&Method::POST, "/v1/events") => self.post_events(req).await,
            (&Method::GET, "/v1/status") => {
                let report = self.status.report(&self.gateway, &self.outbox.stats());
                json_response(
                    StatusCode::OK,
                    serde_json::to_value(report).unwrap_or_default(),
                )
            }
            (&Method::GET, "/metrics") => {
                let report = self.status.report(&self.gateway, &self.outbox.stats());
                let mut resp = Response::new(Full::new(Bytes::from(report.to_prometheus())));
                resp.headers_mut().insert(
                    header::CONTENT_TYPE,
                    header::HeaderValue::from_static("text/plain; version=0.0.4"),
                );
                resp
            }
            (&Method::GET, "/healthz") => json_response(StatusCode::OK, json!({"status": "ok"})),
            (_, "/v1/events" | "/v1/status" | "/metrics" | "/healthz") => error_response(
                StatusCode::METHOD_NOT_ALLOWED,
                "method not allowed",
                None,
                None,
            ),
            (_, path) => error_response(
                StatusCode::NOT_FOUND,
                &format!("no such endpoint: {path}"),
                None,
                None,
            ),
        }
    }

    /// Receives the body without holding any slot, then parses and commits it within the
    /// parse budget (see [`super::receive`]).
    async fn post_events(&self, req: Request<Incoming>) -> HttpResponse {
        if let Err(refusal) = admit(req.headers(), self.token.as_deref()) {
            let status = match refusal {
                Refusal::Unauthorized => StatusCode::UNAUTHORIZED,
                Refusal::UnsupportedType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            };
            let mut resp = error_response(status, &refusal.to_string(), None, None);
            if refusal == Refusal::Unauthorized {
                resp.headers_mut().insert(
                    header::WWW_AUTHENTICATE,
                    header::HeaderValue::from_static("Bearer"),
                );
            }
            return resp;
        }
        let declared = req
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
        // Held (with its budget) until the commit is answered.
        let received = match self.budget.receive(req.into_body(), declared).await {
            Ok(received) => received,
            Err(e) => {
                let status = match &e {
                    ReceiveError::TooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
                    ReceiveError::Timeout => StatusCode::REQUEST_TIMEOUT,
                    ReceiveError::Busy { .. } => StatusCode::SERVICE_UNAVAILABLE,
                    ReceiveError::Read(_) => StatusCode::BAD_REQUEST,
                };
                return error_response(status, &e.to_string(), None, None);
            }
        };
        let Some(_parsing) = self.budget.parse_slot(&received.bytes).await else {
            return error_response(StatusCode::SERVICE_UNAVAILABLE, "shutting down", None, None);
        };
        let events = match parse_events(&received.bytes, self.max_event_bytes) {
            Ok(events) => events,
            Err(e) => {
                let status = match &e {
                    BodyError::TooLarge { .. } | BodyError::TooMany => {
                        StatusCode::PAYLOAD_TOO_LARGE
                    }
                    BodyError::IdConflict { .. } => StatusCode::CONFLICT,
                    _ => StatusCode::BAD_REQUEST,
                };
                let (index, field) = e.location();
                log::debug!(error:% = e; "rejected POST /v1/events");
                return error_response(status, &e.to_string(), index, field);
            }
        };
        match self.outbox.append(events).await {
            Ok(appended) => {
                let answer = IngestAnswer::new(&appended.assigned);
                log::debug!(gateway = &*self.gateway, stream:% = self.outbox.stats().stream,
                    seq = answer.first_seq, last_seq = answer.last_seq, events = answer.accepted;
                    "events committed");
                json_bytes_response(StatusCode::OK, answer.to_json())
            }
            Err(e) => {
                let status = match &e {
                    OutboxError::Full { .. } | OutboxError::DiskFull { .. } => {
                        StatusCode::INSUFFICIENT_STORAGE
                    }
                    // sled keeps the kind, not the errno, of the error it clones.
                    OutboxError::Storage(sled::Error::Io(io))
                        if io.kind() == std::io::ErrorKind::StorageFull =>
                    {
                        StatusCode::INSUFFICIENT_STORAGE
                    }
                    OutboxError::IdConflict { .. } => StatusCode::CONFLICT,
                    _ => StatusCode::SERVICE_UNAVAILABLE,
                };
                let index = match &e {
                    OutboxError::IdConflict { index, .. } => Some(*index),
                    _ => None,
                };
                let field = index.map(|_| "id");
                error_response(status, &e.to_string(), index, field)
            }
        }
    }
}

/// At the connection cap every further accept would fail with EMFILE instead of waiting.
fn warn_if_descriptors_short(max_connections: usize) {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit only writes the struct it is given.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return;
    }
    let needed = max_connections as u64 + FD_RESERVE;
    // `rlim_t` is 32 bits wide on armv7, 64 on x86_64 and aarch64.
    #[allow(clippy::useless_conversion)]
    let current = u64::from(limit.rlim_cur);
    if current < needed {
        log::warn!(limit = current, needed = needed;
            "open-file limit {current} is below ingest.http.max_connections + {FD_RESERVE}; \
             raise LimitNOFILE= or lower max_connections");
    }
}

fn json_response(status: StatusCode, body: Value) -> HttpResponse {
    json_bytes_response(status, body.to_string().into_bytes())
}

fn json_bytes_response(status: StatusCode, body: Vec<u8>) -> HttpResponse {
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    resp
}

/// Error body: `{"error": text, "index"?: n, "field"?: name}`.
fn error_response(
    status: StatusCode,
    message: &str,
    index: Option<usize>,
    field: Option<&str>,
) -> HttpResponse {
    let mut body = json!({ "error": message });
    if let Some(i) = index {
        body["index"] = json!(i);
    }
    if let Some(f) = field {
        body["field"] = json!(f);
    }
    json_response(status, body)
}
