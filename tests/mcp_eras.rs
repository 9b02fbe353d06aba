//! Both MCP eras end to end over Streamable HTTP: the relay against the reference upstream
//! serving only the current era (2026-07-28), only the legacy one (initialize), or both; rmcp's
//! own client against the upstream in each era; 4xx JSON-RPC error bodies; `probe` (the real
//! binary) in each mode; and the contract diagnosis after a refused tool call.

use edge_relay_testkit as support;

use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use edge_relay::demo::audit::audit;
use edge_relay::sink::Eras;
use edge_relay::status::{StatusReport, UpstreamState};
use edge_relay::uplink::http_client::{HttpClientError, HttpTimeouts, HyperHttpClient};
use rmcp::handler::server::router::tool::ToolRouter;
use rmcp::handler::server::wrapper::Parameters;
use rmcp::model::CallToolResult;
use rmcp::model::{
    CallToolRequestParams, ClientConfig, ClientJsonRpcMessage, ErrorCode, ProtocolVersion,
    ServerJsonRpcMessage,
};
use rmcp::transport::StreamableHttpClientTransport;
use rmcp::transport::streamable_http_client::{
    StreamableHttpClient, StreamableHttpClientTransportConfig, StreamableHttpError,
    StreamableHttpPostResponse,
};
use rmcp::transport::streamable_http_server::session::local::LocalSessionManager;
use rmcp::transport::streamable_http_server::{StreamableHttpServerConfig, StreamableHttpService};
use rmcp::{ClientLifecycleMode, ClientServiceExt, ServerHandler, tool, tool_handler, tool_router};
use serde_json::{Value, json};
use support::process::{binary, write_config};
use support::recording::{recording_proxy, requests};
use support::*;
use tokio_util::sync::CancellationToken;

/// Events per relay run: a few batches (`batch_max_events` is 200 in `relay_config`).
const EVENTS: u64 = 450;

/// The relay delivers `EVENTS` to a sink serving `eras`; returns the negotiated version.
async fn relay_delivers_to(eras: Eras) -> String {
    let tmp = tempfile::tempdir().unwrap();
    let sink = Sink::start_eras(&tmp.path().join("sink"), eras).await;
    let relay = start_relay(relay_config(&tmp.path().join("relay"), &sink.url())).await;
    let batch: Vec<Value> = (0..EVENTS).map(|i| event("imu", i)).collect();
    let (code, answer) = post(relay.ingest_addr, Value::Array(batch).to_string()).await;
    assert_eq!(code, 200, "{answer}");
    drained(&relay).await;
    let stored = sink.events("test-gw", relay.outbox.stats().stream);
    let result = audit(&accepted(&answer), &stored);
    assert!(result.is_clean(), "{result}");
    assert_eq!(result.delivered, EVENTS as usize);
    let report = report(&relay);
    assert_eq!(report.upstream, UpstreamState::Connected, "{report:?}");
    assert_eq!(report.reconnects, 1, "one session, no retries: {report:?}");
    relay.stop().await;
    report.protocol_version.expect("a negotiated version")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_speaks_the_current_era_to_an_upstream_serving_only_it() {
    assert_eq!(relay_delivers_to(Eras::Current).await, "2026-07-28");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_falls_back_to_initialize_for_an_upstream_serving_only_the_legacy_era() {
    assert_eq!(relay_delivers_to(Eras::Legacy).await, "2025-11-25");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_prefers_the_current_era_when_the_upstream_serves_both() {
    assert_eq!(relay_delivers_to(Eras::Both).await, "2026-07-28");
}

/// rmcp's client with `lifecycle` against a sink serving `eras`: the negotiated version, the
/// tools' annotations and an `edge_cursor` call, or the start's error text.
async fn rmcp_client(eras: Eras, lifecycle: ClientLifecycleMode) -> Result<String, String> {
    let tmp = tempfile::tempdir().unwrap();
    let sink = Sink::start_eras(tmp.path(), eras).await;
    let http = HyperHttpClient::new(HttpTimeouts::default()).unwrap();
    let config = StreamableHttpClientTransportConfig::with_uri(sink.url());
    let transport = StreamableHttpClientTransport::with_client(http, config);
    let client = ClientConfig::default()
        .serve_with_lifecycle(transport, lifecycle)
        .await
        .map_err(|e| e.to_string())?;
    let version = client.peer_info().unwrap().protocol_version.to_string();
    let tools = client.list_all_tools().await.unwrap();
    let hint = |name: &str| {
        let tool = tools.iter().find(|t| t.name == name).unwrap();
        tool.annotations.clone().unwrap()
    };
    assert_eq!(hint("edge_ingest").idempotent_hint, Some(true));
    assert_eq!(hint("edge_cursor").read_only_hint, Some(true));
    let args = json!({"gateway": "gw", "stream": uuid::Uuid::new_v4()});
    let params =
        CallToolRequestParams::new("edge_cursor").with_arguments(args.as_object().unwrap().clone());
    let result = client.call_tool(params).await.unwrap();
    assert_eq!(
        result.structured_content,
        Some(json!({"acked_seq": null, "acked_id": null}))
    );
    client.cancel().await.unwrap();
    sink.stop().await;
    Ok(version)
}

fn discover() -> ClientLifecycleMode {
    ClientLifecycleMode::Discover {
        preferred_versions: vec![ProtocolVersion::V_2026_07_28],
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rmcp_client_uses_the_upstream_in_either_era_and_only_in_the_served_ones() {
    let initialize = || ClientLifecycleMode::Initialize;
    assert_eq!(
        rmcp_client(Eras::Both, discover()).await.unwrap(),
        "2026-07-28"
    );
    assert_eq!(
        rmcp_client(Eras::Current, discover()).await.unwrap(),
        "2026-07-28"
    );
    assert_eq!(
        rmcp_client(Eras::Both, initialize()).await.unwrap(),
        "2025-11-25"
    );
    assert_eq!(
        rmcp_client(Eras::Legacy, initialize()).await.unwrap(),
        "2025-11-25"
    );
    // The restricted modes refuse the other era with -32022 naming what they serve.
    let refused = rmcp_client(Eras::Legacy, discover()).await.unwrap_err();
    assert!(
        refused.contains("2025-11-25") && !refused.contains("server: [\"2026"),
        "{refused}"
    );
    let refused = rmcp_client(Eras::Current, initialize()).await.unwrap_err();
    assert!(
        refused.contains("-32022") || refused.contains("2026-07-28"),
        "{refused}"
    );
}

/// A `tools/list` POST (no session) through the relay's HTTP client: `_meta` names
/// 2026-07-28, the `MCP-Protocol-Version` header `header_version`.
async fn post_tools_list(
    client: &HyperHttpClient,
    url: &str,
    header_version: &'static str,
) -> Result<StreamableHttpPostResponse, StreamableHttpError<HttpClientError>> {
    let message: ClientJsonRpcMessage = serde_json::from_value(json!({
        "jsonrpc": "2.0", "id": 9, "method": "tools/list", "params": {"_meta": {
            "io.modelcontextprotocol/protocolVersion": "2026-07-28",
            "io.modelcontextprotocol/clientInfo": {"name": "edge-relay-test", "version": "0"},
            "io.modelcontextprotocol/clientCapabilities": {}}}}))
    .unwrap();
    let headers = [
        ("mcp-protocol-version", header_version),
        ("mcp-method", "tools/list"),
    ]
    .map(|(k, v)| {
        (
            http::HeaderName::from_static(k),
            http::HeaderValue::from_static(v),
        )
    });
    let headers = headers.into_iter().collect();
    client
        .post_message(url.into(), message, None, None, headers)
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_4xx_json_rpc_error_body_is_the_answer_and_a_sessionless_404_is_not_expiry() {
    let tmp = tempfile::tempdir().unwrap();
    let sink = Sink::start_eras(tmp.path(), Eras::Current).await;
    let client = HyperHttpClient::new(HttpTimeouts::default()).unwrap();
    // A header that contradicts `_meta`: HTTP 400 with -32020 in the body, passed through as
    // the answer to request 9.
    let answer = post_tools_list(&client, &sink.url(), "2025-11-25").await;
    let Ok(StreamableHttpPostResponse::Json(ServerJsonRpcMessage::Error(error), _)) = answer else {
        panic!("expected the JSON-RPC error of the 4xx body, got {answer:?}");
    };
    assert_eq!(error.error.code, ErrorCode::HEADER_MISMATCH, "{error:?}");
    assert_eq!(error.id, Some(rmcp::model::RequestId::Number(9)));
    // Control: the consistent request is answered (200).
    let answer = post_tools_list(&client, &sink.url(), "2026-07-28").await;
    assert!(
        matches!(
            answer,
            Ok(StreamableHttpPostResponse::Sse(..) | StreamableHttpPostResponse::Json(..))
        ),
        "{answer:?}"
    );
    // A 404 without a JSON-RPC body and without a session stays an HTTP error: not
    // SessionExpired, not a made-up answer.
    let other = format!("http://{}/other", sink.addr());
    let err = post_tools_list(&client, &other, "2026-07-28")
        .await
        .expect_err("404");
    assert!(matches!(err, StreamableHttpError::Client(_)), "{err:?}");
    assert!(err.to_string().contains("HTTP 404"), "{err}");
    sink.stop().await;
}

/// `edge-relay probe` (the binary) against a sink serving `eras`: exit status and stdout.
async fn probe(eras: Eras) -> (bool, String) {
    let tmp = tempfile::tempdir().unwrap();
    let sink = Sink::start_eras(&tmp.path().join("sink"), eras).await;
    let listen = support::process::free_port();
    let config = write_config(
        tmp.path(),
        "gw-probe",
        listen,
        &format!("url = \"{}\"", sink.url()),
    );
    let out = tokio::task::spawn_blocking(move || {
        Command::new(binary())
            .args(["probe", "--config"])
            .arg(&config)
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    sink.stop().await;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    (
        out.status.success(),
        text + &String::from_utf8_lossy(&out.stderr),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probe_names_the_era_the_version_and_the_other_era() {
    let (ok, both) = probe(Eras::Both).await;
    assert!(ok, "{both}");
    assert!(both.contains("era: current (server/discover, no session)\nprotocol version: 2026-07-28\nalso serves legacy (initialize): yes (2025-11-25)"), "{both}");
    assert!(both.ends_with("contract: ok\n"), "{both}");
    let (ok, current) = probe(Eras::Current).await;
    assert!(ok, "{current}");
    assert!(
        current.contains("protocol version: 2026-07-28\nalso serves legacy (initialize): no ("),
        "{current}"
    );
    let (ok, legacy) = probe(Eras::Legacy).await;
    assert!(ok, "{legacy}");
    assert!(legacy.contains("era: legacy (initialize, session)\nprotocol version: 2025-11-25\nalso serves current (server/discover): no ("), "{legacy}");
}

/// An outside MCP server whose `edge_ingest` takes `items` instead of `events` (the contract's
/// names, another schema); `edge_cursor` answers "nothing stored".
#[derive(Clone)]
struct Outsider {
    tool_router: ToolRouter<Outsider>,
}

#[derive(serde::Deserialize, schemars::JsonSchema)]
struct ItemsArgs {
    gateway: String,
    stream: String,
    items: Vec<Value>,
}

#[derive(serde::Deserialize, schemars::JsonSchema)]
struct StreamArgs {
    gateway: String,
    stream: String,
}

fn nothing_stored() -> CallToolResult {
    CallToolResult::structured(json!({"acked_seq": null, "acked_id": null}))
}

#[tool_router]
impl Outsider {
    #[tool(name = "edge_ingest")]
    async fn ingest(&self, Parameters(a): Parameters<ItemsArgs>) -> CallToolResult {
        let _ = (a.gateway, a.stream, a.items);
        nothing_stored()
    }

    #[tool(name = "edge_cursor")]
    async fn cursor(&self, Parameters(a): Parameters<StreamArgs>) -> CallToolResult {
        let _ = (a.gateway, a.stream);
        nothing_stored()
    }
}

#[tool_handler(router = self.tool_router)]
impl ServerHandler for Outsider {}

/// Serves [`Outsider`] (both eras, rmcp's defaults) until `stop`; its MCP endpoint URL.
async fn outsider(stop: CancellationToken) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let config = StreamableHttpServerConfig::default().with_cancellation_token(stop.child_token());
    let service = StreamableHttpService::new(
        || {
            Ok(Outsider {
                tool_router: Outsider::tool_router(),
            })
        },
        Arc::new(LocalSessionManager::default()),
        config,
    );
    let router = hyper::service::service_fn(move |request| {
        let service = service.clone();
        async move { Ok::<_, std::convert::Infallible>(service.handle(request).await) }
    });
    let serve =
        edge_relay::http_serve::serve(listener, router, stop, Duration::ZERO, 16, "outsider");
    tokio::spawn(serve);
    format!("http://{addr}/mcp")
}

/// The relay (tool names `ingest_tool`, `cursor_tool`) against `url` with one event to deliver:
/// its status report once the event is acknowledged or a turn failed.
async fn relay_against(url: &str, ingest_tool: &str, cursor_tool: &str) -> StatusReport {
    let tmp = tempfile::tempdir().unwrap();
    let mut config = relay_config(&tmp.path().join("relay"), url);
    config.upstream.ingest_tool = ingest_tool.into();
    config.upstream.cursor_tool = cursor_tool.into();
    let relay = start_relay(config).await;
    let (code, _) = post(relay.ingest_addr, event("a", 1).to_string()).await;
    assert_eq!(code, 200);
    let (mut state, mut commits) = (relay.status.watch(), relay.outbox.watch());
    let settled = async {
        loop {
            let r = report(&relay);
            if r.last_error.is_some() || r.acked_seq == 1 {
                return r;
            }
            tokio::select! {
                r = state.changed() => r.unwrap(),
                r = commits.changed() => r.unwrap(),
            }
        }
    };
    let settled = tokio::time::timeout(WAIT, settled)
        .await
        .expect("a verdict");
    relay.stop().await;
    settled
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_tool_call_reports_what_the_upstream_lacks() {
    let tmp = tempfile::tempdir().unwrap();
    let sink = Sink::start(tmp.path()).await;
    // An unknown tool: the reference upstream has no edge_cursor_v2.
    let missing = relay_against(&sink.url(), "edge_ingest", "edge_cursor_v2").await;
    let error = missing.last_error.clone().unwrap();
    let lacks = "upstream lacks the contract: tool edge_cursor_v2 is missing";
    assert!(
        error.starts_with(&format!(
            "{lacks} (upstream refused edge_cursor_v2: JSON-RPC error"
        )),
        "{error}"
    );
    let line = edge_relay::service::systemd::status_line(&missing);
    assert!(line.contains(&format!("last error: {lacks}")), "{line}");
    // A schema mismatch: an outside server's edge_ingest takes `items`, not `events`.
    let stop = CancellationToken::new();
    let url = outsider(stop.clone()).await;
    let mismatch = relay_against(&url, "edge_ingest", "edge_cursor").await;
    let error = mismatch.last_error.unwrap();
    assert!(
        error.starts_with("upstream lacks the contract: edge_ingest has no `events` argument ("),
        "{error}"
    );
    stop.cancel();
    // Negative control: the same relay and upstream with the contract's names deliver, and
    // nothing is diagnosed.
    let control = relay_against(&sink.url(), "edge_ingest", "edge_cursor").await;
    assert_eq!(control.acked_seq, 1, "{control:?}");
    assert_eq!(control.last_error, None, "{control:?}");
    sink.stop().await;
}

/// The relay's HTTP requests to a sink serving `eras` (one event delivered, then a stop),
/// each as its lower-cased head and body.
async fn relay_requests(eras: Eras) -> Vec<String> {
    let tmp = tempfile::tempdir().unwrap();
    let sink = Sink::start_eras(&tmp.path().join("sink"), eras).await;
    let (proxy, sent) = recording_proxy(sink.addr()).await;
    let url = format!("http://{proxy}/mcp");
    let relay = start_relay(relay_config(&tmp.path().join("relay"), &url)).await;
    let (code, _) = post(relay.ingest_addr, event("a", 1).to_string()).await;
    assert_eq!(code, 200);
    drained(&relay).await;
    relay.stop().await;
    sink.stop().await;
    requests(&sent.lock().unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_the_wire_the_current_era_has_version_headers_and_no_session() {
    let requests = relay_requests(Eras::Both).await;
    assert!(
        requests[0].contains("\"method\":\"server/discover\""),
        "{requests:#?}"
    );
    let mut calls = 0;
    for request in &requests {
        assert!(request.starts_with("post "), "{request}");
        assert!(
            request.contains("\r\nmcp-protocol-version: 2026-07-28\r\n"),
            "{request}"
        );
        assert!(request.contains("\r\nmcp-method: "), "{request}");
        assert!(!request.contains("mcp-session-id"), "{request}");
        assert!(!request.contains("\"method\":\"initialize\""), "{request}");
        if request.contains("\"method\":\"tools/call\"") {
            calls += 1;
            assert!(
                request.contains("\r\nmcp-method: tools/call\r\n"),
                "{request}"
            );
            let named = ["edge_cursor", "edge_ingest"]
                .iter()
                .any(|t| request.contains(&format!("\r\nmcp-name: {t}\r\n")));
            assert!(named, "{request}");
            assert!(
                request.contains("\"io.modelcontextprotocol/protocolversion\":\"2026-07-28\""),
                "{request}"
            );
        }
    }
    assert!(calls >= 2, "edge_cursor and edge_ingest: {requests:#?}");
    // Control: the legacy era on the same wire starts with initialize and then carries its
    // session.
    let legacy = relay_requests(Eras::Legacy).await;
    let initialize = legacy
        .iter()
        .position(|r| r.contains("\"method\":\"initialize\""))
        .expect("an initialize");
    assert!(
        legacy[initialize + 1..]
            .iter()
            .all(|r| r.contains("\r\nmcp-session-id: ")),
        "{legacy:#?}"
    );
}
