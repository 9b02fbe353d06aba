//! MCP over MQTT in both eras against a real Mosquitto: the relay with the reference upstream
//! serving only the current or only the legacy era, and the MQTT goodbye
//! (`notifications/disconnected`, then DISCONNECT) seen by a bystander on every one of 50
//! `probe` runs of the real binary and on a graceful stop of the relay.

use edge_relay_testkit as support;

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use edge_relay::demo::audit::audit;
use edge_relay::demo::mosquitto::Mosquitto;
use edge_relay::mqtt::link::Link;
use edge_relay::mqtt::topics;
use edge_relay::sink::{Eras, SinkStore};
use serde_json::Value;
use support::mcp_mqtt::{MqttSink, SERVER_NAME, relay_config_mqtt};
use support::process::{binary, free_port, poll_until, write_config};
use support::*;

/// `probe` runs of the goodbye loop (the count), and how many run at once.
const PROBES: usize = 50;
const AT_ONCE: usize = 5;
/// Bound on a goodbye reaching the bystander, or its DISCONNECT reaching the broker's log.
const GOODBYE_BOUND: Duration = Duration::from_secs(10);

async fn relay_over_mqtt(eras: Eras) -> String {
    let tmp = tempfile::tempdir().unwrap();
    let broker = Mosquitto::start(&tmp.path().join("broker"), false).unwrap();
    let store = std::sync::Arc::new(SinkStore::open(&tmp.path().join("sink")).unwrap());
    let sink = MqttSink::serve_eras(store, &broker.url(), eras).await;
    let relay = start_relay(relay_config_mqtt(&tmp.path().join("relay"), &broker.url())).await;
    let batch: Vec<Value> = (0..300).map(|i| event("imu", i)).collect();
    let (code, answer) = post(relay.ingest_addr, Value::Array(batch).to_string()).await;
    assert_eq!(code, 200, "{answer}");
    drained(&relay).await;
    let stream = relay.outbox.stats().stream;
    let result = audit(
        &accepted(&answer),
        &sink.store().events("test-gw", stream).unwrap(),
    );
    assert!(result.is_clean(), "{result}");
    let version = report(&relay).protocol_version.expect("negotiated");
    relay.stop().await;
    sink.stop().await;
    version
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_over_mqtt_speaks_the_current_era_to_a_current_only_upstream() {
    assert_eq!(relay_over_mqtt(Eras::Current).await, "2026-07-28");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_over_mqtt_falls_back_to_initialize_for_a_legacy_only_upstream() {
    assert_eq!(relay_over_mqtt(Eras::Legacy).await, "2025-11-25");
}

/// Relay client ids (`edge-relay-…`, not the sink's) the broker's log saw connect.
fn relay_clients(log: &str) -> HashSet<String> {
    log.lines()
        .filter_map(|l| l.split(" as ").nth(1)?.split_whitespace().next())
        .filter(|id| id.starts_with("edge-relay-") && !id.starts_with("edge-relay-sink-"))
        .map(str::to_owned)
        .collect()
}

/// Waits until the bystander holds a `notifications/disconnected` of every id in `ids`
/// (`seen` counts them by id) and the broker logged each one's DISCONNECT ("disconnected",
/// not "closed its connection": only then is the will, the same payload, not published).
async fn goodbyes(
    bystander: &mut Link,
    seen: &mut HashMap<String, usize>,
    ids: &HashSet<String>,
    log: &Path,
) {
    while !ids.iter().all(|id| seen.contains_key(id)) {
        let publish = tokio::time::timeout(GOODBYE_BOUND, bystander.recv())
            .await
            .unwrap_or_else(|_| panic!("no goodbye within {GOODBYE_BOUND:?}; seen {seen:?}"))
            .expect("bystander connected");
        let topic = String::from_utf8_lossy(&publish.topic).into_owned();
        let payload: Value = serde_json::from_slice(&publish.payload).unwrap();
        assert_eq!(payload["method"], "notifications/disconnected", "{topic}");
        let id = topic.rsplit('/').next().unwrap().to_owned();
        *seen.entry(id).or_default() += 1;
    }
    for id in ids {
        let clean = format!("Client {id} disconnected.");
        let text = poll_until(
            GOODBYE_BOUND,
            &format!("the broker logs {id}'s DISCONNECT"),
            || async { std::fs::read_to_string(log).ok() },
            |text| text.contains(&clean),
        )
        .await;
        assert!(
            !text.contains(&format!("Client {id} closed its connection")),
            "{id}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_probe_and_a_graceful_stop_say_goodbye_over_mqtt() {
    let tmp = tempfile::tempdir().unwrap();
    let broker = Mosquitto::start(&tmp.path().join("broker"), false).unwrap();
    let log = tmp.path().join("broker/mosquitto.log");
    let sink = MqttSink::open(&tmp.path().join("sink"), &broker.url()).await;
    let presence = topics::client_presence("+");
    let mut bystander = support::mosquitto::bystander(&broker.url(), &[&presence]).await;
    let keys = format!(
        "transport = \"mqtt\"\nurl = \"{}\"\nserver_name = \"{SERVER_NAME}\"",
        broker.url()
    );
    let config = write_config(tmp.path(), "gw-probe", free_port(), &keys);
    let mut seen = HashMap::new();
    let mut known = HashSet::new();
    for round in 0..PROBES / AT_ONCE {
        let runs: Vec<_> = (0..AT_ONCE)
            .map(|_| {
                let config = config.clone();
                tokio::task::spawn_blocking(move || {
                    Command::new(binary())
                        .args(["probe", "--config"])
                        .arg(config)
                        .output()
                        .unwrap()
                })
            })
            .collect();
        for run in runs {
            let out = run.await.unwrap();
            let text = String::from_utf8_lossy(&out.stdout);
            assert!(
                out.status.success(),
                "round {round}: {text}{}",
                String::from_utf8_lossy(&out.stderr)
            );
            assert!(
                text.contains("also serves legacy (initialize): yes"),
                "{text}"
            );
        }
        // Each probe opened two sessions (its own, and the check of the other era).
        let now = relay_clients(&std::fs::read_to_string(&log).unwrap());
        let new: HashSet<String> = now.difference(&known).cloned().collect();
        assert_eq!(new.len(), 2 * AT_ONCE, "round {round}: {new:?}");
        goodbyes(&mut bystander, &mut seen, &new, &log).await;
        known = now;
    }
    assert_eq!(known.len(), 2 * PROBES);
    // The daemon's graceful stop ends its session the same way.
    let relay = start_relay(relay_config_mqtt(&tmp.path().join("relay"), &broker.url())).await;
    let (code, _) = post(relay.ingest_addr, event("a", 1).to_string()).await;
    assert_eq!(code, 200);
    drained(&relay).await;
    relay.stop().await;
    let now = relay_clients(&std::fs::read_to_string(&log).unwrap());
    let new: HashSet<String> = now.difference(&known).cloned().collect();
    assert_eq!(new.len(), 1, "{new:?}");
    goodbyes(&mut bystander, &mut seen, &new, &log).await;
    assert!(seen.values().all(|n| *n == 1), "one goodbye each: {seen:?}");
    sink.stop().await;
}
