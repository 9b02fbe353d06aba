//! End to end over MCP Streamable HTTP: real sled outbox, real HTTP ingest, real reference upstream.

use edge_relay_testkit as support;

use edge_relay::demo::audit::audit;
use edge_relay::sink::Eras;
use serde_json::Value;
use support::*;
use uuid::Uuid;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_events_in_mixed_shapes_arrive_exactly_once_in_order() {
    let tmp = tempfile::tempdir().unwrap();
    let sink = Sink::start(&tmp.path().join("sink")).await;
    let relay = start_relay(relay_config(&tmp.path().join("relay"), &sink.url())).await;
    let mut accepted_all = Vec::new();
    let mut n = 0u64;
    let mut shape = 0;
    while n < 10_000 {
        let body: Vec<u8> = match shape % 3 {
            0 => {
                n += 1;
                event("single", n).to_string().into_bytes()
            }
            1 => {
                let batch: Vec<Value> = (0..100).map(|i| event("array", n + i + 1)).collect();
                n += 100;
                Value::Array(batch).to_string().into_bytes()
            }
            _ => {
                let lines: Vec<String> = (0..250)
                    .map(|i| event("ndjson", n + i + 1).to_string())
                    .collect();
                n += 250;
                lines.join("\n").into_bytes()
            }
        };
        shape += 1;
        let (code, answer) = post(relay.ingest_addr, body).await;
        assert_eq!(code, 200, "{answer}");
        accepted_all.extend(accepted(&answer));
    }
    assert_eq!(accepted_all.len() as u64, n);
    drained(&relay).await;
    let stream = relay.outbox.stats().stream;
    let stored = sink.events("test-gw", stream);
    let result = audit(&accepted_all, &stored);
    assert!(result.is_clean(), "{result}");
    assert_eq!(result.delivered as u64, n);
    let seqs: Vec<u64> = stored.iter().map(|e| e.seq).collect();
    assert_eq!(seqs, (1..=n).collect::<Vec<_>>());
    relay.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_restarts_mid_stream_lose_and_duplicate_nothing() {
    upstream_restarts(Eras::Both).await;
}

/// The same on the legacy era, where every restart also forgets the relay's session.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_restarts_mid_stream_lose_and_duplicate_nothing_legacy() {
    upstream_restarts(Eras::Legacy).await;
}

async fn upstream_restarts(eras: Eras) {
    let tmp = tempfile::tempdir().unwrap();
    let mut sink = Sink::start_eras(&tmp.path().join("sink"), eras).await;
    let relay = start_relay(relay_config(&tmp.path().join("relay"), &sink.url())).await;
    let mut all = Vec::new();
    for round in 0..4u64 {
        for chunk in 0..10u64 {
            let batch: Vec<Value> = (0..50)
                .map(|i| event("imu", round * 1000 + chunk * 50 + i))
                .collect();
            let (code, answer) = post(relay.ingest_addr, Value::Array(batch).to_string()).await;
            assert_eq!(code, 200, "{answer}");
            all.extend(accepted(&answer));
            if chunk == 4 {
                // Mid-stream: wait until some of this round is delivered, then bounce the upstream.
                acked_at_least(&relay, round * 500 + 100).await;
                sink = sink.restart().await;
            }
        }
    }
    drained(&relay).await;
    let stored = sink.events("test-gw", relay.outbox.stats().stream);
    let result = audit(&all, &stored);
    assert!(result.is_clean(), "{result}");
    assert_eq!(result.delivered, 2000);
    let report = report(&relay);
    if eras == Eras::Legacy {
        assert_eq!(report.protocol_version.as_deref(), Some("2025-11-25"));
        // Each restart forgot the session: a new one, with edge_cursor, at least per restart.
        assert!(report.reconnects >= 5, "{report:?}");
    } else {
        // No session to forget: a restart costs at most the request it cut.
        assert_eq!(report.protocol_version.as_deref(), Some("2026-07-28"));
        assert_eq!(report.sessions_expired, 0, "{report:?}");
    }
    relay.stop().await;
}

/// Regression (found by the partition suite's netns family): a sink listening on an address
/// other than 127.0.0.1 refused every request with 403 (rmcp's Host guard allowed loopback
/// names only), so `edge-relay sink --listen <lan address>` could never be an upstream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sink_on_a_non_default_address_accepts_the_relay() {
    let tmp = tempfile::tempdir().unwrap();
    let sink = Sink::start_on("127.0.0.2:0".parse().unwrap(), &tmp.path().join("sink")).await;
    let relay = start_relay(relay_config(&tmp.path().join("relay"), &sink.url())).await;
    let (_, answer) = post(relay.ingest_addr, event("a", 1).to_string()).await;
    acked_at_least(&relay, 1).await;
    let result = audit(
        &accepted(&answer),
        &sink.events("test-gw", relay.outbox.stats().stream),
    );
    assert!(result.is_clean(), "{result}");
    relay.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lost_answer_is_resent_without_duplicates() {
    let tmp = tempfile::tempdir().unwrap();
    let sink = Sink::start(&tmp.path().join("sink")).await;
    let proxy = fault_proxy::FaultProxy::start(sink.addr()).await;
    let relay = start_relay(relay_config(
        &tmp.path().join("relay"),
        &format!("http://{}/mcp", proxy.addr),
    ))
    .await;
    let first: Vec<Value> = (0..10).map(|i| event("a", i)).collect();
    let (_, answer) = post(relay.ingest_addr, Value::Array(first).to_string()).await;
    let mut all = accepted(&answer);
    drained(&relay).await;

    proxy.arm();
    let second: Vec<Value> = (0..10).map(|i| event("b", i)).collect();
    let (_, answer) = post(relay.ingest_addr, Value::Array(second).to_string()).await;
    all.extend(accepted(&answer));
    drained(&relay).await;
    assert_eq!(proxy.cuts(), 1, "the answer to the second batch was cut");

    let stream = relay.outbox.stats().stream;
    let stored = sink.events("test-gw", stream);
    let result = audit(&all, &stored);
    assert!(result.is_clean(), "{result}");
    assert_eq!(result.delivered, 20);
    // The upstream had stored the batch: the relay resumed after the upstream's acked seq.
    let acked_seq = sink.store().cursor("test-gw", stream).await.unwrap();
    assert_eq!(acked_seq.acked_seq, Some(20));
    assert!(report(&relay).reconnects >= 2);
    relay.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_session_gets_a_new_session_and_delivery_continues() {
    // Sessions exist only in the legacy era (MCP 2026-07-28 has none to expire).
    let tmp = tempfile::tempdir().unwrap();
    let sink = Sink::start_eras(&tmp.path().join("sink"), Eras::Legacy).await;
    let relay = start_relay(relay_config(&tmp.path().join("relay"), &sink.url())).await;
    let (_, answer) = post(relay.ingest_addr, event("a", 1).to_string()).await;
    let mut all = accepted(&answer);
    drained(&relay).await;
    // While the relay is idle, the upstream restarts and forgets every session.
    let sink = sink.restart().await;
    let (_, answer) = post(relay.ingest_addr, event("a", 2).to_string()).await;
    all.extend(accepted(&answer));
    drained(&relay).await;
    let report = report(&relay);
    assert!(report.reconnects >= 2, "{report:?}");
    assert_eq!(report.sessions_expired, 1, "{report:?}");
    let result = audit(&all, &sink.events("test-gw", relay.outbox.stats().stream));
    assert!(result.is_clean(), "{result}");
    relay.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn producer_retry_with_the_same_id_is_idempotent_end_to_end() {
    let tmp = tempfile::tempdir().unwrap();
    let sink = Sink::start(&tmp.path().join("sink")).await;
    let relay = start_relay(relay_config(&tmp.path().join("relay"), &sink.url())).await;
    let id = Uuid::now_v7();
    let body = serde_json::json!({"id": id, "source": "tool-runner", "kind": "tool", "data": {"ok": true}});
    let (_, first) = post(relay.ingest_addr, body.to_string()).await;
    drained(&relay).await;
    let (code, again) = post(relay.ingest_addr, body.to_string()).await;
    assert_eq!(code, 200);
    assert_eq!(accepted(&first), accepted(&again));
    drained(&relay).await;
    let stored = sink.events("test-gw", relay.outbox.stats().stream);
    assert_eq!(stored.len(), 1);
    assert_eq!(stored[0].id, id);
    relay.stop().await;
}

/// Issue 12 item 2: an upstream whose acked seq names seqs the relay never sent (here its store
/// was written by something else) is a contract violation; nothing unsent is deleted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_acked_seq_above_what_was_sent_deletes_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("sink");
    // The upstream's port is closed at first: nothing can be sent.
    let addr = support::process::free_port();
    let url = format!("http://{addr}/mcp");
    let relay = start_relay(relay_config(&tmp.path().join("relay"), &url)).await;
    let events: Vec<Value> = (1..=80).map(|n| event("unsent", n)).collect();
    let (code, answer) = post(relay.ingest_addr, Value::Array(events).to_string()).await;
    assert_eq!(code, 200, "{answer}");
    let stream = relay.outbox.stats().stream;
    {
        // A buggy upstream: its store claims 1..=80 of this stream (written by someone else).
        let store = edge_relay::sink::SinkStore::open(&dir).unwrap();
        let fake = (1..=80)
            .map(|seq| edge_relay::event::Event {
                id: Uuid::now_v7(),
                seq,
                source: "not-from-this-relay".into(),
                kind: "sensor".into(),
                time: "2026-11-30T00:00:00Z".into(),
                data: Value::Null,
            })
            .collect();
        let args = edge_relay::contract::IngestArgs {
            gateway: "test-gw".into(),
            stream,
            events: fake,
            events_zstd: None,
            gap: None,
        };
        assert_eq!(store.ingest(&args).await.unwrap().acked_seq, Some(80));
    }
    let _sink = Sink::start_on(addr, &dir).await;
    support::process::poll_until(
        WAIT,
        "the relay reports the contract violation",
        || async { Some(report(&relay)) },
        |r| {
            r.last_error
                .as_deref()
                .is_some_and(|e| e.contains("above the highest seq ever sent"))
        },
    )
    .await;
    let stats = relay.outbox.stats();
    assert_eq!(
        (stats.acked_seq, stats.sent_seq, stats.backlog_events),
        (0, 0, 80)
    );
    let kept = relay.outbox.batch_after(0, 1000, usize::MAX).unwrap();
    assert_eq!(kept.len(), 80, "the unsent events are all still buffered");
    assert!(kept.iter().all(|e| e.source == "unsent"));
    relay.stop().await;
}
