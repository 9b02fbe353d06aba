//! Who may post: JSON content types only (no cross-site form posts from a browser), the
//! optional bearer token of `ingest.http.token_file`, and a warning at start when the ingest
//! listens beyond loopback without one.

use edge_relay_testkit as support;

use std::io::{BufRead, BufReader};
use std::process::Stdio;

use edge_relay::cli::local_client;
use edge_relay::config::Secret;
use http_body_util::{BodyExt, Full};
use hyper::{Method, Request};
use hyper_util::rt::TokioIo;
use support::process::*;
use support::*;

/// POSTs `body` to `/v1/events` with exactly `headers`; returns status and body text.
async fn post_with(
    addr: std::net::SocketAddr,
    headers: &[(&str, &str)],
    body: &str,
) -> (u16, String) {
    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    let mut req = Request::builder()
        .method(Method::POST)
        .uri("/v1/events")
        .header("host", addr.to_string());
    for (name, value) in headers {
        req = req.header(*name, *value);
    }
    let req = req
        .body(Full::new(bytes::Bytes::from(body.to_owned())))
        .unwrap();
    let resp = sender.send_request(req).await.unwrap();
    let status = resp.status().as_u16();
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8_lossy(&bytes).into_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_json_content_types_are_taken() {
    let tmp = tempfile::tempdir().unwrap();
    let relay = start_relay(relay_config(tmp.path(), "http://127.0.0.1:9/mcp")).await;
    let event = r#"{"source":"a","data":1}"#;
    // What a web page can send cross-site without a preflight, and no type at all.
    for refused in [
        &[("content-type", "text/plain")][..],
        &[("content-type", "application/x-www-form-urlencoded")],
        &[("content-type", "multipart/form-data; boundary=x")],
        &[],
    ] {
        let (code, body) = post_with(relay.ingest_addr, refused, event).await;
        assert_eq!(code, 415, "{refused:?}: {body}");
        assert!(body.contains("application/x-ndjson"), "{body}");
    }
    assert_eq!(relay.outbox.stats().next_seq, 1, "nothing stored");
    let json = [("content-type", "application/json; charset=utf-8")];
    assert_eq!(post_with(relay.ingest_addr, &json, event).await.0, 200);
    let ndjson = [("content-type", "application/x-ndjson")];
    let lines = format!("{event}\n{event}\n");
    let (code, body) = post_with(relay.ingest_addr, &ndjson, &lines).await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(relay.outbox.stats().next_seq, 4);
    relay.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_file_makes_posts_need_the_bearer_token() {
    let tmp = tempfile::tempdir().unwrap();
    let token_path = tmp.path().join("ingest-token");
    std::fs::write(&token_path, "s3cret-ingest\n").unwrap();
    let mut config = relay_config(&tmp.path().join("relay"), "http://127.0.0.1:9/mcp");
    config.ingest.http.token_file = Some(token_path.clone());
    let relay = start_relay(config).await;
    let event = r#"{"source":"a","data":1}"#;
    let json = ("content-type", "application/json");
    for auth in [None, Some("Bearer wrong"), Some("Bearer s3cret-ingest-no")] {
        let headers: Vec<_> = [json]
            .into_iter()
            .chain(auth.map(|a| ("authorization", a)))
            .collect();
        let (code, body) = post_with(relay.ingest_addr, &headers, event).await;
        assert_eq!(code, 401, "{auth:?}: {body}");
        assert!(!body.contains("s3cret"), "{body}");
    }
    assert_eq!(relay.outbox.stats().next_seq, 1, "nothing stored");
    let token = Secret::from_file(&token_path).unwrap();
    let (code, body) = local_client::request_with_token(
        relay.ingest_addr,
        Method::POST,
        "/v1/events",
        event.into(),
        Some(&token),
    )
    .await
    .unwrap();
    assert_eq!(code, 200, "{body}");
    // Reading endpoints stay open (the CLI's `status` needs no token).
    let get = local_client::request(relay.ingest_addr, Method::GET, "/healthz", vec![]);
    assert_eq!(get.await.unwrap().0, 200);
    relay.stop().await;
}

/// Starts the binary with ingest on `listen` and returns its log up to the relay's first
/// connect retry (which comes after the ingest is set up).
async fn startup_log(listen: &str) -> String {
    let tmp = tempfile::tempdir().unwrap();
    let dead = free_port();
    let upstream = format!("url = \"http://{dead}/mcp\"");
    let config = write_config(tmp.path(), "gw", listen.parse().unwrap(), &upstream);
    let mut cmd = child_command(binary(), "info");
    cmd.args(["run", "--config"])
        .arg(&config)
        .stderr(Stdio::piped());
    for var in ["NOTIFY_SOCKET", "JOURNAL_STREAM", "STATE_DIRECTORY"] {
        cmd.env_remove(var);
    }
    let mut child = cmd.spawn().unwrap();
    let stderr = child.stderr.take().unwrap();
    let log = tokio::task::spawn_blocking(move || {
        let mut log = String::new();
        for line in BufReader::new(stderr).lines() {
            let line = line.unwrap();
            log.push_str(&line);
            log.push('\n');
            if line.contains("retry in") {
                break;
            }
        }
        log
    });
    let log = tokio::time::timeout(WAIT, log)
        .await
        .expect("a retry line")
        .unwrap();
    kill_9(&mut child);
    log
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listening_beyond_loopback_without_a_token_warns_at_start() {
    let port = free_port().port();
    let log = startup_log(&format!("0.0.0.0:{port}")).await;
    assert!(log.contains("beyond loopback"), "{log}");
    let log = startup_log(&free_port().to_string()).await;
    assert!(
        log.contains("retry in") && !log.contains("beyond loopback"),
        "{log}"
    );
}
