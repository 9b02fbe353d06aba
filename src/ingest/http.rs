//! Local HTTP ingest (DESIGN §5): `POST /v1/events`, `GET /v1/status`, `GET /metrics`, `GET /healthz`.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode, header};
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use super::body::{BodyError, parse_events};
use crate::config::HttpIngestConfig;
use crate::outbox::{Outbox, OutboxError};
use crate::status::StatusBoard;

/// How long in-flight requests may run after shutdown starts before their connections close.
pub const SHUTDOWN_DRAIN: Duration = Duration::from_secs(5);
/// Longest a client may take to send a request body.
pub const BODY_READ_TIMEOUT: Duration = Duration::from_secs(30);
/// Most `POST /v1/events` bodies read, parsed or committed at once; further posts wait for a
/// permit. Bounds ingest memory to about this many times `max_body_bytes` (x3 once parsed).
pub const MAX_CONCURRENT_POSTS: usize = 16;

/// The local HTTP ingest endpoint. Run it with [`IngestHttp::run`].
#[derive(Clone)]
pub struct IngestHttp {
    outbox: Outbox,
    status: Arc<StatusBoard>,
    gateway: Arc<str>,
    posts: Arc<tokio::sync::Semaphore>,
    max_body_bytes: usize,
    max_event_bytes: usize,
}

type HttpResponse = Response<Full<Bytes>>;

impl IngestHttp {
    /// Builds the endpoint over `outbox`; `status` is the relay's board.
    pub fn new(
        outbox: Outbox,
        status: Arc<StatusBoard>,
        gateway: &str,
        config: &HttpIngestConfig,
    ) -> Self {
        Self {
            outbox,
            status,
            gateway: gateway.into(),
            posts: Arc::new(tokio::sync::Semaphore::new(MAX_CONCURRENT_POSTS)),
            max_body_bytes: config.max_body_bytes,
            max_event_bytes: config.max_event_bytes,
        }
    }

    /// Serves on `listener` until `shutdown`; in-flight requests get [`SHUTDOWN_DRAIN`].
    pub async fn run(self, listener: TcpListener, shutdown: CancellationToken) {
        let this = Arc::new(self);
        let service = hyper::service::service_fn(move |req| {
            let this = this.clone();
            async move { Ok::<_, std::convert::Infallible>(this.handle(req).await) }
        });
        crate::http_serve::serve(listener, service, shutdown, SHUTDOWN_DRAIN, "ingest-http").await;
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

    async fn post_events(&self, req: Request<Incoming>) -> HttpResponse {
        let Ok(_permit) = self.posts.acquire().await else {
            return error_response(StatusCode::SERVICE_UNAVAILABLE, "shutting down", None, None);
        };
        let limited = Limited::new(req.into_body(), self.max_body_bytes);
        let body = match tokio::time::timeout(BODY_READ_TIMEOUT, limited.collect()).await {
            Err(_) => {
                return error_response(
                    StatusCode::REQUEST_TIMEOUT,
                    &format!("request body not received within {BODY_READ_TIMEOUT:?}"),
                    None,
                    None,
                );
            }
            Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => {
                return error_response(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    &format!(
                        "body exceeds {} bytes (ingest.http.max_body_bytes)",
                        self.max_body_bytes
                    ),
                    None,
                    None,
                );
            }
            Ok(Err(e)) => {
                return error_response(
                    StatusCode::BAD_REQUEST,
                    &format!("reading body: {e}"),
                    None,
                    None,
                );
            }
            Ok(Ok(collected)) => collected.to_bytes(),
        };
        let events = match parse_events(&body, self.max_event_bytes) {
            Ok(events) => events,
            Err(e) => {
                let status = match &e {
                    e if e.is_oversize() => StatusCode::PAYLOAD_TOO_LARGE,
                    BodyError::TooMany { .. } => StatusCode::PAYLOAD_TOO_LARGE,
                    _ => StatusCode::BAD_REQUEST,
                };
                let (index, field) = e.location();
                log::debug!(error:% = e; "rejected POST /v1/events");
                return error_response(status, &e.to_string(), index, field);
            }
        };
        match self.outbox.append(events).await {
            Ok(appended) => {
                let seqs: Vec<u64> = appended.assigned.iter().map(|(s, _)| *s).collect();
                log::debug!(gateway = &*self.gateway, stream:% = self.outbox.stats().stream,
                    seq = seqs.iter().min(), last_seq = seqs.iter().max(), events = seqs.len();
                    "events committed");
                let ids: Vec<String> = appended
                    .assigned
                    .iter()
                    .map(|(_, id)| id.to_string())
                    .collect();
                json_response(
                    StatusCode::OK,
                    json!({
                        "accepted": seqs.len(),
                        "first_seq": seqs.iter().min(),
                        "last_seq": seqs.iter().max(),
                        "seqs": seqs,
                        "ids": ids,
                    }),
                )
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
                    _ => StatusCode::SERVICE_UNAVAILABLE,
                };
                error_response(status, &e.to_string(), None, None)
            }
        }
    }
}

fn json_response(status: StatusCode, body: Value) -> HttpResponse {
    let mut resp = Response::new(Full::new(Bytes::from(body.to_string())));
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
