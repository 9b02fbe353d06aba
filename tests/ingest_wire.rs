//! What `edge_ingest` carries on the wire: compressed batches (`events_zstd`) to an upstream
//! whose tool lists them, plain `events` to one whose tool does not, and the reference
//! upstream's refusals of a bad `events_zstd` (nothing stored).

use edge_relay_testkit as support;

use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering::SeqCst;

use edge_relay::contract::packed::{MAX_UNPACKED_BYTES, pack};
use edge_relay::contract::{Ack, Gap, IngestArgs};
use edge_relay::demo::audit::audit;
use edge_relay::event::Event;
use edge_relay::sink::SinkStore;
use edge_relay::uplink::http_client::{HttpTimeouts, HyperHttpClient};
use rmcp::handler::server::router::tool::ToolRouter;
use rmcp::handler::server::wrapper::Parameters;
use rmcp::model::{
    CallToolRequestParams, CallToolResult, ClientConfig, ContentBlock, ProtocolVersion,
};
use rmcp::transport::StreamableHttpClientTransport;
use rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig;
use rmcp::transport::streamable_http_server::session::local::LocalSessionManager;
use rmcp::transport::streamable_http_server::{StreamableHttpServerConfig, StreamableHttpService};
use rmcp::{ClientLifecycleMode, ClientServiceExt, ServerHandler, tool, tool_handler, tool_router};
use serde_json::{Value, json};
use support::recording::{recording_proxy, requests};
use support::*;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// Events per run: three batches (`batch_max_events` is 200 in `relay_config`).
const EVENTS: u64 = 450;

/// A sensor event of the size the Daphnet recording gives (~200 bytes stored).
fn imu(n: u64) -> Value {
    json!({"id": Uuid::now_v7(), "source": "daphnet/S06R02/ankle", "kind": "imu",
        "data": {"ankle": [101 + n % 7, 1000, 297], "leg": [-9, 953, 303], "trunk": [330, 942, -145], "freeze": 0}})
}

/// The relay (`compress` as given) delivers [`EVENTS`] to the upstream at `target` through a
/// recording proxy; checks the upstream's store with `stored` and returns the `edge_ingest`
/// requests as sent.
async fn deliver_through_proxy(
    target: std::net::SocketAddr,
    compress: bool,
    stored: impl Fn(Uuid) -> Vec<Event>,
) -> Vec<String> {
    let tmp = tempfile::tempdir().unwrap();
    let (proxy, sent) = recording_proxy(target).await;
    let mut config = relay_config(&tmp.path().join("relay"), &format!("http://{proxy}/mcp"));
    config.relay.compress = compress;
    let relay = start_relay(config).await;
    let batch: Vec<Value> = (0..EVENTS).map(imu).collect();
    let (code, answer) = post(relay.ingest_addr, Value::Array(batch).to_string()).await;
    assert_eq!(code, 200, "{answer}");
    drained(&relay).await;
    let result = audit(&accepted(&answer), &stored(relay.outbox.stats().stream));
    assert!(result.is_clean(), "{result}");
    assert_eq!(result.delivered, EVENTS as usize);
    relay.stop().await;
    let ingests = requests(&sent.lock().unwrap())
        .into_iter()
        .filter(|r| r.contains("\"edge_ingest\""))
        .collect::<Vec<_>>();
    assert!(ingests.len() >= 3, "{} edge_ingest requests", ingests.len());
    ingests
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batches_go_compressed_to_the_reference_upstream_and_arrive_exactly_once() {
    let tmp = tempfile::tempdir().unwrap();
    let sink = Sink::start(&tmp.path().join("sink")).await;
    let packed = deliver_through_proxy(sink.addr(), true, |s| sink.events("test-gw", s)).await;
    assert!(
        packed
            .iter()
            .all(|r| r.contains("\"events_zstd\"") && r.contains("\"events\":[]")),
        "{packed:?}"
    );
    let sink = sink.restart().await;
    let plain = deliver_through_proxy(sink.addr(), false, |s| sink.events("test-gw", s)).await;
    assert!(
        plain.iter().all(|r| !r.contains("events_zstd")),
        "{plain:?}"
    );
    let bytes = |requests: &[String]| requests.iter().map(String::len).sum::<usize>();
    // Headers are the same; the bodies shrink several times.
    assert!(
        bytes(&packed) * 2 < bytes(&plain),
        "compressed {} B vs plain {} B",
        bytes(&packed),
        bytes(&plain)
    );
    sink.stop().await;
}

/// An upstream whose `edge_ingest` has the contract's plain arguments only, over the real
/// sink store; a call with any other argument (`events_zstd`) is refused as invalid params.
/// With `refuse_once`, the first batch starting at that seq is refused (`isError`, nothing
/// stored); `refused` counts the batches that started there.
#[derive(Clone)]
struct PlainUpstream {
    store: Arc<SinkStore>,
    refuse_once: Option<u64>,
    refused: Arc<AtomicU64>,
    tool_router: ToolRouter<PlainUpstream>,
}

#[derive(serde::Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
struct PlainArgs {
    gateway: String,
    stream: Uuid,
    #[schemars(with = "Vec<Value>")]
    events: Vec<Event>,
    gap: Option<Gap>,
}

#[derive(serde::Deserialize, schemars::JsonSchema)]
struct StreamArgs {
    gateway: String,
    stream: Uuid,
}

fn answer(ack: Result<Ack, impl std::fmt::Display>) -> CallToolResult {
    match ack {
        Ok(ack) => CallToolResult::structured(serde_json::to_value(ack).unwrap()),
        Err(e) => CallToolResult::error(vec![ContentBlock::text(e.to_string())]),
    }
}

#[tool_router]
impl PlainUpstream {
    #[tool(name = "edge_ingest")]
    async fn ingest(&self, Parameters(a): Parameters<PlainArgs>) -> CallToolResult {
        let first = a.events.first().map(|e| e.seq);
        if first.is_some() && first == self.refuse_once && self.refused.fetch_add(1, SeqCst) == 0 {
            return answer(Err::<Ack, _>("refused once by the test"));
        }
        let args = IngestArgs {
            gateway: a.gateway,
            stream: a.stream,
            events: a.events,
            events_zstd: None,
            gap: a.gap,
        };
        answer(self.store.ingest(&args).await)
    }

    #[tool(name = "edge_cursor")]
    async fn cursor(&self, Parameters(a): Parameters<StreamArgs>) -> CallToolResult {
        answer(self.store.cursor(&a.gateway, a.stream).await)
    }
}

#[tool_handler(router = self.tool_router)]
impl ServerHandler for PlainUpstream {}

/// Serves [`PlainUpstream`] over `store` until `stop`; its address.
async fn serve_plain(
    store: Arc<SinkStore>,
    refuse_once: Option<u64>,
    refused: Arc<AtomicU64>,
    stop: &CancellationToken,
) -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let service = StreamableHttpService::new(
        move || {
            Ok(PlainUpstream {
                store: store.clone(),
                refuse_once,
                refused: refused.clone(),
                tool_router: PlainUpstream::tool_router(),
            })
        },
        Arc::new(LocalSessionManager::default()),
        StreamableHttpServerConfig::default().with_cancellation_token(stop.child_token()),
    );
    let router = hyper::service::service_fn(move |request| {
        let service = service.clone();
        async move { Ok::<_, std::convert::Infallible>(service.handle(request).await) }
    });
    let serve = edge_relay::http_serve::serve(
        listener,
        router,
        stop.clone(),
        Default::default(),
        16,
        "plain",
    );
    tokio::spawn(serve);
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_that_does_not_list_events_zstd_gets_plain_events() {
    let tmp = tempfile::tempdir().unwrap();
    let store = Arc::new(SinkStore::open(tmp.path()).unwrap());
    let stop = CancellationToken::new();
    let addr = serve_plain(store.clone(), None, Arc::default(), &stop).await;
    let sent = deliver_through_proxy(addr, true, |s| store.events("test-gw", s).unwrap()).await;
    assert!(sent.iter().all(|r| !r.contains("events_zstd")), "{sent:?}");
    stop.cancel();
}

/// Three batches in flight at once and the middle one refused: the session ends, the next
/// one resumes from the upstream's acked seq (which stops before the refused batch, whatever
/// the third stored) and every event arrives once, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_window_whose_middle_call_fails_resumes_from_the_acked_seq() {
    let tmp = tempfile::tempdir().unwrap();
    let store = Arc::new(SinkStore::open(&tmp.path().join("sink")).unwrap());
    let stop = CancellationToken::new();
    let refused = Arc::new(AtomicU64::new(0));
    // Batches of 200 (`relay_config`): 1..=200, 201..=400, 401..=600.
    let addr = serve_plain(store.clone(), Some(201), refused.clone(), &stop).await;
    let mut config = relay_config(&tmp.path().join("relay"), &format!("http://{addr}/mcp"));
    config.relay.max_in_flight_plain = 3;
    let relay = start_relay(config).await;
    let batch: Vec<Value> = (0..600).map(imu).collect();
    let (code, answer) = post(relay.ingest_addr, Value::Array(batch).to_string()).await;
    assert_eq!(code, 200, "{answer}");
    drained(&relay).await;
    let stream = relay.outbox.stats().stream;
    let result = audit(
        &accepted(&answer),
        &store.events("test-gw", stream).unwrap(),
    );
    assert!(result.is_clean(), "{result}");
    assert_eq!(result.delivered, 600);
    // Sent twice from seq 201: refused, then again on the next session.
    assert_eq!(refused.load(SeqCst), 2);
    assert!(report(&relay).reconnects >= 2, "{:?}", report(&relay));
    relay.stop().await;
    stop.cancel();
}

/// An rmcp client's `edge_ingest` call with `args` to the reference upstream at `url`.
async fn call_ingest(url: &str, args: Value) -> CallToolResult {
    let http = HyperHttpClient::new(HttpTimeouts::default()).unwrap();
    let transport = StreamableHttpClientTransport::with_client(
        http,
        StreamableHttpClientTransportConfig::with_uri(url.to_owned()),
    );
    let lifecycle = ClientLifecycleMode::Discover {
        preferred_versions: vec![ProtocolVersion::V_2026_07_28],
    };
    let client = ClientConfig::default()
        .serve_with_lifecycle(transport, lifecycle)
        .await
        .unwrap();
    let params =
        CallToolRequestParams::new("edge_ingest").with_arguments(args.as_object().unwrap().clone());
    let result = client.call_tool(params).await.unwrap();
    client.cancel().await.unwrap();
    result
}

fn text(result: &CallToolResult) -> String {
    let texts = result.content.iter().filter_map(|c| c.as_text());
    texts.map(|t| t.text.clone()).collect::<Vec<_>>().join(" ")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_events_zstd_is_refused_and_nothing_is_stored() {
    let tmp = tempfile::tempdir().unwrap();
    let sink = Sink::start(tmp.path()).await;
    let stream = Uuid::new_v4();
    let line = |seq: u64| {
        let mut e = imu(seq);
        e["seq"] = seq.into();
        e["time"] = "2026-11-21T05:00:00.015Z".into();
        e.to_string()
    };
    let ndjson = |n: u64| (1..=n).map(line).collect::<Vec<_>>().join("\n");
    let args = |events: Value, packed: &str| json!({"gateway": "gw", "stream": stream, "events": events, "events_zstd": packed});
    // Over the bound: about 17 MiB of NDJSON that compresses to a few KiB.
    let bomb = pack(ndjson(1).repeat(MAX_UNPACKED_BYTES / 150).as_bytes());
    let cases = [
        (args(json!([]), &bomb), "decompresses to more than"),
        (args(json!([]), "not base64!"), "is not base64"),
        (
            args(json!([]), &pack(b"{\"seq\": 1}")),
            "line 1: not an event",
        ),
        (
            args(
                json!([serde_json::from_str::<Value>(&line(1)).unwrap()]),
                &pack(ndjson(2).as_bytes()),
            ),
            "both `events` and `events_zstd`",
        ),
    ];
    for (bad, reason) in cases {
        let result = call_ingest(&sink.url(), bad).await;
        assert_eq!(result.is_error, Some(true), "{result:?}");
        assert!(text(&result).contains(reason), "{}", text(&result));
    }
    assert!(sink.events("gw", stream).is_empty());
    // The control: the same path with a good value stores the events.
    let good = call_ingest(&sink.url(), args(json!([]), &pack(ndjson(3).as_bytes()))).await;
    let ack = edge_relay::uplink::parse_ack("edge_ingest", good).unwrap();
    assert_eq!(ack.acked_seq, Some(3));
    assert_eq!(sink.events("gw", stream).len(), 3);
    sink.stop().await;
}
