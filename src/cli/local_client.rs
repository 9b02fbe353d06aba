//! A minimal HTTP/1.1 client for the CLI to talk to a running daemon's local ingest.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Method, Request};
use hyper_util::rt::TokioIo;

use crate::config::Secret;

/// Timeout of one CLI request to the local daemon (connect + answer).
pub const LOCAL_REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// Sends one request to `addr` and returns the status code and body text.
///
/// # Errors
/// Connection refused (daemon not running), timeout, or a malformed answer.
pub async fn request(
    addr: SocketAddr,
    method: Method,
    path: &str,
    body: Vec<u8>,
) -> anyhow::Result<(u16, String)> {
    request_with_token(addr, method, path, body, None).await
}

/// [`request`] with `Authorization: Bearer <token>` when a token is given
/// (`ingest.http.token_file`).
///
/// # Errors
/// As [`request`].
pub async fn request_with_token(
    addr: SocketAddr,
    method: Method,
    path: &str,
    body: Vec<u8>,
    token: Option<&Secret>,
) -> anyhow::Result<(u16, String)> {
    let exchange = async {
        let stream = tokio::net::TcpStream::connect(addr)
            .await
            .with_context(|| {
                format!("connecting to the daemon at {addr} (is `edge-relay run` running?)")
            })?;
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
        tokio::spawn(conn);
        let mut req = Request::builder()
            .method(method)
            .uri(path)
            .header(hyper::header::HOST, addr.to_string())
            .header(hyper::header::CONTENT_TYPE, "application/json");
        if let Some(token) = token {
            let value = format!("Bearer {}", token.expose());
            req = req.header(hyper::header::AUTHORIZATION, value);
        }
        let req = req.body(Full::new(Bytes::from(body)))?;
        let resp = sender.send_request(req).await?;
        let status = resp.status().as_u16();
        let bytes = resp.into_body().collect().await?.to_bytes();
        Ok::<_, anyhow::Error>((status, String::from_utf8_lossy(&bytes).into_owned()))
    };
    tokio::time::timeout(LOCAL_REQUEST_TIMEOUT, exchange)
        .await
        .with_context(|| format!("no answer from {addr} within {LOCAL_REQUEST_TIMEOUT:?}"))?
}
