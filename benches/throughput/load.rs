//! The load generator: the Daphnet recording as NDJSON lines, producers posting them.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use edge_relay::demo::daphnet;
use http_body_util::{BodyExt, Full};
use hyper::Request;
use hyper_util::rt::TokioIo;
use serde_json::Value;

use super::*;

/// Real events: one cycle of the Daphnet recording, one JSON object per line (~200 bytes once
/// stored with id/seq/time), kept as one buffer. Bodies cycle through it.
pub(crate) struct Lines {
    pub(crate) text: String,
    /// Start of each line in `text`, plus its end.
    pub(crate) starts: Vec<usize>,
}

impl Lines {
    /// Parses the recording on a scratch thread: its parsed JSON (~35 MiB) lives and dies in
    /// that thread's malloc arena, which glibc hands back, instead of fragmenting the heap
    /// that the relay's peak RSS is measured on. The kept buffers are large enough to be mmaps.
    pub(crate) fn load() -> Self {
        std::thread::spawn(|| {
            let samples = daphnet::samples().expect("embedded recording");
            let lines: Vec<String> = samples
                .iter()
                .flat_map(|s| s.events.iter())
                .map(Value::to_string)
                .collect();
            let mut text = String::with_capacity(lines.iter().map(String::len).sum());
            let mut starts = Vec::with_capacity(lines.len() + 1);
            for line in &lines {
                starts.push(text.len());
                text.push_str(line);
            }
            starts.push(text.len());
            Self { text, starts }
        })
        .join()
        .expect("parsing the recording")
    }

    pub(crate) fn count(&self) -> usize {
        self.starts.len() - 1
    }

    /// Line `i` of the endless cycle.
    pub(crate) fn line(&self, i: usize) -> &str {
        let j = i % self.count();
        &self.text[self.starts[j]..self.starts[j + 1]]
    }

    /// NDJSON body of events `from..to` of the endless cycle.
    pub(crate) fn body(&self, from: usize, to: usize) -> Bytes {
        let mut body = String::with_capacity((to - from) * 128);
        for i in from..to {
            if i > from {
                body.push('\n');
            }
            body.push_str(self.line(i));
        }
        Bytes::from(body)
    }
}

/// One producer: a keep-alive connection posting bodies `first, first + step, ...` of `n`
/// events cut into bodies of `per_body`; returns events accepted.
pub(crate) async fn producer(
    addr: SocketAddr,
    lines: Arc<Lines>,
    n: usize,
    per_body: usize,
    first: usize,
    step: usize,
) -> u64 {
    let stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .expect("handshake");
    tokio::spawn(conn);
    let mut accepted = 0;
    for body_no in (first..n.div_ceil(per_body)).step_by(step) {
        let from = body_no * per_body;
        let to = (from + per_body).min(n);
        let req = Request::post("/v1/events")
            .header("host", addr.to_string())
            .header("content-type", "application/x-ndjson")
            .body(Full::new(lines.body(from, to)))
            .expect("request");
        let resp = sender.send_request(req).await.expect("send");
        let status = resp.status();
        let answer = resp.into_body().collect().await.expect("body").to_bytes();
        assert!(
            status.is_success(),
            "{status}: {}",
            String::from_utf8_lossy(&answer)
        );
        accepted += (to - from) as u64;
    }
    accepted
}

/// One measured ingest phase.
#[derive(Clone, Copy)]
pub(crate) struct Ingested {
    pub(crate) events: u64,
    pub(crate) took: Duration,
    /// Bytes the process wrote meanwhile (`write_bytes`).
    pub(crate) written: u64,
}

impl Ingested {
    pub(crate) fn rate(&self) -> f64 {
        self.events as f64 / self.took.as_secs_f64()
    }
}

/// Posts `n` events as bodies of `per_body` NDJSON lines over `producers` connections.
pub(crate) async fn ingest(
    addr: SocketAddr,
    lines: &Arc<Lines>,
    n: usize,
    per_body: usize,
    producers: usize,
) -> Ingested {
    let written = write_bytes("self");
    let start = Instant::now();
    let tasks: Vec<_> = (0..producers)
        .map(|p| tokio::spawn(producer(addr, lines.clone(), n, per_body, p, producers)))
        .collect();
    let mut events = 0;
    for t in tasks {
        events += t.await.expect("producer");
    }
    Ingested {
        events,
        took: start.elapsed(),
        written: write_bytes("self") - written,
    }
}
