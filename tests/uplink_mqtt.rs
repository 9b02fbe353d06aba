//! The MCP over MQTT uplink against a real Mosquitto: exactly once and in order through broker
//! restarts, upstream restarts, lost answers and server failover.

use edge_relay_testkit as support;

use edge_relay::demo::audit::audit;
use edge_relay::demo::mosquitto::Mosquitto;
use serde_json::Value;
use support::mcp_mqtt::{MqttSink, relay_config_mqtt};
use support::*;
use uuid::Uuid;

async fn post_batch(relay: &edge_relay::daemon::Daemon, source: &str, n: u64) -> Vec<(u64, Uuid)> {
    let batch: Vec<Value> = (0..n).map(|i| event(source, i)).collect();
    let (code, answer) = post(relay.ingest_addr, Value::Array(batch).to_string()).await;
    assert_eq!(code, 200, "{answer}");
    accepted(&answer)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_events_over_mqtt_exactly_once_in_order() {
    let tmp = tempfile::tempdir().unwrap();
    let broker = Mosquitto::start(&tmp.path().join("broker"), false).unwrap();
    let sink = MqttSink::open(&tmp.path().join("sink"), &broker.url()).await;
    let relay = start_relay(relay_config_mqtt(&tmp.path().join("relay"), &broker.url())).await;
    let mut all = Vec::new();
    for _ in 0..40 {
        all.extend(post_batch(&relay, "imu", 250).await);
    }
    drained(&relay).await;
    let stored = sink
        .store()
        .events("test-gw", relay.outbox.stats().stream)
        .unwrap();
    let result = audit(&all, &stored);
    assert!(result.is_clean(), "{result}");
    assert_eq!(result.delivered, 10_000);
    relay.stop().await;
    sink.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_and_upstream_restarts_mid_stream_lose_and_duplicate_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let mut broker = Mosquitto::start(&tmp.path().join("broker"), false).unwrap();
    let mut sink = MqttSink::open(&tmp.path().join("sink"), &broker.url()).await;
    let relay = start_relay(relay_config_mqtt(&tmp.path().join("relay"), &broker.url())).await;
    let mut all = Vec::new();
    for round in 0..4u64 {
        all.extend(post_batch(&relay, "a", 300).await);
        acked_at_least(&relay, round * 600 + 100).await;
        if round % 2 == 0 {
            broker.kill(); // abrupt: wills fire, rumqttc drops whatever was in flight
            broker.restart().unwrap();
        } else {
            let store = sink.stop().await;
            drop(store);
            sink = MqttSink::open(&tmp.path().join("sink"), &broker.url()).await;
        }
        all.extend(post_batch(&relay, "b", 300).await);
    }
    drained(&relay).await;
    let stored = sink
        .store()
        .events("test-gw", relay.outbox.stats().stream)
        .unwrap();
    let result = audit(&all, &stored);
    assert!(result.is_clean(), "{result}\n{}", broker.log());
    assert_eq!(result.delivered, 2400);
    assert!(report(&relay).reconnects >= 5);
    relay.stop().await;
    sink.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answer_lost_after_the_upstream_stored_the_batch_is_not_duplicated() {
    let tmp = tempfile::tempdir().unwrap();
    let broker = Mosquitto::start(&tmp.path().join("broker"), false).unwrap();
    let sink = MqttSink::open(&tmp.path().join("sink"), &broker.url()).await;
    let proxy = fault_proxy::FaultProxy::start(broker.addr).await;
    let relay_url = format!("mqtt://{}", proxy.addr);
    let relay = start_relay(relay_config_mqtt(&tmp.path().join("relay"), &relay_url)).await;
    let mut all = post_batch(&relay, "a", 10).await;
    drained(&relay).await;
    proxy.arm();
    all.extend(post_batch(&relay, "b", 10).await);
    drained(&relay).await;
    assert_eq!(proxy.cuts(), 1, "the answer to the second batch was cut");
    let stream = relay.outbox.stats().stream;
    let result = audit(&all, &sink.store().events("test-gw", stream).unwrap());
    assert!(result.is_clean(), "{result}");
    assert_eq!(result.delivered, 20);
    assert!(report(&relay).reconnects >= 2);
    relay.stop().await;
    sink.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_of_one_server_name_the_relay_switches_when_one_goes_offline() {
    let tmp = tempfile::tempdir().unwrap();
    let broker = Mosquitto::start(&tmp.path().join("broker"), false).unwrap();
    // Two instances of one upstream (same name, same store, different server-ids).
    let first = MqttSink::open(&tmp.path().join("sink"), &broker.url()).await;
    let mut second = Some(MqttSink::serve(first.store().clone(), &broker.url()).await);
    let mut first = Some(first);
    let relay = start_relay(relay_config_mqtt(&tmp.path().join("relay"), &broker.url())).await;
    let mut all = post_batch(&relay, "a", 100).await;
    drained(&relay).await;
    // Take each instance offline in turn: whichever the relay uses, it must move to the other.
    let store = first.as_ref().unwrap().store().clone();
    first.take().unwrap().stop().await;
    all.extend(post_batch(&relay, "b", 100).await);
    drained(&relay).await;
    first = Some(MqttSink::serve(store.clone(), &broker.url()).await);
    second.take().unwrap().stop().await;
    all.extend(post_batch(&relay, "c", 100).await);
    drained(&relay).await;
    let report = report(&relay);
    assert!(
        report.reconnects >= 2,
        "the relay switched instances: {report:?}"
    );
    let result = audit(
        &all,
        &store
            .events("test-gw", relay.outbox.stats().stream)
            .unwrap(),
    );
    assert!(result.is_clean(), "{result}");
    relay.stop().await;
    first.take().unwrap().stop().await;
}
