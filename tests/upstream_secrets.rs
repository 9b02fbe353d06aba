//! Secrets stay out of status and logs: userinfo in `upstream.url` is masked, an upstream that
//! echoes the bearer token in an error body has it scrubbed and the body cut, and its
//! `Retry-After` is kept with the error.

use edge_relay_testkit as support;

use std::convert::Infallible;

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Request, Response, body::Incoming};
use support::process::poll_until;
use support::*;

/// An upstream that answers every request 503 with `Retry-After: 7` and a body echoing the
/// request's `Authorization` header amid 10 KB of padding.
async fn echoing_upstream() -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            let service = hyper::service::service_fn(|req: Request<Incoming>| async move {
                let auth = req
                    .headers()
                    .get("authorization")
                    .map(|v| v.to_str().unwrap().to_owned());
                let body = format!("bad gateway; you sent: {auth:?} {}", "x".repeat(10_000));
                let resp = Response::builder()
                    .status(503)
                    .header("retry-after", "7")
                    .body(Full::new(Bytes::from(body)))
                    .unwrap();
                Ok::<_, Infallible>(resp)
            });
            let io = hyper_util::rt::TokioIo::new(stream);
            tokio::spawn(hyper::server::conn::http1::Builder::new().serve_connection(io, service));
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_secrets_never_reach_status_or_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let upstream = echoing_upstream().await;
    let token = tmp.path().join("token");
    std::fs::write(&token, "s3cret-upstream-token\n").unwrap();
    let url = format!("http://relay:hunter2@{upstream}/mcp");
    let mut config = relay_config(&tmp.path().join("relay"), &url);
    config.upstream.token_file = Some(token);
    let tls = edge_relay::uplink::upstream_tls(&config);
    let connector = edge_relay::uplink::build_connector(&config, tls, None).unwrap();
    assert_eq!(connector.describe(), format!("http://***@{upstream}/mcp"));
    let relay = start_relay(config).await;
    let error = poll_until(
        WAIT,
        "a last_error from the upstream",
        || async { report(&relay).last_error },
        |e: &String| e.contains("503"),
    )
    .await;
    assert!(!error.contains("s3cret-upstream-token"), "{error}");
    assert!(
        error.contains("Bearer ***"),
        "the echo is shown, scrubbed: {error}"
    );
    assert!(!error.contains("hunter2"), "{error}");
    assert!(error.len() < 1_500, "{} bytes: {error}", error.len());
    assert!(error.contains("retry after 7s"), "{error}");
    relay.stop().await;
}
