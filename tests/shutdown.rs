//! Graceful stop with an `edge_ingest` call that never gets its answer: the relay abandons it
//! after `SHUTDOWN_GRACE` (well before a long `request_timeout_ms`), so the stop fits the
//! unit's `TimeoutStopSec`, and the batch is delivered after a restart. The grace passes on
//! tokio's paused clock instead of being waited out.

use edge_relay_testkit as support;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use edge_relay::relay::SHUTDOWN_GRACE;
use edge_relay::uplink::CLOSE_TIMEOUT;
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;

/// Forwards connections to `upstream` until a client sends `needle`; that request is never
/// forwarded and its connection stays open, unanswered. The `Notify` fires when it happens.
async fn stalling_proxy(upstream: SocketAddr, needle: &'static [u8]) -> (SocketAddr, Arc<Notify>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let stalled = Arc::new(Notify::new());
    let signal = stalled.clone();
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            let signal = signal.clone();
            tokio::spawn(async move {
                let server = TcpStream::connect(upstream).await.unwrap();
                let (mut client_rx, mut client_tx) = client.into_split();
                let (mut server_rx, mut server_tx) = server.into_split();
                tokio::spawn(async move {
                    let _ = tokio::io::copy(&mut server_rx, &mut client_tx).await;
                });
                let mut buf = vec![0u8; 64 * 1024];
                loop {
                    let n = match client_rx.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => n,
                    };
                    if buf[..n].windows(needle.len()).any(|w| w == needle) {
                        // Hold both sides open; the request is never seen upstream.
                        signal.notify_one();
                        std::future::pending::<()>().await;
                    }
                    if server_tx.write_all(&buf[..n]).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    (addr, stalled)
}

// Current-thread: the only runtime whose clock can be paused.
#[tokio::test]
async fn stop_abandons_an_unanswered_batch_after_the_grace_and_a_restart_delivers_it() {
    let tmp = tempfile::tempdir().unwrap();
    let sink = Sink::start(&tmp.path().join("sink")).await;
    let (proxy, stalled) = stalling_proxy(sink.addr(), b"edge_ingest").await;
    let mut config = relay_config(&tmp.path().join("relay"), &format!("http://{proxy}/mcp"));
    config.relay.request_timeout_ms = 120_000;
    let relay = start_relay(config).await;
    let (code, answer) = post(relay.ingest_addr, event("stalled", 1).to_string()).await;
    assert_eq!(code, 200, "{answer}");
    // The relay's edge_ingest call is in flight and will not be answered.
    tokio::time::timeout(WAIT, stalled.notified())
        .await
        .expect("edge_ingest never sent");
    let stream = relay.outbox.stats().stream;

    // Paused, the clock jumps from timer to timer while every task waits: the hung call holds
    // the stop up for the whole grace without the test waiting it out. The clock runs again
    // just before the grace ends, so the rest of the stop (session close) meets real time.
    tokio::time::pause();
    let mut stop = std::pin::pin!(relay.stop());
    tokio::select! {
        () = &mut stop => panic!("stopped before the grace"),
        () = tokio::time::sleep(SHUTDOWN_GRACE - Duration::from_millis(1)) => {}
    }
    tokio::time::resume();
    let started = Instant::now();
    tokio::time::timeout(CLOSE_TIMEOUT + Duration::from_secs(5), stop)
        .await
        .expect("the stop did not end soon after the grace");
    eprintln!(
        "stop with a hung edge_ingest: the grace, then {:?}",
        started.elapsed()
    );
    assert!(sink.events("test-gw", stream).is_empty());

    // Next life, straight to the upstream: the abandoned batch is delivered.
    let relay = start_relay(relay_config(&tmp.path().join("relay"), &sink.url())).await;
    drained(&relay).await;
    assert_eq!(sink.events("test-gw", stream).len(), 1);
    relay.stop().await;
}
