//! The reference upstream's MCP face: `edge_ingest` and `edge_cursor` over Streamable HTTP at `/mcp`,
//! in both MCP eras (2026-07-28 without sessions, the `initialize` revisions with them).

use std::borrow::Cow;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use bytes::Bytes;
use http_body_util::{BodyExt, Full, combinators::BoxBody};
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use rmcp::handler::server::router::tool::ToolRouter;
use rmcp::handler::server::tool::schema_for_output;
use rmcp::handler::server::wrapper::Parameters;
use rmcp::model::{
    CallToolResult, ContentBlock, Implementation, ProtocolVersion, ServerCapabilities, ServerConfig,
};
use rmcp::transport::streamable_http_server::session::local::LocalSessionManager;
use rmcp::transport::streamable_http_server::{StreamableHttpServerConfig, StreamableHttpService};
use rmcp::{ServerHandler, tool, tool_handler, tool_router};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tokio_util::task::task_tracker::TaskTrackerToken;

use crate::contract::{Ack, CursorArgs, IngestArgs};
use crate::sink::backend::SinkBackend;
use crate::sink::era::Eras;
use crate::sink::store::SinkError;

/// `serverInfo.name` the sink announces.
pub const SERVER_NAME: &str = "edge-relay-sink";
/// HTTP path of the MCP endpoint; every other path answers 404.
pub const MCP_PATH: &str = "/mcp";
/// `Host` values always accepted (rmcp's DNS-rebinding guard): loopback, any port.
pub const ALLOWED_HOSTS: [&str; 3] = ["localhost", "127.0.0.1", "::1"];
/// Longest `serve_http` waits, after shutdown, for rmcp's session tasks to drop the store.
pub const RELEASE_TIMEOUT: Duration = Duration::from_secs(10);
/// Most connections the reference upstream serves at once (one per relay session, plus probes).
pub const MAX_CONNECTIONS: usize = 1024;

const INGEST_DESCRIPTION: &str = "Store a batch of events of one gateway stream. Arguments: \
{gateway, stream (uuid), events: [{id, seq, source, kind, time, data}] in strictly increasing \
seq order (seq >= 1), gap?: {dropped_from, dropped_to} = seqs dropped before these events}. \
Returns {acked_seq, acked_id}: acked_seq is the highest seq of this stream durably stored \
(fsynced) contiguously from seq 1, recorded gaps counting as stored; acked_id is the id of the \
event at acked_seq (null when that seq is in a gap). Events with seq <= acked_seq are \
duplicates and ignored, so re-sending a batch is safe. isError means nothing was acknowledged.";

const CURSOR_DESCRIPTION: &str = "Report how far a gateway stream is stored. Arguments: \
{gateway, stream (uuid)}. Returns {acked_seq, acked_id}: acked_seq is the highest seq durably \
stored contiguously from seq 1 (gaps count as stored), null when nothing of this stream is \
stored; send the next batch from acked_seq + 1. Call it after every (re)connect.";

/// The MCP server handler: the two tools of the contract (docs/DESIGN.md §3) over a shared [`SinkBackend`] (sled or PostgreSQL).
///
/// Cheap to clone; rmcp makes one per legacy session and one per current-era request.
#[derive(Clone)]
pub struct SinkService {
    store: SinkBackend,
    eras: Eras,
    tool_router: ToolRouter<SinkService>,
    // Held by every copy, so `serve_http` can wait until no copy (hence no store clone) is left.
    _holder: Option<TaskTrackerToken>,
}

#[tool_router]
impl SinkService {
    /// A handler over `store` serving both eras, for any rmcp transport.
    pub fn new(store: impl Into<SinkBackend>) -> Self {
        Self {
            store: store.into(),
            eras: Eras::Both,
            tool_router: Self::tool_router(),
            _holder: None,
        }
    }

    /// The same handler restricted to `eras` (its `supported_protocol_versions`).
    pub fn with_eras(mut self, eras: Eras) -> Self {
        self.eras = eras;
        self
    }

    /// `edge_ingest`: store a batch, answer the acked seq. Idempotent: a batch sent
    /// again is dropped by seq.
    #[tool(
        name = "edge_ingest",
        description = INGEST_DESCRIPTION,
        output_schema = schema_for_output::<Ack>(),
        annotations(idempotent_hint = true, read_only_hint = false, destructive_hint = false)
    )]
    async fn edge_ingest(&self, Parameters(args): Parameters<IngestArgs>) -> CallToolResult {
        let (gateway, stream) = (args.gateway.clone(), args.stream);
        let result = match args.expanded(crate::contract::packed::MAX_UNPACKED_BYTES) {
            Ok(args) => self.store.ingest(&args).await,
            Err(reason) => Err(SinkError::InvalidBatch(reason)),
        };
        answer("edge_ingest", &gateway, stream, result)
    }

    /// `edge_cursor`: answer the acked seq; changes nothing.
    #[tool(
        name = "edge_cursor",
        description = CURSOR_DESCRIPTION,
        output_schema = schema_for_output::<Ack>(),
        annotations(read_only_hint = true)
    )]
    async fn edge_cursor(&self, Parameters(args): Parameters<CursorArgs>) -> CallToolResult {
        let result = self.store.cursor(&args.gateway, args.stream).await;
        answer("edge_cursor", &args.gateway, args.stream, result)
    }
}

#[tool_handler(router = self.tool_router)]
impl ServerHandler for SinkService {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(ServerCapabilities::builder().enable_tools().build())
            .with_server_info(Implementation::new(SERVER_NAME, env!("CARGO_PKG_VERSION")))
            .with_instructions(
                "Reference upstream of edge-relay: edge_cursor after connecting, then edge_ingest \
                 batches from acked_seq + 1.",
            )
    }

    /// The versions of the configured [`Eras`]; rmcp answers any other with -32022.
    fn supported_protocol_versions(&self) -> Cow<'static, [ProtocolVersion]> {
        Cow::Borrowed(self.eras.versions())
    }
}

/// The tool result for a store answer: `structuredContent` = the [`Ack`], or `isError` + text.
fn answer(
    tool: &str,
    gateway: &str,
    stream: uuid::Uuid,
    result: Result<Ack, SinkError>,
) -> CallToolResult {
    match result.map(serde_json::to_value) {
        Ok(Ok(ack)) => CallToolResult::structured(ack),
        Ok(Err(e)) => CallToolResult::error(vec![ContentBlock::text(format!("encode ack: {e}"))]),
        Err(e) => {
            log::warn!(tool = tool, gateway = gateway, stream:% = stream, error:% = e;
                "sink: tool call refused");
            CallToolResult::error(vec![ContentBlock::text(e.to_string())])
        }
    }
}

/// `Host` values the sink accepts when listening on `addr`: [`ALLOWED_HOSTS`], plus the listen
/// address itself when it is a specific one (a sink on `10.0.0.5:8787` is reached as
/// `10.0.0.5`); on an unspecified address (`0.0.0.0`, `::`) every host, since the operator
/// asked for remote clients whose host names the sink cannot know. Empty means "any".
pub fn allowed_hosts(addr: std::net::SocketAddr) -> Vec<String> {
    if addr.ip().is_unspecified() {
        return Vec::new();
    }
    let mut hosts: Vec<String> = ALLOWED_HOSTS.iter().map(|h| h.to_string()).collect();
    let own = addr.ip().to_string();
    if !hosts.contains(&own) {
        hosts.push(own);
    }
    hosts
}

/// Serves the sink's MCP endpoint at [`MCP_PATH`] on `listener` (tokio's `TcpListener`, or any
/// [`Listener`](crate::http_serve::Listener), e.g. a simulated one) until `shutdown`.
///
/// Sessions are rmcp's stateful Streamable HTTP sessions (in memory: a restarted sink answers
/// an old `Mcp-Session-Id` with 404). On `shutdown` it stops accepting, drops every open
/// connection at once (an abrupt upstream stop, as the demo wants), cancels all sessions, and
/// returns only after every task holding a clone of `store` has ended, so the caller can drop
/// its `Arc` and re-open the same data dir.
///
/// # Errors
/// When the listener has no local address, or rmcp's tasks still hold the store after
/// [`RELEASE_TIMEOUT`].
pub async fn serve_http(
    listener: impl crate::http_serve::Listener,
    store: impl Into<SinkBackend>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let keep_alive = StreamableHttpServerConfig::default().sse_keep_alive;
    serve_http_with(listener, store, shutdown, keep_alive).await
}

/// [`serve_http`] with the SSE keep-alive interval chosen (`None`: no keep-alive comments).
///
/// A simulated clock needs `None`: sse-stream re-arms its keep-alive timer from
/// `std::time::Instant::now()`, so under a tokio clock that runs ahead of real time the timer
/// is always due and the stream sends a comment on every poll.
///
/// # Errors
/// As [`serve_http`].
pub async fn serve_http_with(
    listener: impl crate::http_serve::Listener,
    store: impl Into<SinkBackend>,
    shutdown: CancellationToken,
    sse_keep_alive: Option<Duration>,
) -> anyhow::Result<()> {
    let options = HttpOptions {
        sse_keep_alive,
        eras: Eras::Both,
    };
    serve_http_options(listener, store, shutdown, options).await
}

/// How [`serve_http_options`] serves: SSE keep-alive and MCP eras.
#[derive(Debug, Clone, Copy)]
pub struct HttpOptions {
    /// Interval of SSE keep-alive comments; `None` for none (see [`serve_http_with`]).
    pub sse_keep_alive: Option<Duration>,
    /// Revisions served. The current era (MCP 2026-07-28, Basic/Transports) is always
    /// sessionless; the legacy era gets rmcp's stateful sessions (`Mcp-Session-Id`).
    pub eras: Eras,
}

impl Default for HttpOptions {
    fn default() -> Self {
        Self {
            sse_keep_alive: StreamableHttpServerConfig::default().sse_keep_alive,
            eras: Eras::Both,
        }
    }
}

/// [`serve_http`] with every option chosen.
///
/// # Errors
/// As [`serve_http`].
pub async fn serve_http_options(
    listener: impl crate::http_serve::Listener,
    store: impl Into<SinkBackend>,
    shutdown: CancellationToken,
    options: HttpOptions,
) -> anyhow::Result<()> {
    let addr = listener.local_addr().context("sink listener address")?;
    let holders = TaskTracker::new();
    let prototype = SinkService {
        _holder: Some(holders.token()),
        ..SinkService::new(store).with_eras(options.eras)
    };
    let mut config = StreamableHttpServerConfig::default()
        .with_cancellation_token(shutdown.child_token())
        .with_allowed_hosts(allowed_hosts(addr))
        .with_legacy_session_mode(options.eras.serves_legacy())
        // Current only: a request with no protocol version is not served as 2025-03-26.
        .with_stateless_protocol_metadata_required(options.eras == Eras::Current);
    config.sse_keep_alive = options.sse_keep_alive;
    let mcp = StreamableHttpService::new(
        move || Ok(prototype.clone()),
        Arc::new(LocalSessionManager::default()),
        config,
    );
    let router = hyper::service::service_fn(move |request: Request<Incoming>| {
        let mcp = mcp.clone();
        async move { Ok::<_, Infallible>(route(&mcp, request).await) }
    });
    log::info!(addr:% = addr, eras = options.eras.name();
        "sink: serving MCP on http://{addr}{MCP_PATH}");
    crate::http_serve::serve(
        listener,
        router,
        shutdown,
        Duration::ZERO,
        MAX_CONNECTIONS,
        "sink",
    )
    .await;

    holders.close();
    tokio::time::timeout(RELEASE_TIMEOUT, holders.wait())
        .await
        .map_err(|_| {
            anyhow::anyhow!(
                "sink: MCP sessions still hold the store {RELEASE_TIMEOUT:?} after shutdown"
            )
        })?;
    log::info!(addr:% = addr; "sink: stopped");
    Ok(())
}

async fn route(
    mcp: &StreamableHttpService<SinkService, LocalSessionManager>,
    request: Request<Incoming>,
) -> Response<BoxBody<Bytes, Infallible>> {
    if request.uri().path() == MCP_PATH {
        return mcp.handle(request).await;
    }
    let mut response = Response::new(Full::new(Bytes::from_static(b"Not Found")).boxed());
    *response.status_mut() = StatusCode::NOT_FOUND;
    response
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sink::SinkStore;
    use http_body_util::BodyExt;
    use hyper_util::rt::TokioIo;
    use serde_json::{Value, json};
    use std::net::SocketAddr;
    use tokio::net::TcpListener;

    #[test]
    fn a_sink_listening_on_a_specific_address_accepts_that_host() {
        let on = |a: &str| allowed_hosts(a.parse().unwrap());
        assert_eq!(on("127.0.0.1:8787"), ALLOWED_HOSTS);
        assert_eq!(on("10.213.0.1:8787").last().unwrap(), "10.213.0.1");
        assert!(on("10.213.0.1:8787").contains(&"localhost".to_owned()));
        assert!(on("0.0.0.0:8787").is_empty(), "any host");
        assert!(on("[::]:8787").is_empty(), "any host");
    }

    /// One HTTP/1.1 POST (or GET when `body` is None) on a fresh connection.
    async fn send(
        addr: SocketAddr,
        path: &str,
        session: Option<&str>,
        body: Option<Value>,
    ) -> (StatusCode, Option<String>, String) {
        let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .unwrap();
        tokio::spawn(conn);
        let mut request = Request::builder()
            .method(if body.is_some() { "POST" } else { "GET" })
            .uri(path)
            .header("host", addr.to_string())
            .header("accept", "application/json, text/event-stream")
            .header("content-type", "application/json");
        if let Some(session) = session {
            request = request.header("mcp-session-id", session);
        }
        let body = body.map_or_else(Bytes::new, |b| Bytes::from(b.to_string()));
        let response = sender
            .send_request(request.body(Full::new(body)).unwrap())
            .await
            .unwrap();
        let status = response.status();
        let session = response
            .headers()
            .get("mcp-session-id")
            .map(|v| v.to_str().unwrap().to_owned());
        let body = response.into_body().collect().await.unwrap().to_bytes();
        (status, session, String::from_utf8(body.to_vec()).unwrap())
    }

    /// The JSON-RPC answer inside an SSE body.
    fn rpc_answer(sse: &str) -> Value {
        sse.lines()
            .filter_map(|line| line.strip_prefix("data:"))
            .filter_map(|data| serde_json::from_str::<Value>(data.trim()).ok())
            .find(|msg| msg.get("id").is_some())
            .unwrap_or_else(|| panic!("no JSON-RPC answer in {sse:?}"))
    }

    fn call(id: u64, tool: &str, arguments: Value) -> Value {
        json!({"jsonrpc": "2.0", "id": id, "method": "tools/call",
               "params": {"name": tool, "arguments": arguments}})
    }

    #[tokio::test]
    async fn serves_tools_and_releases_the_store_on_shutdown() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(SinkStore::open(dir.path()).unwrap());
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let shutdown = CancellationToken::new();
        let server = tokio::spawn(serve_http(listener, store.clone(), shutdown.clone()));

        let init = json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
            "protocolVersion": "2025-06-18", "capabilities": {},
            "clientInfo": {"name": "edge-relay", "version": "0"}}});
        let (status, session, body) = send(addr, MCP_PATH, None, Some(init)).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(
            rpc_answer(&body)["result"]["serverInfo"]["name"],
            SERVER_NAME
        );
        let session = session.expect("Mcp-Session-Id");
        let initialized = json!({"jsonrpc": "2.0", "method": "notifications/initialized"});
        let (status, _, _) = send(addr, MCP_PATH, Some(&session), Some(initialized)).await;
        assert_eq!(status, StatusCode::ACCEPTED);

        let stream = uuid::Uuid::new_v4();
        let events: Vec<Value> = (1..=3)
            .map(|seq| {
                json!({"id": uuid::Uuid::now_v7(), "seq": seq, "source": "ankle",
                              "kind": "sensor", "time": "2026-11-21T05:00:00Z", "data": seq})
            })
            .collect();
        let ingest = json!({"gateway": "gw-01", "stream": stream, "events": events});
        for id in [2, 3] {
            let (_, _, body) = send(
                addr,
                MCP_PATH,
                Some(&session),
                Some(call(id, "edge_ingest", ingest.clone())),
            )
            .await;
            let result = &rpc_answer(&body)["result"];
            assert_eq!(
                result["structuredContent"],
                json!({"acked_seq": 3, "acked_id": events[2]["id"]}),
                "{body}"
            );
        }
        let bad = json!({"gateway": "", "stream": stream, "events": []});
        let (_, _, body) = send(
            addr,
            MCP_PATH,
            Some(&session),
            Some(call(4, "edge_ingest", bad)),
        )
        .await;
        let result = &rpc_answer(&body)["result"];
        assert_eq!(result["isError"], true);
        assert!(
            result["content"][0]["text"]
                .as_str()
                .unwrap()
                .contains("invalid batch"),
            "{body}"
        );
        assert_eq!(
            send(addr, "/other", None, None).await.0,
            StatusCode::NOT_FOUND
        );

        // A connection in the middle of an endless response (the session's SSE stream) must
        // be cut by shutdown, not waited for.
        let stream_conn = tokio::net::TcpStream::connect(addr).await.unwrap();
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream_conn))
            .await
            .unwrap();
        let conn = tokio::spawn(conn);
        let get = Request::get(MCP_PATH)
            .header("host", addr.to_string())
            .header("accept", "text/event-stream")
            .header("mcp-session-id", &session)
            .body(Full::new(Bytes::new()))
            .unwrap();
        let sse = sender.send_request(get).await.unwrap();
        assert_eq!(sse.status(), StatusCode::OK);
        shutdown.cancel();
        server.await.unwrap().unwrap();
        assert_eq!(
            Arc::strong_count(&store),
            1,
            "a session still holds the store"
        );
        drop(store);
        // Ended or cut, but over: the connection task is gone.
        let _ = sse.into_body().collect().await;
        conn.await.unwrap().ok();

        // "Upstream restarted": same dir, same port; the old session is unknown there.
        let store = Arc::new(SinkStore::open(dir.path()).unwrap());
        let listener = TcpListener::bind(addr).await.unwrap();
        let shutdown = CancellationToken::new();
        let server = tokio::spawn(serve_http(listener, store.clone(), shutdown.clone()));
        let cursor_args = json!({"gateway": "gw-01", "stream": stream});
        let (status, _, _) = send(
            addr,
            MCP_PATH,
            Some(&session),
            Some(call(5, "edge_cursor", cursor_args.clone())),
        )
        .await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        assert_eq!(
            store.cursor("gw-01", stream).await.unwrap().acked_seq,
            Some(3)
        );
        shutdown.cancel();
        server.await.unwrap().unwrap();
    }

    #[test]
    fn tools_advertise_the_contract() {
        let tools = SinkService::tool_router().list_all();
        let names: Vec<_> = tools.iter().map(|t| t.name.as_ref()).collect();
        assert_eq!(names.len(), 2);
        for (tool, arg) in [
            (crate::contract::INGEST_TOOL, "events"),
            (crate::contract::CURSOR_TOOL, "stream"),
        ] {
            let tool = tools.iter().find(|t| t.name == tool).unwrap();
            assert!(tool.input_schema["properties"].get(arg).is_some());
            let output = serde_json::to_string(tool.output_schema.as_ref().unwrap()).unwrap();
            assert!(output.contains("acked_seq") && output.contains("acked_id"));
        }
    }
}
