//! A store sled cannot open is moved aside and a new stream starts: the real binary, a real
//! sled store made unreadable, and what `status` and `/metrics` then say.

use edge_relay_testkit as support;

use std::path::Path;

use edge_relay::cli::local_client;
use hyper::Method;
use support::process::*;
use support::*;

/// Starts the daemon on `dir` (no upstream: events stay buffered) and waits for its ingest.
async fn start(dir: &Path) -> (DaemonChild, std::net::SocketAddr) {
    let listen = free_port();
    let upstream = format!("url = \"http://{}/mcp\"", free_port());
    let config = write_config(dir, "gw-aside", listen, &upstream);
    let child = spawn_daemon(&config, &[]);
    wait_listening(listen, "edge-relay run").await;
    (child, listen)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unopenable_store_is_moved_aside_and_a_new_stream_starts() {
    let dir = tempfile::tempdir().unwrap();
    let (mut daemon, listen) = start(dir.path()).await;
    let (code, answer) = post(listen, event("ankle", 1).to_string()).await;
    assert_eq!(code, 200, "{answer}");
    let first = status(listen).await.expect("status");
    sigterm(&daemon);
    wait_exit(&mut daemon, WAIT).await;

    // Damage the store: sled's config no longer parses.
    let store = dir.path().join("relay");
    std::fs::write(store.join("conf"), b"not a sled config at all\n\0\0\0\0").unwrap();

    let (mut daemon, listen) = start(dir.path()).await;
    let report = status(listen).await.expect("status");
    assert_ne!(report.stream, first.stream, "a new stream");
    assert_eq!((report.next_seq, report.backlog_events), (1, 0));
    assert_eq!(report.stores_moved_aside.len(), 1, "{report:?}");
    let aside = Path::new(&report.stores_moved_aside[0]);
    assert!(aside.starts_with(&store), "{}", aside.display());
    let reason = std::fs::read_to_string(aside.join("REASON")).unwrap();
    assert!(reason.contains("sled could not open it"), "{reason}");
    assert!(aside.join("db").is_file(), "the old log is kept");
    // Ingest works on the new stream.
    let (code, answer) = post(listen, event("ankle", 2).to_string()).await;
    assert_eq!((code, &answer["first_seq"]), (200, &serde_json::json!(1)));
    let (code, metrics) = local_client::request(listen, Method::GET, "/metrics", Vec::new())
        .await
        .unwrap();
    assert_eq!(code, 200);
    assert!(
        metrics.contains("\nedge_relay_stores_moved_aside 1\n"),
        "{metrics}"
    );
    sigterm(&daemon);
    wait_exit(&mut daemon, WAIT).await;

    // Negative control: a healthy store is opened as it is, nothing more is moved.
    let (mut daemon, listen) = start(dir.path()).await;
    let again = status(listen).await.expect("status");
    assert_eq!((again.stream, again.next_seq), (report.stream, 2));
    assert_eq!(again.stores_moved_aside.len(), 1);
    sigterm(&daemon);
    wait_exit(&mut daemon, WAIT).await;
}
