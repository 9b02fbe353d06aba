//! Local HTTP ingest: bad input is refused with a 4xx that names the problem and stores nothing;
//! overflow policies `reject` (507) and `drop_oldest` (gap reported upstream).

use edge_relay_testkit as support;

use edge_relay::cli::local_client;
use edge_relay::config::Overflow;
use edge_relay::contract::Gap;
use edge_relay::demo::audit::audit;
use hyper::Method;
use serde_json::{Value, json};
use support::*;

/// An upstream address with nothing listening (bound, then released).
fn dead_upstream() -> std::net::SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

/// `(case, body, status, index, field, text in the error)`.
type BadInput = (
    &'static str,
    String,
    u16,
    Option<u64>,
    Option<&'static str>,
    &'static str,
);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_a_4xx_naming_the_problem_and_stores_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let mut config = relay_config(tmp.path(), &format!("http://{}/mcp", dead_upstream()));
    config.ingest.http.max_body_bytes = 64 * 1024;
    config.ingest.http.max_event_bytes = 1024;
    let relay = start_relay(config).await;
    let good = r#"{"source":"a","data":1}"#;
    let big_data = format!(r#"[{good},{{"source":"a","data":"{}"}}]"#, "x".repeat(2000));
    let big_body = format!("[{}]", vec![good; 4000].join(","));
    let cases: Vec<BadInput> = vec![
        (
            "malformed JSON",
            r#"{"source":"a","#.into(),
            400,
            Some(0),
            None,
            "malformed JSON",
        ),
        (
            "malformed NDJSON line",
            format!("{good}\n{{nope\n"),
            400,
            Some(1),
            None,
            "event 1",
        ),
        (
            "wrong type",
            format!(r#"[{good},{{"source":5,"data":1}}]"#),
            400,
            Some(1),
            Some("source"),
            "expected a string",
        ),
        (
            "bad id",
            r#"{"source":"a","data":1,"id":"x"}"#.into(),
            400,
            Some(0),
            Some("id"),
            "not a UUID",
        ),
        (
            "missing data",
            r#"{"source":"a"}"#.into(),
            400,
            Some(0),
            Some("data"),
            "missing",
        ),
        (
            "seq from producer",
            r#"{"source":"a","data":1,"seq":9}"#.into(),
            400,
            Some(0),
            Some("seq"),
            "assigned by the relay",
        ),
        (
            "not an object",
            "[1]".into(),
            400,
            Some(0),
            Some("(event)"),
            "expected a JSON object",
        ),
        (
            "oversize event",
            big_data,
            413,
            Some(1),
            Some("data"),
            "limit is 1024",
        ),
        ("oversize body", big_body, 413, None, None, "max_body_bytes"),
        ("empty body", String::new(), 400, None, None, "empty body"),
        ("empty array", "[]".into(), 400, None, None, "empty body"),
    ];
    for (name, body, code, index, field, text) in cases {
        let (got, answer) = post(relay.ingest_addr, body).await;
        assert_eq!(got, code, "{name}: {answer}");
        assert_eq!(answer["index"].as_u64(), index, "{name}: {answer}");
        assert_eq!(answer["field"].as_str(), field, "{name}: {answer}");
        let error = answer["error"].as_str().unwrap_or_default();
        assert!(error.contains(text), "{name}: {error:?} lacks {text:?}");
    }
    let stats = relay.outbox.stats();
    assert_eq!(
        (stats.next_seq, stats.backlog_events),
        (1, 0),
        "nothing stored"
    );
    // The endpoint still works after all that.
    let (code, answer) = post(relay.ingest_addr, good).await;
    assert_eq!((code, answer["first_seq"].as_u64()), (200, Some(1)));
    let (code, _) = local_client::request(relay.ingest_addr, Method::GET, "/v1/nope", vec![])
        .await
        .unwrap();
    assert_eq!(code, 404);
    relay.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_metrics_and_health_endpoints_answer() {
    let tmp = tempfile::tempdir().unwrap();
    let relay = start_relay(relay_config(
        tmp.path(),
        &format!("http://{}/mcp", dead_upstream()),
    ))
    .await;
    post(relay.ingest_addr, r#"{"source":"a","data":1}"#).await;
    let get =
        |path: &'static str| local_client::request(relay.ingest_addr, Method::GET, path, vec![]);
    let (code, body) = get("/v1/status").await.unwrap();
    assert_eq!(code, 200);
    let status: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(status["backlog_events"], 1);
    assert_eq!(status["next_seq"], 2);
    assert_eq!(status["acked_seq"], 0);
    assert!(
        ["connecting", "down"].contains(&status["upstream"].as_str().unwrap()),
        "{status}"
    );
    let (code, body) = get("/metrics").await.unwrap();
    assert_eq!(code, 200);
    assert!(body.contains("edge_relay_backlog_events 1"), "{body}");
    assert_eq!(get("/healthz").await.unwrap().0, 200);
    relay.stop().await;
}

/// Fills a 1 MiB buffer with ~10 KiB events (no upstream) until the first refusal or drop.
async fn fill(
    relay: &edge_relay::daemon::Daemon,
    until_dropped: u64,
) -> (Vec<(u64, uuid::Uuid)>, Option<Value>) {
    let mut all = Vec::new();
    for n in 0..1000u64 {
        let body = json!({"id": uuid::Uuid::now_v7(), "source": "cam", "data": {"n": n, "blob": "y".repeat(10_000)}});
        let (code, answer) = post(relay.ingest_addr, body.to_string()).await;
        if code != 200 {
            assert_eq!(code, 507, "{answer}");
            return (all, Some(answer));
        }
        all.extend(accepted(&answer));
        if until_dropped > 0 && relay.outbox.stats().dropped_events >= until_dropped {
            return (all, None);
        }
    }
    panic!("the buffer never filled");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reject_policy_answers_507_and_keeps_everything_accepted() {
    let tmp = tempfile::tempdir().unwrap();
    let upstream = dead_upstream();
    let mut config = relay_config(&tmp.path().join("relay"), &format!("http://{upstream}/mcp"));
    config.buffer.max_bytes = 1 << 20;
    config.ingest.http.max_body_bytes = 64 * 1024;
    config.ingest.http.max_event_bytes = 16 * 1024;
    let relay = start_relay(config).await;
    let (all, refusal) = fill(&relay, 0).await;
    let refusal = refusal.unwrap();
    assert!(
        refusal["error"].as_str().unwrap().contains("buffer full"),
        "{refusal}"
    );
    let stats = relay.outbox.stats();
    assert_eq!(
        stats.next_seq,
        all.len() as u64 + 1,
        "the refused event got no seq"
    );
    assert_eq!(stats.dropped_events, 0);
    // The upstream comes up: everything accepted arrives.
    let sink = Sink::start_on(upstream, &tmp.path().join("sink")).await;
    drained(&relay).await;
    let result = audit(&all, &sink.events("test-gw", stats.stream));
    assert!(result.is_clean(), "{result}");
    relay.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drop_oldest_counts_the_drop_and_the_upstream_records_the_gap() {
    let tmp = tempfile::tempdir().unwrap();
    let upstream = dead_upstream();
    let mut config = relay_config(&tmp.path().join("relay"), &format!("http://{upstream}/mcp"));
    config.buffer.max_bytes = 1 << 20;
    config.buffer.overflow = Overflow::DropOldest;
    config.ingest.http.max_body_bytes = 64 * 1024;
    config.ingest.http.max_event_bytes = 16 * 1024;
    let relay = start_relay(config).await;
    let (all, refusal) = fill(&relay, 10).await;
    assert!(
        refusal.is_none(),
        "drop_oldest never refuses a request that fits"
    );
    let stats = relay.outbox.stats();
    let dropped = stats.dropped_events;
    assert!(dropped >= 10);
    let sink = Sink::start_on(upstream, &tmp.path().join("sink")).await;
    drained(&relay).await;
    let gaps = sink.store().gaps("test-gw", stats.stream).unwrap();
    assert_eq!(
        gaps,
        vec![Gap {
            dropped_from: 1,
            dropped_to: dropped
        }]
    );
    let stored = sink.events("test-gw", stats.stream);
    assert_eq!(stored.first().map(|e| e.seq), Some(dropped + 1));
    let result = audit(&all, &stored);
    assert_eq!(
        (result.lost as u64, result.duplicates),
        (dropped, 0),
        "{result}"
    );
    assert!(result.order_ok);
    let acked_seq = sink.store().cursor("test-gw", stats.stream).await.unwrap();
    assert_eq!(acked_seq.acked_seq, Some(stats.next_seq - 1));
    relay.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn time_must_be_rfc3339_and_a_bad_one_is_named() {
    let tmp = tempfile::tempdir().unwrap();
    let relay = start_relay(relay_config(
        tmp.path(),
        &format!("http://{}/mcp", dead_upstream()),
    ))
    .await;
    for bad in ["yesterday", "2026-13-45T99:99:99Z", "2026-11-21 05:00"] {
        let body = json!([
            {"source": "a", "data": 1, "time": "2026-11-21T05:00:00.015Z"},
            {"source": "a", "data": 2, "time": bad},
        ]);
        let (code, answer) = post(relay.ingest_addr, body.to_string()).await;
        assert_eq!(code, 400, "{bad}: {answer}");
        assert_eq!(answer["index"], 1, "{answer}");
        assert_eq!(answer["field"], "time", "{answer}");
        assert!(
            answer["error"].as_str().unwrap().contains("RFC 3339"),
            "{answer}"
        );
    }
    assert_eq!(relay.outbox.stats().next_seq, 1, "nothing stored");
    let offset = json!({"source": "a", "data": 1, "time": "2026-11-21T07:00:00+02:00"});
    assert_eq!(post(relay.ingest_addr, offset.to_string()).await.0, 200);
    relay.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_id_reused_with_another_payload_gets_409_naming_the_event() {
    let tmp = tempfile::tempdir().unwrap();
    let relay = start_relay(relay_config(
        tmp.path(),
        &format!("http://{}/mcp", dead_upstream()),
    ))
    .await;
    let id = uuid::Uuid::now_v7();
    let one = json!({"id": id, "source": "a", "data": 1});
    let other = json!({"id": id, "source": "a", "data": 2});
    let (code, answer) = post(
        relay.ingest_addr,
        json!([one, {"source": "b", "data": 0}, other]).to_string(),
    )
    .await;
    assert_eq!(code, 409, "{answer}");
    assert_eq!(
        (answer["index"].as_u64(), answer["field"].as_str()),
        (Some(2), Some("id")),
        "{answer}"
    );
    assert!(
        answer["error"].as_str().unwrap().contains("event 0"),
        "{answer}"
    );
    assert_eq!(relay.outbox.stats().next_seq, 1, "nothing stored");
    // The identical event twice, in one request and again later: one seq throughout.
    let (code, answer) = post(relay.ingest_addr, json!([one, one]).to_string()).await;
    assert_eq!(
        (code, answer["seqs"].clone()),
        (200, json!([1, 1])),
        "{answer}"
    );
    let (code, answer) = post(relay.ingest_addr, one.to_string()).await;
    assert_eq!(
        (code, answer["seqs"].clone()),
        (200, json!([1])),
        "{answer}"
    );
    // Across requests: the stored id with another payload is refused, naming the event; the
    // same payload with its keys in another order is the same event.
    let (code, answer) = post(
        relay.ingest_addr,
        json!([{"source": "c", "data": 3}, other]).to_string(),
    )
    .await;
    assert_eq!(code, 409, "{answer}");
    assert_eq!(
        (answer["index"].as_u64(), answer["field"].as_str()),
        (Some(1), Some("id")),
        "{answer}"
    );
    assert!(
        answer["error"].as_str().unwrap().contains("as seq 1"),
        "{answer}"
    );
    assert_eq!(relay.outbox.stats().next_seq, 2, "nothing of it stored");
    let reordered = format!(r#"{{"data": 1, "source": "a", "id": "{id}"}}"#);
    let (code, answer) = post(relay.ingest_addr, reordered).await;
    assert_eq!(
        (code, answer["seqs"].clone()),
        (200, json!([1])),
        "{answer}"
    );
    relay.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn numbers_are_stored_exactly_or_refused_and_array_errors_name_the_element() {
    let tmp = tempfile::tempdir().unwrap();
    let relay = start_relay(relay_config(
        tmp.path(),
        &format!("http://{}/mcp", dead_upstream()),
    ))
    .await;
    let good = r#"{"source":"a","data":1}"#;
    for (body, index, field) in [
        (
            format!(r#"[{good},{{"source":"a","data":{{"n":123456789012345678901234567890}}}}]"#),
            1,
            Some("data"),
        ),
        (
            format!(r#"[{good},{{"source":"a","data":1.00000000000000000001}}]"#),
            1,
            Some("data"),
        ),
        (
            format!(r#"[{good},{good},{{"source":"a","data":[1e-400]}}]"#),
            2,
            Some("data"),
        ),
        (
            format!(r#"[{good},{good},{{"source":"a","data":}}]"#),
            2,
            None,
        ),
    ] {
        let (code, answer) = post(relay.ingest_addr, body.clone()).await;
        assert_eq!(code, 400, "{body}: {answer}");
        assert_eq!(
            (answer["index"].as_u64(), answer["field"].as_str()),
            (Some(index), field),
            "{body}: {answer}"
        );
    }
    assert_eq!(relay.outbox.stats().next_seq, 1, "nothing stored");
    let exact = r#"[18446744073709551615,-9223372036854775808,0.1,1.7976931348623157e308,"123456789012345678901234567890"]"#;
    let (code, answer) = post(
        relay.ingest_addr,
        format!(r#"{{"source":"a","data":{exact}}}"#),
    )
    .await;
    assert_eq!(code, 200, "{answer}");
    let stored = relay.outbox.batch_after(0, 10, 1 << 20).unwrap();
    assert_eq!(
        stored[0].data.to_string(),
        exact.replace("1.7976931348623157e308", "1.7976931348623157e+308")
    );
    relay.stop().await;
}
