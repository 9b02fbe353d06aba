//! Streamable HTTP client for the MCP uplink: rmcp's client transport over pooled hyper + rustls.

use std::{collections::HashMap, error::Error as StdError, iter, sync::Arc, time::Duration};

use bytes::Bytes;
use futures::{StreamExt, future, stream::BoxStream};
use http::request::Builder as RequestBuilder;
use http::{HeaderName, HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::{Connect, HttpConnector};
use hyper_util::rt::TokioExecutor;
use rmcp::model::{ClientJsonRpcMessage, ServerJsonRpcMessage};
use rmcp::transport::common::http_header::{
    EVENT_STREAM_MIME_TYPE, HEADER_LAST_EVENT_ID, HEADER_SESSION_ID, JSON_MIME_TYPE,
};
use rmcp::transport::streamable_http_client::{
    AuthRequiredError, InsufficientScopeError, StreamableHttpClient, StreamableHttpError,
    StreamableHttpPostResponse as PostResponse,
};
use sse_stream::{Error as SseError, Sse, SseStream};

use answers::{error_answer, retry_after};

use crate::config::TlsConfig;
use crate::tls::ClientTls;

/// Default bound on establishing one TCP connection.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Default bound on waiting for response headers, and again for a whole JSON/error body.
pub const DEFAULT_RESPONSE_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest successful JSON response body accepted, in bytes (as rmcp's own clients).
const MAX_JSON_BODY: usize = 16 * 1024 * 1024;
/// Largest error response body read into the error message, in bytes.
const MAX_ERROR_BODY: usize = 64 * 1024;
/// Per-event SSE limit for the trait methods that are given none, in bytes.
const DEFAULT_MAX_SSE_EVENT: usize = 16 * 1024 * 1024;
/// Headers the transport sets itself; `MCP-Protocol-Version` is absent on purpose because
/// rmcp passes it in `custom_headers` after `initialize`.
const RESERVED_HEADERS: [&str; 3] = ["accept", HEADER_SESSION_ID, HEADER_LAST_EVENT_ID];

type Error = StreamableHttpError<HttpClientError>;
type SseResponse = BoxStream<'static, Result<Sse, SseError>>;

/// Failures of [`HyperHttpClient`]; rmcp sees them as `StreamableHttpError::Client`.
#[derive(Debug, thiserror::Error)]
pub enum HttpClientError {
    /// A network wait exceeded its [`HttpTimeouts`] bound; `what` names the wait.
    #[error("timed out after {after:?} waiting for {what}")]
    Timeout {
        /// The wait (`connecting to ...`, `the response headers`).
        what: String,
        /// The bound that elapsed.
        after: Duration,
    },
    /// Connecting, writing the request or reading its head failed; `detail` is the cause chain.
    #[error("{what} failed: {detail}")]
    Request {
        /// The step that failed.
        what: String,
        /// Its cause chain, in words.
        detail: String,
    },
    /// Reading a response body failed mid-way.
    #[error("reading the response body: {0}")]
    Hyper(#[from] hyper::Error),
    /// The request could not be built (bad URI or header value).
    #[error("building the request: {0}")]
    Http(#[from] http::Error),
    /// The outgoing message could not be serialized.
    #[error("serializing the message: {0}")]
    Json(#[from] serde_json::Error),
    /// One SSE event grew past the transport's `max_sse_event_size`.
    #[error("SSE event exceeded the maximum size of {max_size} bytes")]
    SseEventTooLarge {
        /// The bound, bytes.
        max_size: usize,
    },
    /// A constructor argument is unusable.
    #[error("invalid HTTP client config: {0}")]
    Config(&'static str),
    /// The server answered an error status; `body` is scrubbed of the bearer token and cut to
    /// [`crate::redact::MAX_ERROR_TEXT`] bytes; `retry_after` is its `Retry-After` on 429/503.
    #[error("HTTP {status}: {body}")]
    Status {
        /// The status code.
        status: StatusCode,
        /// Its `Retry-After` (429/503 only).
        retry_after: Option<Duration>,
        /// The body, scrubbed and cut.
        body: String,
    },
}

impl HttpClientError {
    /// How long the server asked to be left alone (`Retry-After` on a 429 or 503), if it did.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            Self::Status { retry_after, .. } => *retry_after,
            _ => None,
        }
    }
}

impl From<HttpClientError> for StreamableHttpError<HttpClientError> {
    fn from(e: HttpClientError) -> Self {
        StreamableHttpError::Client(e)
    }
}

/// Bounds on each network wait; both must be non-zero.
#[derive(Debug, Clone, Copy)]
pub struct HttpTimeouts {
    /// Bound on one TCP connect (a TLS handshake counts toward `response_headers`).
    pub connect: Duration,
    /// Bound on connect + send + response headers, applied again to reading a JSON/error body.
    /// A server answering in JSON sends its headers only after the handler finishes, so this
    /// also caps such a tool call. SSE streams are not bounded here: they may idle legitimately.
    pub response_headers: Duration,
}

impl Default for HttpTimeouts {
    fn default() -> Self {
        Self {
            connect: DEFAULT_CONNECT_TIMEOUT,
            response_headers: DEFAULT_RESPONSE_TIMEOUT,
        }
    }
}

/// The production connector: TCP by hyper-util's resolver, TLS by rustls for `https://`.
pub type DefaultConnector = super::https::HttpsConnector;

/// rmcp [`StreamableHttpClient`] on a pooled HTTP/1.1 hyper client for `http://` and `https://`
/// (rustls, ring; `[upstream.tls]` or the webpki roots). Clones share the connection pool.
///
/// `C` is the `connect` side of the network seam: any hyper-util [`Connect`] (a tower
/// `Service<Uri>`); [`HyperHttpClient::new`] uses [`DefaultConnector`], the partition suite a
/// simulated network. Static dispatch, so the daemon pays nothing for the seam.
#[derive(Clone)]
pub struct HyperHttpClient<C = DefaultConnector> {
    inner: Client<C, Full<Bytes>>,
    timeouts: HttpTimeouts,
}

impl HyperHttpClient {
    /// Builds the client, trusting the webpki roots for `https://`. Errors with
    /// [`HttpClientError::Config`] if a timeout is zero.
    pub fn new(timeouts: HttpTimeouts) -> Result<Self, HttpClientError> {
        Self::with_tls(
            timeouts,
            ClientTls::new("upstream.tls", TlsConfig::default()),
        )
    }

    /// Builds the client with `tls` for `https://`: its files are read for each new
    /// connection. Errors with [`HttpClientError::Config`] if a timeout is zero.
    pub fn with_tls(timeouts: HttpTimeouts, tls: ClientTls) -> Result<Self, HttpClientError> {
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_connect_timeout(Some(timeouts.connect));
        Self::with_connector(super::https::HttpsConnector::new(http, tls), timeouts)
    }
}

impl<C: Connect + Clone + Send + Sync + 'static> HyperHttpClient<C> {
    /// Builds the client over `connector`, which bounds its own connects (`timeouts.connect`
    /// is applied by [`HyperHttpClient::new`]'s connector only). Errors with
    /// [`HttpClientError::Config`] if a timeout is zero.
    pub fn with_connector(connector: C, timeouts: HttpTimeouts) -> Result<Self, HttpClientError> {
        if timeouts.connect.is_zero() || timeouts.response_headers.is_zero() {
            return Err(HttpClientError::Config("timeouts must be non-zero"));
        }
        let inner = Client::builder(TokioExecutor::new()).build(connector);
        Ok(Self { inner, timeouts })
    }

    /// Sends the request and waits, bounded, for the response head.
    async fn send(
        &self,
        builder: RequestBuilder,
        body: Full<Bytes>,
    ) -> Result<Response<Incoming>, Error> {
        let request = builder.body(body).map_err(HttpClientError::Http)?;
        let uri = request.uri().to_string();
        let what = format!("{} {}", request.method(), crate::redact::url(&uri));
        let after = self.timeouts.response_headers;
        let err = match tokio::time::timeout(after, self.inner.request(request)).await {
            Ok(Ok(response)) => return Ok(response),
            Ok(Err(e)) if is_connect_timeout(&e) => {
                let what = format!("a connection for {what}");
                HttpClientError::Timeout {
                    what,
                    after: self.timeouts.connect,
                }
            }
            Ok(Err(e)) => HttpClientError::Request {
                what,
                detail: error_chain(&e),
            },
            Err(_) => {
                let what = format!("the response headers of {what}");
                HttpClientError::Timeout { what, after }
            }
        };
        Err(err.into())
    }

    /// Reads a whole body of at most `max` bytes within the response timeout.
    async fn read_body(
        &self,
        what: &str,
        response: Response<Incoming>,
        max: usize,
    ) -> Result<Vec<u8>, Error> {
        let after = self.timeouts.response_headers;
        let what = format!("the body of {what}");
        let read = tokio::time::timeout(after, read_bounded_body(response, max)).await;
        read.map_err(|_| HttpClientError::Timeout { what, after })?
    }
}

/// True if hyper-util's own connect timer fired (it wraps `Elapsed` in an `io::Error`).
fn is_connect_timeout(e: &hyper_util::client::legacy::Error) -> bool {
    let timer_fired = |e: &(dyn StdError + 'static)| {
        let inner = e
            .downcast_ref::<std::io::Error>()
            .and_then(std::io::Error::get_ref);
        inner.is_some_and(|inner| inner.is::<tokio::time::error::Elapsed>())
    };
    e.is_connect() && iter::successors(e.source(), |&e| e.source()).any(timer_fired)
}

/// hyper-util's own message is just "client error (Connect)", and rmcp shows only `Display`.
fn error_chain(e: &(dyn StdError + 'static)) -> String {
    let chain = iter::successors(Some(e), |&e| e.source()).map(ToString::to_string);
    chain.collect::<Vec<_>>().join(": ")
}

async fn read_bounded_body(response: Response<Incoming>, max: usize) -> Result<Vec<u8>, Error> {
    let too_large = Error::ResponseBodyTooLarge { max_size: max };
    let declared = response.headers().get(header::CONTENT_LENGTH);
    if declared
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok())
        .is_some_and(|n| n > max as u64)
    {
        return Err(too_large);
    }
    let (mut body, mut bytes) = (response.into_body(), Vec::new());
    while let Some(frame) = body.frame().await {
        let Ok(chunk) = frame.map_err(HttpClientError::Hyper)?.into_data() else {
            continue;
        };
        if chunk.len() > max - bytes.len() {
            return Err(too_large);
        }
        bytes.extend_from_slice(&chunk);
    }
    Ok(bytes)
}

/// Counts the field bytes of the SSE event being received; a blank line starts the next one.
#[derive(Default)]
struct EventSizeLimit {
    max: usize,
    event: usize,
    line: usize,
    after_cr: bool,
}

impl EventSizeLimit {
    fn observe(&mut self, chunk: &[u8]) -> Result<(), HttpClientError> {
        for &byte in chunk {
            let after_cr = std::mem::replace(&mut self.after_cr, byte == b'\r');
            match byte {
                b'\n' if after_cr => {} // CRLF ends one line, not two
                b'\r' | b'\n' if self.line == 0 => self.event = 0,
                b'\r' | b'\n' => self.line = 0,
                _ if self.event >= self.max => {
                    return Err(HttpClientError::SseEventTooLarge { max_size: self.max });
                }
                _ => (self.line, self.event) = (self.line + 1, self.event + 1),
            }
        }
        Ok(())
    }
}

/// Parses `body` as SSE, ending with an error once one event exceeds `max_event` bytes.
fn bounded_sse_stream(body: Incoming, max_event: usize) -> SseResponse {
    let mut limit = EventSizeLimit {
        max: max_event,
        ..Default::default()
    };
    let bytes = body
        .into_data_stream()
        .map(move |chunk| {
            let chunk = chunk?;
            limit.observe(&chunk)?;
            Ok::<_, HttpClientError>(chunk)
        })
        // End at the first error so the parser never sees bytes past the limit.
        .scan(false, |failed, item| {
            let pass = !std::mem::replace(failed, item.is_err());
            future::ready(pass.then_some(item))
        });
    SseStream::from_bytes_stream(bytes).boxed()
}

/// Starts a request carrying the session, auth and custom headers; rejects reserved headers.
/// Accept lists both types (MCP 2025-06-18, Basic/Transports, Streamable HTTP, §Sending Messages).
fn request(
    method: Method,
    uri: &str,
    session_id: Option<&str>,
    auth: Option<String>,
    custom: HashMap<HeaderName, HeaderValue>,
) -> Result<RequestBuilder, Error> {
    let accept = format!("{EVENT_STREAM_MIME_TYPE}, {JSON_MIME_TYPE}");
    let mut builder = Request::builder()
        .method(method)
        .uri(uri)
        .header(header::ACCEPT, accept);
    if let Some(session_id) = session_id {
        builder = builder.header(HEADER_SESSION_ID, session_id);
    }
    if let Some(token) = auth {
        builder = builder.header(header::AUTHORIZATION, format!("Bearer {token}"));
    }
    for (name, value) in custom {
        if RESERVED_HEADERS
            .iter()
            .any(|r| name.as_str().eq_ignore_ascii_case(r))
        {
            return Err(Error::ReservedHeaderConflict(name.to_string()));
        }
        builder = builder.header(name, value);
    }
    Ok(builder)
}

/// Maps 401/403 carrying `WWW-Authenticate` to rmcp's auth errors.
fn check_auth(response: &Response<Incoming>) -> Result<(), Error> {
    let status = response.status();
    let challenge = response.headers().get(header::WWW_AUTHENTICATE);
    let Some(challenge) = challenge.filter(|_| matches!(status.as_u16(), 401 | 403)) else {
        return Ok(());
    };
    let Ok(challenge) = challenge.to_str() else {
        let text = "invalid www-authenticate header value";
        return Err(Error::UnexpectedServerResponse(text.into()));
    };
    if status == StatusCode::UNAUTHORIZED {
        return Err(Error::AuthRequired(AuthRequiredError::new(
            challenge.into(),
        )));
    }
    let scope = scope_of(challenge);
    Err(Error::InsufficientScope(InsufficientScopeError::new(
        challenge.into(),
        scope,
    )))
}

/// The `scope=` parameter of a challenge, quoted or bare.
fn scope_of(challenge: &str) -> Option<String> {
    let start = challenge.to_ascii_lowercase().find("scope=")? + "scope=".len();
    let rest = &challenge[start..];
    let value = match rest.strip_prefix('"') {
        Some(quoted) => &quoted[..quoted.find('"')?],
        None => rest.split([',', ';', ' ', '\t']).next()?,
    };
    (!value.is_empty()).then(|| value.to_owned())
}

/// The response's content type if it is SSE (`Ok(true)`) or JSON (`Ok(false)`).
fn sse_or_json(response: &Response<Incoming>) -> Result<bool, Error> {
    let content_type = response
        .headers()
        .get(header::CONTENT_TYPE)
        .map(HeaderValue::as_bytes);
    match content_type {
        Some(ct) if ct.starts_with(EVENT_STREAM_MIME_TYPE.as_bytes()) => Ok(true),
        Some(ct) if ct.starts_with(JSON_MIME_TYPE.as_bytes()) => Ok(false),
        other => Err(Error::UnexpectedContentType(
            other.map(|ct| String::from_utf8_lossy(ct).into()),
        )),
    }
}

impl<C: Connect + Clone + Send + Sync + 'static> StreamableHttpClient for HyperHttpClient<C> {
    type Error = HttpClientError;

    async fn post_message(
        &self,
        uri: Arc<str>,
        msg: ClientJsonRpcMessage,
        sid: Option<Arc<str>>,
        auth: Option<String>,
        headers: HashMap<HeaderName, HeaderValue>,
    ) -> Result<PostResponse, Error> {
        let max = DEFAULT_MAX_SSE_EVENT;
        self.post_message_with_max_sse_event_size(uri, msg, sid, auth, headers, max)
            .await
    }

    /// POSTs one message; 202/204 are `Accepted`, 404 with a session is `SessionExpired`
    /// (MCP 2025-11-25, Basic/Transports, Streamable HTTP, §Session Management); a 4xx with a
    /// JSON-RPC error body is that answer (`error_answer`, MCP 2026-07-28).
    async fn post_message_with_max_sse_event_size(
        &self,
        uri: Arc<str>,
        msg: ClientJsonRpcMessage,
        sid: Option<Arc<str>>,
        auth: Option<String>,
        headers: HashMap<HeaderName, HeaderValue>,
        max: usize,
    ) -> Result<PostResponse, Error> {
        let body = serde_json::to_vec(&msg).map_err(HttpClientError::Json)?;
        // An upstream may echo request headers in an error body: the token is scrubbed there.
        let token = auth.clone();
        let builder = request(Method::POST, &uri, sid.as_deref(), auth, headers)?;
        let builder = builder.header(header::CONTENT_TYPE, JSON_MIME_TYPE);
        let response = self.send(builder, Full::from(body)).await?;
        let (status, what) = (
            response.status(),
            format!("POST {}", crate::redact::url(&uri)),
        );
        check_auth(&response)?;
        if matches!(status, StatusCode::ACCEPTED | StatusCode::NO_CONTENT) {
            return Ok(PostResponse::Accepted);
        }
        // Only a legacy session can expire; without one (MCP 2026-07-28) a 404 is an answer.
        if status == StatusCode::NOT_FOUND && sid.is_some() {
            return Err(Error::SessionExpired);
        }
        let new_session = response
            .headers()
            .get(HEADER_SESSION_ID)
            .and_then(|v| v.to_str().ok())
            .map(String::from);
        if !status.is_success() {
            let retry_after = retry_after(&response);
            let body = match self.read_body(&what, response, MAX_ERROR_BODY).await {
                Ok(body) => String::from_utf8_lossy(&body).into_owned(),
                Err(Error::ResponseBodyTooLarge { max_size }) => {
                    format!("<error body over {max_size} bytes, not read>")
                }
                Err(_) => "<failed to read response body>".to_owned(),
            };
            let body = crate::redact::error_text(&body, token.as_deref());
            if let Some(answer) = error_answer(&msg, sid.is_some(), status, &body) {
                return Ok(PostResponse::Json(answer, new_session));
            }
            return Err(HttpClientError::Status {
                status,
                retry_after,
                body,
            }
            .into());
        }
        let headers = response.headers();
        let is_request = matches!(msg, ClientJsonRpcMessage::Request(_));
        if !is_request
            && headers
                .get(header::CONTENT_LENGTH)
                .is_some_and(|n| n == "0")
        {
            return Ok(PostResponse::Accepted);
        }
        if sse_or_json(&response)? {
            let stream = bounded_sse_stream(response.into_body(), max);
            return Ok(PostResponse::Sse(stream, new_session));
        }
        let body = self.read_body(&what, response, MAX_JSON_BODY).await?;
        match serde_json::from_slice::<ServerJsonRpcMessage>(&body) {
            Ok(reply) => Ok(PostResponse::Json(reply, new_session)),
            Err(e) if !is_request => {
                log::warn!("unparsable JSON reply to a notification, taken as accepted: {e}");
                Ok(PostResponse::Accepted)
            }
            Err(e) => {
                let preview = String::from_utf8_lossy(&body[..body.len().min(256)]);
                let preview = crate::redact::error_text(&preview, token.as_deref());
                let text = format!(
                    "could not parse JSON response as ServerJsonRpcMessage: {e}: {preview}"
                );
                Err(Error::UnexpectedServerResponse(text.into()))
            }
        }
    }

    /// DELETEs the session; 405 means the server keeps it and is not an error.
    async fn delete_session(
        &self,
        uri: Arc<str>,
        sid: Arc<str>,
        auth: Option<String>,
        headers: HashMap<HeaderName, HeaderValue>,
    ) -> Result<(), Error> {
        let builder = request(Method::DELETE, &uri, Some(&sid), auth, headers)?;
        match self.send(builder, Full::default()).await?.status() {
            StatusCode::METHOD_NOT_ALLOWED => {
                log::debug!("server does not support deleting sessions")
            }
            status if !status.is_success() => {
                return Err(Error::UnexpectedServerResponse(
                    format!("delete_session returned {status}").into(),
                ));
            }
            _ => {}
        }
        Ok(())
    }

    async fn get_stream(
        &self,
        uri: Arc<str>,
        sid: Option<Arc<str>>,
        last_id: Option<String>,
        auth: Option<String>,
        headers: HashMap<HeaderName, HeaderValue>,
    ) -> Result<SseResponse, Error> {
        let max = DEFAULT_MAX_SSE_EVENT;
        self.get_stream_with_max_sse_event_size(uri, sid, last_id, auth, headers, max)
            .await
    }

    /// Opens the server's SSE stream, resuming after `Last-Event-ID` if given
    /// (MCP 2025-06-18, Basic/Transports, Streamable HTTP, §Resumability);
    /// 405 is `ServerDoesNotSupportSse`.
    async fn get_stream_with_max_sse_event_size(
        &self,
        uri: Arc<str>,
        sid: Option<Arc<str>>,
        last_id: Option<String>,
        auth: Option<String>,
        headers: HashMap<HeaderName, HeaderValue>,
        max: usize,
    ) -> Result<SseResponse, Error> {
        let mut builder = request(Method::GET, &uri, sid.as_deref(), auth, headers)?;
        if let Some(id) = last_id {
            builder = builder.header(HEADER_LAST_EVENT_ID, id);
        }
        let response = self.send(builder, Full::default()).await?;
        let status = response.status();
        if status == StatusCode::METHOD_NOT_ALLOWED {
            return Err(Error::ServerDoesNotSupportSse);
        }
        check_auth(&response)?;
        if !status.is_success() {
            return Err(Error::UnexpectedServerResponse(
                format!("get_stream returned {status}").into(),
            ));
        }
        // Like rmcp's clients, a JSON content type is parsed as SSE too.
        sse_or_json(&response)?;
        Ok(bounded_sse_stream(response.into_body(), max))
    }
}

mod answers;
#[cfg(test)]
mod tests;
