//! MQTT all the way: a local producer on the gateway's Mosquitto → relay (MQTT ingest) → MCP over
//! MQTT through the upstream's Mosquitto → reference upstream. Every PUBACKed message arrives
//! exactly once, in order, also when the relay binary is `kill -9`ed mid-stream.

use edge_relay_testkit as support;

use edge_relay::config::MqttIngestConfig;
use edge_relay::event::Event;
use serde_json::json;
use support::mcp_mqtt::{MqttSink, SERVER_NAME, relay_config_mqtt};
use support::mosquitto::{Mosquitto, publish_qos1, wait_subscribed};
use support::process::{kill_9, poll_until, spawn_daemon};
use support::*;
use uuid::Uuid;

const TOPIC: &str = "sensors/imu";

/// Messages `{"id": uuid, "n": i}` for `range`, with the ids (the producer's idempotency keys).
fn messages(range: std::ops::Range<u64>) -> (Vec<(String, Vec<u8>)>, Vec<Uuid>) {
    let ids: Vec<Uuid> = range.clone().map(|_| Uuid::now_v7()).collect();
    let msgs = range
        .zip(&ids)
        .map(|(n, id)| {
            (
                TOPIC.to_owned(),
                json!({"id": id, "n": n}).to_string().into_bytes(),
            )
        })
        .collect();
    (msgs, ids)
}

/// The upstream's events of `TOPIC`, checked: each published id exactly once, in publish order.
fn assert_exactly_once_in_order(stored: &[Event], published: &[Uuid]) {
    let got: Vec<Uuid> = stored
        .iter()
        .filter(|e| e.source == TOPIC)
        .map(|e| e.id)
        .collect();
    assert_eq!(
        got.len(),
        published.len(),
        "count (lost or duplicated events)"
    );
    assert_eq!(
        got, published,
        "exactly the published ids, in publish order"
    );
    assert!(stored.windows(2).all(|w| w[0].seq < w[1].seq));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_mqtt_messages_reach_the_upstream_over_mcp_over_mqtt_exactly_once() {
    let tmp = tempfile::tempdir().unwrap();
    let local = Mosquitto::start(false).await;
    let upstream = Mosquitto::start(false).await;
    let sink = MqttSink::open(&tmp.path().join("sink"), &upstream.url()).await;
    let mut config = relay_config_mqtt(&tmp.path().join("relay"), &upstream.url());
    config.ingest.mqtt = Some(MqttIngestConfig {
        url: local.url(),
        topics: vec!["sensors/#".into()],
        ..MqttIngestConfig::default()
    });
    let relay = start_relay(config).await;
    wait_subscribed(&local.url(), "sensors/probe").await;
    let before = relay.outbox.stats().next_seq - 1;
    let (msgs, ids) = messages(0..10_000);
    assert_eq!(publish_qos1(&local.url(), "producer", msgs).await, 10_000);
    let stream = relay.outbox.stats().stream;
    let of_topic = || {
        let stored = sink.store().events("test-gw", stream).unwrap();
        (stored.iter().filter(|e| e.source == TOPIC).count(), stored)
    };
    let mut changes = relay.outbox.watch();
    let stored = tokio::time::timeout(WAIT, async {
        loop {
            if relay.outbox.stats().acked_seq >= before + 10_000 {
                let (count, stored) = of_topic();
                if count >= 10_000 {
                    return stored;
                }
            }
            changes.changed().await.unwrap();
        }
    })
    .await
    .expect("all 10,000 messages delivered");
    assert_exactly_once_in_order(&stored, &ids);
    relay.stop().await;
    sink.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_kill_9_mid_stream_every_pubacked_message_arrives_exactly_once() {
    let tmp = tempfile::tempdir().unwrap();
    let local = Mosquitto::start(false).await;
    let upstream = Mosquitto::start(false).await;
    let sink = MqttSink::open(&tmp.path().join("sink"), &upstream.url()).await;
    let config = tmp.path().join("edge-relay.toml");
    std::fs::write(
        &config,
        format!(
            "gateway_id = \"kill-gw\"\ndata_dir = \"{}\"\n[ingest.http]\nlisten = \"127.0.0.1:0\"\n\
             [ingest.mqtt]\nurl = \"{}\"\ntopics = [\"sensors/#\"]\n\
             [upstream]\ntransport = \"mqtt\"\nurl = \"{}\"\nserver_name = \"{SERVER_NAME}\"\n\
             [relay]\nbackoff_initial_ms = 20\nbackoff_max_ms = 200\nbatch_max_events = 100\n",
            tmp.path().join("relay").display(),
            local.url(),
            upstream.url()
        ),
    )
    .unwrap();
    // The upstream's events of the relay's stream (none before its first session), and how
    // many of them the producer published.
    let stored = || {
        let streams = sink.store().streams().unwrap();
        streams
            .iter()
            .find(|(g, _)| g == "kill-gw")
            .map(|(g, s)| sink.store().events(g, *s).unwrap())
            .unwrap_or_default()
    };
    let published = |stored: &[Event]| stored.iter().filter(|e| e.source == TOPIC).count();
    let mut all_ids = Vec::new();
    let mut child = spawn_daemon(&config, &[]);
    for round in 0..4usize {
        wait_subscribed(&local.url(), "sensors/probe").await;
        // The broker PUBACKs the producer; it holds the messages for the relay's persistent
        // session until the relay PUBACKs them after its own commit.
        let (msgs, ids) = messages(round as u64 * 1000..(round as u64 + 1) * 1000);
        assert_eq!(publish_qos1(&local.url(), "producer", msgs).await, 1000);
        all_ids.extend(ids);
        // Mid-stream: once the upstream holds some of this round, kill the daemon.
        let what = format!("progress in round {round}");
        let held = || async { Some(published(&stored())) };
        poll_until(WAIT, &what, held, |n| *n > round * 1000).await;
        kill_9(&mut child);
        child = spawn_daemon(&config, &[]);
    }
    // Everything arrives after the last restart.
    let held = || async { Some(stored()).filter(|s| published(s) >= all_ids.len()) };
    let stored = poll_until(WAIT, "everything arrived", held, |_| true).await;
    kill_9(&mut child);
    assert_exactly_once_in_order(&stored, &all_ids);
    sink.stop().await;
}
