use super::answers::parse_retry_after;
use super::*;
use hyper_util::{rt::TokioIo, service::TowerToHyperService};
use rmcp::handler::server::{tool::Extension, wrapper::Parameters};
use rmcp::model::{CallToolRequestParams, ClientConfig, ServerCapabilities, ServerConfig};
use rmcp::service::RunningService;
use rmcp::transport::StreamableHttpClientTransport;
use rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig as ClientTransportConfig;
use rmcp::transport::streamable_http_server::{
    StreamableHttpServerConfig, StreamableHttpService, session::local::LocalSessionManager,
};
use rmcp::{RoleClient, ServerHandler, ServiceError, ServiceExt, tool, tool_handler, tool_router};
use std::net::SocketAddr;
use tokio::net::{TcpListener, ToSocketAddrs};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

#[derive(serde::Deserialize, schemars::JsonSchema)]
struct EchoArgs {
    text: String,
}

#[derive(Clone)]
struct Echo;

#[tool_router]
impl Echo {
    #[tool(description = "Echo text and the MCP-Protocol-Version header it came with")]
    fn echo(
        &self,
        Parameters(args): Parameters<EchoArgs>,
        Extension(parts): Extension<http::request::Parts>,
    ) -> String {
        let version = parts
            .headers
            .get("mcp-protocol-version")
            .and_then(|v| v.to_str().ok());
        format!("{} @ {}", args.text, version.unwrap_or("none"))
    }
}

#[tool_handler]
impl ServerHandler for Echo {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(ServerCapabilities::builder().enable_tools().build())
    }
}

/// An `Echo` MCP server; `stop` returns once its listener and connections are closed.
struct Server {
    addr: SocketAddr,
    url: String,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl Server {
    async fn start(addr: impl ToSocketAddrs, config: StreamableHttpServerConfig) -> Self {
        let listener = TcpListener::bind(addr).await.expect("bind");
        let addr = listener.local_addr().expect("local addr");
        let url = format!("http://{addr}/mcp");
        let mcp = StreamableHttpService::new(
            || Ok(Echo),
            Arc::new(LocalSessionManager::default()),
            config,
        );
        let (service, stop) = (TowerToHyperService::new(mcp), CancellationToken::new());
        let token = stop.clone();
        let task = tokio::spawn(async move {
            let mut connections = JoinSet::new();
            while let Some(Ok((tcp, _))) = token.run_until_cancelled(listener.accept()).await {
                let http = hyper::server::conn::http1::Builder::new();
                connections.spawn(http.serve_connection(TokioIo::new(tcp), service.clone()));
            }
            connections.shutdown().await;
        });
        Self {
            addr,
            url,
            stop,
            task,
        }
    }

    async fn stop(self) {
        self.stop.cancel();
        self.task.await.expect("server task");
    }
}

fn client() -> HyperHttpClient {
    HyperHttpClient::new(HttpTimeouts::default()).expect("client builds")
}

async fn connect(config: ClientTransportConfig) -> RunningService<RoleClient, ClientConfig> {
    let transport = StreamableHttpClientTransport::with_client(client(), config);
    ClientConfig::default()
        .serve(transport)
        .await
        .expect("initialize")
}

/// POSTs `initialize` directly, allowing SSE events of at most 64 bytes.
async fn post_initialize(client: &HyperHttpClient, url: &str) -> Result<PostResponse, Error> {
    let init = serde_json::json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
        "protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}}});
    let init = serde_json::from_value(init).expect("valid initialize");
    let headers = HashMap::new();
    client
        .post_message_with_max_sse_event_size(url.into(), init, None, None, headers, 64)
        .await
}

/// Initializes raw (returning that reply), then lists and calls the tool through rmcp.
async fn round_trip(config: StreamableHttpServerConfig) -> (PostResponse, Server) {
    let server = Server::start("127.0.0.1:0", config).await;
    let raw = post_initialize(&client(), &server.url)
        .await
        .expect("raw initialize");
    let peer = connect(ClientTransportConfig::with_uri(server.url.as_str())).await;
    let tools = peer.list_all_tools().await.expect("tools/list");
    assert_eq!(tools.len(), 1);
    let args = serde_json::json!({"text": "hi"}).as_object().cloned();
    let call = CallToolRequestParams::new(tools[0].name.clone()).with_arguments(args.expect("map"));
    let result = peer.call_tool(call).await.expect("tools/call");
    // rmcp sends the negotiated MCP-Protocol-Version through `custom_headers`.
    let text = result.content[0].as_text().map(|t| t.text.as_str());
    assert_eq!(text, Some("hi @ 2025-11-25"));
    peer.cancel().await.expect("clean shutdown");
    (raw, server)
}

#[tokio::test]
async fn tool_call_over_sse_responses() {
    let (raw, server) = round_trip(StreamableHttpServerConfig::default()).await;
    let PostResponse::Sse(events, Some(_)) = raw else {
        panic!("{raw:?}")
    };
    let mut errors = events.filter_map(|item| future::ready(item.err()));
    let err = errors
        .next()
        .await
        .expect("the initialize result is over 64 bytes");
    let expected = "body error: SSE event exceeded the maximum size of 64 bytes";
    assert_eq!(err.to_string(), expected);
    server.stop().await;
}

#[tokio::test]
async fn tool_call_over_json_responses() {
    // rmcp answers with plain JSON only when it keeps no sessions.
    let config = StreamableHttpServerConfig::default()
        .with_legacy_session_mode(false)
        .with_json_response(true);
    let (raw, server) = round_trip(config).await;
    assert!(matches!(raw, PostResponse::Json(_, None)), "{raw:?}");
    server.stop().await;
}

#[tokio::test]
async fn forgotten_session_fails_the_next_call() {
    let server = Server::start("127.0.0.1:0", StreamableHttpServerConfig::default()).await;
    let config = ClientTransportConfig::with_uri(server.url.as_str());
    let peer = connect(config.reinit_on_expired_session(false)).await;
    peer.list_all_tools().await.expect("tools/list");

    let addr = server.addr;
    server.stop().await;
    let server = Server::start(addr, StreamableHttpServerConfig::default()).await;
    // rmcp hands the typed error to the caller inside ServiceError::TransportSend.
    for _ in 0..2 {
        let err = peer
            .call_tool(CallToolRequestParams::new("echo"))
            .await
            .expect_err("session is gone");
        let ServiceError::TransportSend(ref transport) = err else {
            panic!("{err:?}")
        };
        let typed = transport.error.downcast_ref::<Error>();
        assert!(matches!(typed, Some(Error::SessionExpired)), "{err:?}");
    }
    server.stop().await;
}

#[tokio::test]
async fn silent_or_absent_server_fails_naming_the_wait() {
    // The kernel completes the handshake into the backlog; nobody ever answers.
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let url = format!("http://{}/mcp", listener.local_addr().expect("local addr"));
    let timeouts = HttpTimeouts {
        connect: Duration::from_secs(1),
        response_headers: Duration::from_millis(100),
    };
    let client = HyperHttpClient::new(timeouts).expect("client builds");
    let err = post_initialize(&client, &url).await.expect_err("no answer");
    assert!(
        matches!(err, Error::Client(HttpClientError::Timeout { .. })),
        "{err:?}"
    );
    let expected = "timed out after 100ms waiting for the response headers of POST";
    assert_eq!(err.to_string(), format!("Client error: {expected} {url}"));
    drop(listener);
    let err = post_initialize(&client, &url).await.expect_err("refused");
    assert!(err.to_string().contains("Connection refused"), "{err}");
}

#[test]
fn event_limit_header_rules_and_scope_parsing() {
    let mut limit = EventSizeLimit {
        max: 10,
        ..Default::default()
    };
    assert!(
        limit
            .observe(b"data: 1234\r\n\r\n: ping\n\ndata: 5678\n\n")
            .is_ok()
    );
    assert!(limit.observe(b"data: 12\r\ndata: 3\r\n").is_err());
    let get = |name| {
        let custom =
            HashMap::from([(HeaderName::from_static(name), HeaderValue::from_static("x"))]);
        request(Method::GET, "http://h/", None, None, custom)
    };
    assert!(matches!(
        get("mcp-session-id"),
        Err(Error::ReservedHeaderConflict(_))
    ));
    assert!(get("mcp-protocol-version").is_ok());
    let quoted = r#"Bearer error="insufficient_scope", scope="a b""#;
    assert_eq!(scope_of(quoted).as_deref(), Some("a b"));
    assert_eq!(
        scope_of("Bearer scope=read:data, x=y").as_deref(),
        Some("read:data")
    );
    let zero = HttpTimeouts {
        connect: Duration::ZERO,
        ..Default::default()
    };
    assert!(matches!(
        HyperHttpClient::new(zero),
        Err(HttpClientError::Config(_))
    ));
}

#[test]
fn retry_after_is_seconds_or_an_http_date() {
    assert_eq!(parse_retry_after(" 7 "), Some(Duration::from_secs(7)));
    let later = std::time::SystemTime::now() + Duration::from_secs(3600);
    let parsed = parse_retry_after(&httpdate::fmt_http_date(later)).unwrap();
    assert!(parsed > Duration::from_secs(3590) && parsed <= Duration::from_secs(3600));
    assert_eq!(
        parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT"),
        Some(Duration::ZERO)
    );
    assert_eq!(parse_retry_after("soon"), None);
}
