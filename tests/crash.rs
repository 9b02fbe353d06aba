//! The real binary, `kill -9`ed mid-stream and restarted on its outbox, over each transport:
//! every event that got a 200 reaches the reference upstream exactly once, in order.

mod support;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use edge_relay::audit::audit;
use edge_relay::local_client;
use edge_relay::mosquitto::Mosquitto;
use edge_relay::sink::SinkStore;
use hyper::Method;
use serde_json::Value;
use support::mcp_mqtt::{MqttSink, SERVER_NAME};
use support::process::{free_port, spawn_daemon, status, write_config};
use support::*;
use uuid::Uuid;

/// Pause between a producer's attempts while the daemon is down (a producer's own retry pace).
const RETRY_PAUSE: Duration = Duration::from_millis(20);

async fn wait_healthy(addr: SocketAddr) {
    let deadline = Instant::now() + WAIT;
    while local_client::request(addr, Method::GET, "/healthz", vec![])
        .await
        .is_err()
    {
        assert!(
            Instant::now() < deadline,
            "daemon not healthy within {WAIT:?}"
        );
        tokio::time::sleep(RETRY_PAUSE).await;
    }
}

/// Posts batches of 20 until stopped, retrying each batch (same ids) until it gets a 200.
async fn produce(addr: SocketAddr, accepted_log: Arc<Mutex<Vec<(u64, Uuid)>>>, batches: usize) {
    for b in 0..batches {
        let body: Vec<Value> = (0..20)
            .map(|i| event("crash", (b * 20 + i) as u64))
            .collect();
        let body = Value::Array(body).to_string().into_bytes();
        loop {
            match local_client::request(addr, Method::POST, "/v1/events", body.clone()).await {
                Ok((200, text)) => {
                    let v: Value = serde_json::from_str(&text).unwrap();
                    accepted_log.lock().unwrap().extend(accepted(&v));
                    break;
                }
                Ok((code, text)) if code < 500 => panic!("refused: {code} {text}"),
                _ => tokio::time::sleep(RETRY_PAUSE).await,
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_mid_stream_then_restart_delivers_every_accepted_event_once_http() {
    let tmp = tempfile::tempdir().unwrap();
    let sink = Sink::start(&tmp.path().join("sink")).await;
    let upstream = format!("url = \"{}\"", sink.url());
    crash_loop(tmp.path(), &upstream, &sink.store).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_mid_stream_then_restart_delivers_every_accepted_event_once_mqtt() {
    let tmp = tempfile::tempdir().unwrap();
    let broker = Mosquitto::start(&tmp.path().join("broker"), false).unwrap();
    let sink = MqttSink::open(&tmp.path().join("sink"), &broker.url());
    let upstream = format!(
        "transport = \"mqtt\"\nurl = \"{}\"\nserver_name = \"{SERVER_NAME}\"",
        broker.url()
    );
    crash_loop(tmp.path(), &upstream, &sink.store).await;
    sink.stop().await;
}

/// Runs the real binary with `upstream` (the `[upstream]` keys), `kill -9`s it four times while
/// a producer posts 3,000 events, and audits the upstream's `store`.
async fn crash_loop(dir: &Path, upstream: &str, store: &SinkStore) {
    let port = free_port();
    let config_path = write_config(dir, "crash-gw", port, upstream);
    let log = Arc::new(Mutex::new(Vec::new()));
    let mut child = spawn_daemon(&config_path, &[]);
    wait_healthy(port).await;
    let producer = tokio::spawn(produce(port, log.clone(), 150));
    let mut stream = None;
    for kill in 1..=4 {
        // Kill once this life has accepted some events and the upstream has stored some.
        let target = kill * 500;
        let deadline = Instant::now() + WAIT;
        loop {
            let stored = status(port).await.map(|s| {
                stream = s["stream"].as_str().map(|x| Uuid::parse_str(x).unwrap());
                s["acked_seq"].as_u64().unwrap_or(0)
            });
            if log.lock().unwrap().len() >= target && stored.unwrap_or(0) > 0 {
                break;
            }
            assert!(Instant::now() < deadline, "no progress before kill {kill}");
            tokio::time::sleep(RETRY_PAUSE).await;
        }
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        child = spawn_daemon(&config_path, &[]);
        wait_healthy(port).await;
    }
    tokio::time::timeout(WAIT, producer).await.unwrap().unwrap();
    let accepted_all = log.lock().unwrap().clone();
    assert_eq!(accepted_all.len(), 3000);
    let last = accepted_all.iter().map(|(s, _)| *s).max().unwrap();
    let stream = stream.unwrap();
    let deadline = Instant::now() + WAIT;
    while store.cursor("crash-gw", stream).await.unwrap().acked_seq != Some(last) {
        assert!(
            Instant::now() < deadline,
            "upstream never reached seq {last}"
        );
        tokio::time::sleep(RETRY_PAUSE).await;
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let result = audit(&accepted_all, &store.events("crash-gw", stream).unwrap());
    assert!(result.is_clean(), "{result}");
    assert_eq!(result.delivered, 3000);
}
