//! Wire conformance with MCP over MQTT (mqtt-ai/mcp-over-mqtt, basic/mqtt_transport.md, commit
//! cd3a13a): a bystander client subscribed to each `$mcp-...` filter checks the topics, the
//! retained presence, the user properties, `notifications/disconnected` and the last will.

use edge_relay_testkit as support;

use std::time::Duration;

use edge_relay::demo::mosquitto::Mosquitto;
use edge_relay::mqtt::link::Link;
use edge_relay::mqtt::topics;
use serde_json::Value;
use support::mcp_mqtt::{MqttSink, SERVER_NAME, relay_config_mqtt};
use support::process::{kill_9, spawn_daemon};
use support::*;

/// What the bystander saw of one PUBLISH.
#[derive(Debug, Clone)]
struct Seen {
    topic: String,
    payload: Vec<u8>,
    retain: bool,
    props: Vec<(String, String)>,
}

impl Seen {
    fn prop(&self, name: &str) -> Option<&str> {
        self.props
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
    fn json(&self) -> Value {
        serde_json::from_slice(&self.payload).unwrap_or(Value::Null)
    }
}

async fn bystander(url: &str) -> Link {
    // `#` does not match `$` topics (MQTT 5.0 §4.7.2): subscribe to each family explicitly.
    support::mosquitto::bystander(url, &["$mcp-server/#", "$mcp-client/#", "$mcp-rpc/#"]).await
}

/// Collects what arrives until `done` holds for the collected list (bounded by [`WAIT`]).
async fn collect_until(link: &mut Link, seen: &mut Vec<Seen>, done: impl Fn(&[Seen]) -> bool) {
    let wait = async {
        while !done(seen) {
            let p = link.recv().await.expect("bystander connection");
            seen.push(Seen {
                topic: String::from_utf8_lossy(&p.topic).into_owned(),
                payload: p.payload.to_vec(),
                retain: p.retain,
                props: p.properties.map(|p| p.user_properties).unwrap_or_default(),
            });
        }
    };
    tokio::time::timeout(WAIT, wait)
        .await
        .unwrap_or_else(|_| panic!("expected traffic did not arrive; saw {seen:#?}"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn topics_presence_properties_disconnect_and_will_follow_the_spec() {
    let tmp = tempfile::tempdir().unwrap();
    let broker = Mosquitto::start(&tmp.path().join("broker"), false).unwrap();
    let sink = MqttSink::open(&tmp.path().join("sink"), &broker.url()).await;
    // A late subscriber still gets the server's presence: it is retained.
    let mut early = bystander(&broker.url()).await;
    let mut seen = Vec::new();
    collect_until(&mut early, &mut seen, |s| {
        s.iter()
            .any(|m| m.topic.starts_with("$mcp-server/presence/"))
    })
    .await;
    let late_presence = {
        let mut late = bystander(&broker.url()).await;
        let mut got = Vec::new();
        collect_until(&mut late, &mut got, |s| !s.is_empty()).await;
        late.disconnect().await;
        got.remove(0)
    };
    assert!(
        late_presence.retain,
        "presence is retained: {late_presence:?}"
    );
    let (server_id, name) = topics::parse_presence(&late_presence.topic).expect("presence topic");
    assert_eq!(name, SERVER_NAME);
    assert_eq!(
        late_presence.json()["method"],
        "notifications/server/online"
    );
    assert_eq!(
        late_presence.prop(topics::COMPONENT_TYPE),
        Some(topics::SERVER)
    );
    assert_eq!(late_presence.prop(topics::MQTT_CLIENT_ID), Some(server_id));
    let server_id = server_id.to_owned();

    // One relay session in the current era (the sink serves both): server/discover on the
    // control topic, then the RPC topic both ways.
    let relay = start_relay(relay_config_mqtt(&tmp.path().join("relay"), &broker.url())).await;
    let (code, _) = post(relay.ingest_addr, event("a", 1).to_string()).await;
    assert_eq!(code, 200);
    drained(&relay).await;
    relay.stop().await; // graceful: notifications/disconnected on the client presence topic
    collect_until(&mut early, &mut seen, |s| {
        s.iter()
            .any(|m| m.topic.starts_with("$mcp-client/presence/"))
    })
    .await;

    let init = seen
        .iter()
        .find(|m| m.json()["method"] == "server/discover")
        .expect("a server/discover request");
    assert_eq!(init.topic, topics::server_control(&server_id, SERVER_NAME));
    assert_eq!(init.prop(topics::COMPONENT_TYPE), Some(topics::CLIENT));
    let client_id = init
        .prop(topics::MQTT_CLIENT_ID)
        .expect("MCP-MQTT-CLIENT-ID")
        .to_owned();
    let rpc = topics::rpc(&client_id, &server_id, SERVER_NAME);
    let on_rpc: Vec<&Seen> = seen.iter().filter(|m| m.topic == rpc).collect();
    let from = |kind: &str| {
        on_rpc
            .iter()
            .filter(|m| m.prop(topics::COMPONENT_TYPE) == Some(kind))
            .count()
    };
    assert!(
        from(topics::SERVER) >= 3,
        "discover result, acked seq and ingest answers: {on_rpc:#?}"
    );
    assert!(
        from(topics::CLIENT) >= 2,
        "edge_cursor and edge_ingest: {on_rpc:#?}"
    );
    // No handshake in this era: every request names its protocol version in `_meta`.
    let calls: Vec<_> = on_rpc
        .iter()
        .filter(|m| m.json()["method"] == "tools/call")
        .collect();
    assert!(calls.len() >= 2, "{on_rpc:#?}");
    for call in calls {
        let meta = &call.json()["params"]["_meta"];
        assert_eq!(
            meta["io.modelcontextprotocol/protocolVersion"],
            "2026-07-28"
        );
    }
    assert!(
        on_rpc
            .iter()
            .all(|m| m.json()["method"] != "notifications/initialized")
    );
    assert!(on_rpc.iter().all(|m| !m.retain));
    let bye = seen
        .iter()
        .find(|m| m.topic == topics::client_presence(&client_id))
        .unwrap();
    assert_eq!(bye.json()["method"], "notifications/disconnected");
    assert_eq!(bye.prop(topics::MQTT_CLIENT_ID), Some(client_id.as_str()));

    // The client's last will: a relay that dies without a goodbye.
    let mut watcher_seen = Vec::new();
    let config = tmp.path().join("relay.toml");
    std::fs::write(
        &config,
        format!(
            "gateway_id = \"will-gw\"\ndata_dir = \"{}\"\n[ingest.http]\nlisten = \"127.0.0.1:0\"\n\
             [upstream]\ntransport = \"mqtt\"\nurl = \"{}\"\nserver_name = \"{SERVER_NAME}\"\n",
            tmp.path().join("relay2").display(),
            broker.url()
        ),
    )
    .unwrap();
    let mut child = spawn_daemon(&config, &[]);
    collect_until(&mut early, &mut watcher_seen, |s| {
        s.iter().any(|m| m.json()["method"] == "server/discover")
    })
    .await;
    let dead_id = watcher_seen
        .iter()
        .find(|m| m.json()["method"] == "server/discover")
        .and_then(|m| m.prop(topics::MQTT_CLIENT_ID))
        .unwrap()
        .to_owned();
    // Let the session get past its start (its first tool call) before the kill, so the will
    // is the only goodbye.
    collect_until(&mut early, &mut watcher_seen, |s| {
        s.iter().any(|m| {
            m.json()["method"] == "tools/call" && m.prop(topics::MQTT_CLIENT_ID) == Some(&dead_id)
        })
    })
    .await;
    kill_9(&mut child);
    collect_until(&mut early, &mut watcher_seen, |s| {
        s.iter()
            .any(|m| m.topic == topics::client_presence(&dead_id))
    })
    .await;
    let will = watcher_seen
        .iter()
        .find(|m| m.topic == topics::client_presence(&dead_id))
        .unwrap();
    assert_eq!(
        will.json()["method"],
        "notifications/disconnected",
        "{will:?}"
    );
    assert_eq!(will.prop(topics::COMPONENT_TYPE), Some(topics::CLIENT));

    // The server's graceful stop clears its retained presence (empty payload).
    sink.stop().await;
    collect_until(&mut early, &mut watcher_seen, |s| {
        s.iter()
            .any(|m| m.topic.starts_with("$mcp-server/presence/") && m.payload.is_empty())
    })
    .await;
    let mut after = bystander(&broker.url()).await;
    let nothing = tokio::time::timeout(Duration::from_millis(300), after.recv()).await;
    assert!(
        nothing.is_err(),
        "no retained presence is left: {nothing:?}"
    );
}
