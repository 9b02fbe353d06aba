//! Local HTTP ingest under slow or greedy producers: slow bodies hold up nobody, an oversize
//! `Content-Length` is refused at once, open connections are capped (and the unit's
//! `LimitNOFILE` covers the cap).

use edge_relay_testkit as support;

use std::net::SocketAddr;
use std::time::Duration;

use edge_relay::config::Config;
use serde_json::Value;
use support::process;
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// How long a request that nothing holds up may take here (generous for a loaded CI box, far
/// below the 30 s body timeout a held-up one used to wait).
const PROMPT: Duration = Duration::from_secs(10);

fn config(tmp: &std::path::Path) -> Config {
    // No upstream is needed: events stay in the outbox.
    relay_config(tmp, "http://127.0.0.1:9/mcp")
}

/// Sends `head` (request line and headers, without the blank line) and `body` on a new connection.
async fn send_raw(addr: SocketAddr, head: &str, body: &[u8]) -> TcpStream {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let mut bytes = format!("{head}\r\nHost: test\r\n\r\n").into_bytes();
    bytes.extend_from_slice(body);
    stream.write_all(&bytes).await.unwrap();
    stream
}

/// Reads bytes until `text` has arrived; returns everything read.
async fn read_until(stream: &mut TcpStream, text: &str) -> String {
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    while !String::from_utf8_lossy(&seen).contains(text) {
        let n = stream.read(&mut buf).await.unwrap();
        assert!(
            n > 0,
            "closed before {text:?}: {}",
            String::from_utf8_lossy(&seen)
        );
        seen.extend_from_slice(&buf[..n]);
    }
    String::from_utf8_lossy(&seen).into_owned()
}

/// Reads one response with a `Content-Length`; returns its status and body.
async fn read_response(stream: &mut TcpStream) -> (u16, String) {
    let mut text = read_until(stream, "\r\n\r\n").await;
    let status = text[9..12].parse().unwrap();
    let head_end = text.find("\r\n\r\n").unwrap() + 4;
    let length: usize = text[..head_end]
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("content-length:")
                .map(|v| v.trim().parse().unwrap())
        })
        .unwrap_or(0);
    let mut buf = [0u8; 4096];
    while text.len() < head_end + length {
        let n = stream.read(&mut buf).await.unwrap();
        assert!(n > 0, "closed mid-body");
        text.push_str(&String::from_utf8_lossy(&buf[..n]));
    }
    (status, text[head_end..].to_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_bodies_do_not_hold_up_other_posts() {
    let tmp = tempfile::tempdir().unwrap();
    let relay = start_relay(config(tmp.path())).await;
    // As many slow producers as there were POST slots: each has its body being read (the
    // server sent 100 Continue) and then stalls with 90 of 100 bytes missing.
    let mut slow = Vec::new();
    for _ in 0..16 {
        let head = "POST /v1/events HTTP/1.1\r\nContent-Type: application/json\r\n\
                    Content-Length: 100\r\nExpect: 100-continue";
        let mut stream = send_raw(relay.ingest_addr, head, b"").await;
        read_until(&mut stream, "100 Continue").await;
        stream.write_all(b"{\"source\":").await.unwrap();
        slow.push(stream);
    }
    let answer = tokio::time::timeout(
        PROMPT,
        post(relay.ingest_addr, r#"{"source":"a","data":1}"#),
    );
    let (code, answer) = answer.await.expect("a post waited behind slow bodies");
    assert_eq!(code, 200, "{answer}");
    drop(slow);
    relay.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversize_content_length_gets_413_at_once() {
    let tmp = tempfile::tempdir().unwrap();
    let mut config = config(tmp.path());
    config.ingest.http.max_body_bytes = 64 * 1024;
    let relay = start_relay(config).await;
    let head =
        "POST /v1/events HTTP/1.1\r\nContent-Type: application/json\r\nContent-Length: 65537";
    let mut stream = send_raw(relay.ingest_addr, head, b"").await;
    let (code, body) = tokio::time::timeout(PROMPT, read_response(&mut stream))
        .await
        .expect("413 without waiting for the body");
    assert_eq!(code, 413, "{body}");
    let body: Value = serde_json::from_str(&body).unwrap();
    assert!(
        body["error"].as_str().unwrap().contains("max_body_bytes"),
        "{body}"
    );
    assert_eq!(relay.outbox.stats().next_seq, 1, "nothing stored");
    relay.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_beyond_the_cap_wait_until_one_closes() {
    let tmp = tempfile::tempdir().unwrap();
    let mut config = config(tmp.path());
    config.ingest.http.max_connections = 4;
    let relay = start_relay(config).await;
    // Four kept-alive connections, each proven open by an answered request.
    let mut open = Vec::new();
    for _ in 0..4 {
        let mut stream = send_raw(relay.ingest_addr, "GET /healthz HTTP/1.1", b"").await;
        assert_eq!(read_response(&mut stream).await.0, 200);
        open.push(stream);
    }
    let mut fifth = send_raw(relay.ingest_addr, "GET /healthz HTTP/1.1", b"").await;
    // A bounded look for something that must not happen: at the cap nothing is served.
    let early = tokio::time::timeout(Duration::from_millis(500), read_response(&mut fifth)).await;
    assert!(early.is_err(), "a fifth connection was served: {early:?}");
    drop(open.pop());
    let (code, _) = tokio::time::timeout(WAIT, read_response(&mut fifth))
        .await
        .expect("served once a connection closed");
    assert_eq!(code, 200);
    relay.stop().await;
}

#[test]
fn the_unit_allows_a_descriptor_per_connection_and_a_reserve() {
    let unit = include_str!("../systemd/edge-relay.service");
    let limit: usize = unit
        .lines()
        .find_map(|l| l.strip_prefix("LimitNOFILE="))
        .expect("LimitNOFILE= in the unit")
        .parse()
        .unwrap();
    let default = Config::default().ingest.http.max_connections;
    assert!(
        limit >= default + edge_relay::ingest::http::FD_RESERVE as usize,
        "LimitNOFILE={limit} for max_connections = {default}"
    );
}

/// Peak resident set (`VmHWM`) of process `pid`, KiB.
fn peak_rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmHWM:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// A body of `events` events whose `data` is 30,000 one-digit numbers (60 KB): the costliest
/// shape to parse, each 2-byte value becoming a 32-byte `serde_json::Value`.
fn many_small_values(n: usize, events: usize) -> Vec<u8> {
    let data = vec!["7"; 30_000].join(",");
    (0..events)
        .map(|i| format!("{{\"source\":\"s{n}-{i}\",\"data\":[{data}]}}\n"))
        .collect::<String>()
        .into_bytes()
}

/// POSTs an NDJSON body with no deadline of its own (the caller bounds it).
async fn post_ndjson(addr: SocketAddr, body: Vec<u8>) -> (u16, String) {
    use http_body_util::{BodyExt, Full};
    let stream = TcpStream::connect(addr).await.unwrap();
    let io = hyper_util::rt::TokioIo::new(stream);
    let (mut sender, conn) = hyper::client::conn::http1::handshake(io).await.unwrap();
    tokio::spawn(conn);
    let req = hyper::Request::post("/v1/events")
        .header("host", addr.to_string())
        .header("content-type", "application/x-ndjson")
        .body(Full::new(bytes::Bytes::from(body)))
        .unwrap();
    let resp = sender.send_request(req).await.unwrap();
    let code = resp.status().as_u16();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    (code, String::from_utf8_lossy(&body).into_owned())
}

/// 16 concurrent 4 MiB bodies of many small values (the parse budget's worst case) are all
/// accepted: the budget queues their parsing, it does not refuse them. The daemon's peak RSS
/// is printed, not asserted (a measurement, not a test): debug build on a 2-core box, old code
/// (16 bodies parsed at once) grew by 459 MiB, this one by ~180 MiB. Shown with
/// `cargo test --test ingest_limits sixteen -- --nocapture`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sixteen_concurrent_4_mib_bodies_are_all_accepted() {
    let tmp = tempfile::tempdir().unwrap();
    let listen = process::free_port();
    let dead = process::free_port();
    let upstream = format!("url = \"http://{dead}/mcp\"");
    let config = process::write_config(tmp.path(), "gw", listen, &upstream);
    let quiet = [("RUST_LOG", std::ffi::OsStr::new("error"))];
    let mut daemon = process::spawn_daemon(&config, &quiet);
    process::wait_listening(listen, "edge-relay").await;
    let pid = daemon.id();
    let before = peak_rss_kib(pid);
    let posts: Vec<_> = (0..16)
        .map(|n| {
            let body = many_small_values(n, 68);
            assert!(
                body.len() <= 4 << 20 && body.len() > 4_000_000,
                "{}",
                body.len()
            );
            tokio::spawn(post_ndjson(listen, body))
        })
        .collect();
    // Parsing 16 x 2 million values takes ~30 s in a debug build on a busy box.
    let all = tokio::time::timeout(Duration::from_secs(300), futures::future::join_all(posts));
    for answer in all.await.expect("16 posts answered") {
        let (code, answer) = answer.unwrap();
        assert_eq!(code, 200, "{answer}");
    }
    let after = peak_rss_kib(pid);
    println!(
        "edge-relay peak RSS: {} MiB idle, {} MiB after 16 concurrent 4 MiB bodies",
        before / 1024,
        after / 1024
    );
    process::kill_9(&mut daemon);
}
