//! The fault proxy's modes, each against a loopback echo server.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::support::WAIT;
use crate::support::fault_proxy::{FaultProxy, Mode};

/// An echo server; a line `send N` is answered with N bytes `x` instead of its echo.
async fn echo_server() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = vec![0u8; 64 * 1024];
                while let Ok(n) = s.read(&mut buf).await {
                    if n == 0 {
                        return;
                    }
                    let text = String::from_utf8_lossy(&buf[..n]).to_string();
                    let answer = match text.strip_prefix("send ") {
                        Some(count) => vec![b'x'; count.trim().parse().unwrap()],
                        None => buf[..n].to_vec(),
                    };
                    if s.write_all(&answer).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    addr
}

/// Writes `out` and reads until `expect` bytes came, EOF or error; returns what was read.
async fn exchange(s: &mut TcpStream, out: &[u8], expect: usize) -> std::io::Result<Vec<u8>> {
    s.write_all(out).await?;
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while got.len() < expect {
        let n = tokio::time::timeout(WAIT, s.read(&mut buf))
            .await
            .expect("proxy answered within WAIT")?;
        if n == 0 {
            break;
        }
        got.extend_from_slice(&buf[..n]);
    }
    Ok(got)
}

/// A proxy in front of an echo server, and a connection through it that echoed (opened before
/// any fault).
async fn proxy_with_open_connection() -> (FaultProxy, TcpStream) {
    let proxy = FaultProxy::start(echo_server().await).await;
    let mut open = TcpStream::connect(proxy.addr).await.unwrap();
    assert_eq!(exchange(&mut open, b"a", 1).await.unwrap(), b"a");
    (proxy, open)
}

#[tokio::test]
async fn pass_delay_and_throttle_forward_every_byte() {
    let proxy = FaultProxy::start(echo_server().await).await;
    let mut s = TcpStream::connect(proxy.addr).await.unwrap();
    assert_eq!(exchange(&mut s, b"hello", 5).await.unwrap(), b"hello");
    assert_eq!(proxy.faults(), 0);

    proxy.set(Mode::Delay(Duration::from_millis(100)));
    let started = Instant::now();
    assert_eq!(exchange(&mut s, b"later", 5).await.unwrap(), b"later");
    assert!(
        started.elapsed() >= Duration::from_millis(200),
        "delayed both ways"
    );

    proxy.set(Mode::Throttle(20_000));
    let started = Instant::now();
    let got = exchange(&mut s, b"send 8000", 8000).await.unwrap();
    assert_eq!(got.len(), 8000);
    assert!(
        started.elapsed() >= Duration::from_millis(300),
        "8 KB at 20 KB/s"
    );
    assert!(proxy.faults() >= 2, "delay and throttle counted");
}

#[tokio::test]
async fn refuse_closes_new_connections_and_keeps_open_ones() {
    let (proxy, mut open) = proxy_with_open_connection().await;
    proxy.set(Mode::Refuse);
    let mut refused = TcpStream::connect(proxy.addr).await.unwrap();
    let got = exchange(&mut refused, b"b", 1).await.unwrap_or_default();
    assert!(got.is_empty(), "refused connection answered {got:?}");
    assert_eq!(exchange(&mut open, b"c", 1).await.unwrap(), b"c");
    assert_eq!(proxy.faults(), 1);
}

#[tokio::test]
async fn reset_resets_open_and_new_connections() {
    let (proxy, mut open) = proxy_with_open_connection().await;
    proxy.set(Mode::Reset);
    let mut buf = [0u8; 16];
    let err = tokio::time::timeout(WAIT, open.read(&mut buf))
        .await
        .unwrap()
        .expect_err("the open connection is reset");
    assert_eq!(err.kind(), std::io::ErrorKind::ConnectionReset);
    let mut new = TcpStream::connect(proxy.addr).await.unwrap();
    let r = exchange(&mut new, b"b", 1).await;
    assert!(
        r.as_ref().map_or(true, |got| got.is_empty()),
        "new connection answered {r:?}"
    );
    assert_eq!(proxy.faults(), 2);
}

#[tokio::test]
async fn blackhole_swallows_bytes_without_closing_even_after_a_heal() {
    let (proxy, mut open) = proxy_with_open_connection().await;
    proxy.set(Mode::Blackhole);
    let mut new = TcpStream::connect(proxy.addr).await.unwrap();
    // Both connections turned half-open before the heal.
    let deadline = Instant::now() + WAIT;
    while proxy.faults() < 2 {
        assert!(Instant::now() < deadline, "blackhole not applied");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    proxy.set(Mode::Pass);
    for s in [&mut open, &mut new] {
        s.write_all(b"lost").await.unwrap();
        let mut buf = [0u8; 16];
        let read = tokio::time::timeout(Duration::from_millis(300), s.read(&mut buf)).await;
        assert!(
            read.is_err(),
            "half-open: no answer and no close, got {read:?}"
        );
    }
    let mut healed = TcpStream::connect(proxy.addr).await.unwrap();
    assert_eq!(exchange(&mut healed, b"ok", 2).await.unwrap(), b"ok");
    assert_eq!(proxy.faults(), 2);
}

#[tokio::test]
async fn cut_after_kills_an_answer_midway_and_arm_cuts_one_answer() {
    let proxy = FaultProxy::start(echo_server().await).await;
    proxy.set(Mode::CutAfter(100));
    let mut s = TcpStream::connect(proxy.addr).await.unwrap();
    let got = exchange(&mut s, b"send 1000", 1000)
        .await
        .unwrap_or_default();
    assert_eq!(got.len(), 100, "only the first 100 bytes of the answer");
    assert_eq!(proxy.faults(), 1);

    proxy.set(Mode::Pass);
    proxy.arm();
    let mut s = TcpStream::connect(proxy.addr).await.unwrap();
    assert_eq!(exchange(&mut s, b"no ack", 6).await.unwrap(), b"no ack");
    let got = exchange(&mut s, b"{\"acked_seq\":1}", 15).await;
    assert!(got.map_or(true, |g| g.is_empty()), "the answer was cut");
    assert_eq!(proxy.cuts(), 1);
    let mut s = TcpStream::connect(proxy.addr).await.unwrap();
    assert_eq!(
        exchange(&mut s, b"acked_seq", 9).await.unwrap(),
        b"acked_seq"
    );
}
