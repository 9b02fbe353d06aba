//! One HTTP/1.1 accept loop for every server of the crate (local ingest, reference upstream).

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use hyper::body::{Body, Incoming};
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Longest a client may take to send request headers before its connection is closed.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);

/// The `bind` side of the network seam: what [`serve`] accepts connections from.
///
/// Production uses tokio's [`TcpListener`]; the partition suite implements it for turmoil's
/// simulated listener. Static dispatch, so the daemon pays nothing for the seam.
pub trait Listener: Send + 'static {
    /// An accepted connection.
    type Io: AsyncRead + AsyncWrite + Unpin + Send + 'static;
    /// Waits for the next connection; returns it with the peer's address.
    fn accept(&mut self) -> impl Future<Output = io::Result<(Self::Io, SocketAddr)>> + Send;
    /// The bound address (for logs, and to learn the port after binding port 0).
    fn local_addr(&self) -> io::Result<SocketAddr>;
}

impl Listener for TcpListener {
    type Io = tokio::net::TcpStream;

    async fn accept(&mut self) -> io::Result<(Self::Io, SocketAddr)> {
        let (stream, peer) = TcpListener::accept(self).await?;
        // Small JSON-RPC answers must not wait for Nagle.
        let _ = stream.set_nodelay(true);
        Ok((stream, peer))
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        TcpListener::local_addr(self)
    }
}

/// Serves `service` on every connection accepted from `listener` until `shutdown`.
///
/// At most `max_connections` are open at once: at the cap the loop stops accepting until one
/// closes, so further clients wait in the kernel's listen backlog and hold no descriptor here.
/// On shutdown the listener is closed at once; open connections get `drain` to finish the
/// request in flight (hyper graceful shutdown) and are then dropped. `Duration::ZERO` drops
/// them immediately, which is how the reference upstream simulates an abrupt stop. Returns
/// only when every connection task has ended. An error on one connection is logged and never
/// stops the loop; an accept error (e.g. EMFILE) is logged and retried after a short pause.
pub async fn serve<L, S, B>(
    mut listener: L,
    service: S,
    shutdown: CancellationToken,
    drain: Duration,
    max_connections: usize,
    name: &'static str,
) where
    L: Listener,
    S: hyper::service::Service<Request<Incoming>, Response = Response<B>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let tracker = TaskTracker::new();
    let conns = CancellationToken::new();
    let kill = CancellationToken::new();
    let slots = std::sync::Arc::new(tokio::sync::Semaphore::new(max_connections.max(1)));
    loop {
        let slot = tokio::select! {
            () = shutdown.cancelled() => break,
            slot = slots.clone().acquire_owned() => slot.expect("never closed"),
        };
        let (stream, peer) = tokio::select! {
            () = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(e) => {
                    log::warn!(error:% = e; "{name}: accept failed; retry in 100ms");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let service = service.clone();
        let stop = conns.clone();
        let kill = kill.clone();
        tracker.spawn(async move {
            let _slot = slot;
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(HEADER_READ_TIMEOUT)
                .serve_connection(TokioIo::new(stream), service);
            let mut conn = std::pin::pin!(conn);
            let result = tokio::select! {
                r = conn.as_mut() => r,
                () = stop.cancelled() => {
                    conn.as_mut().graceful_shutdown();
                    tokio::select! {
                        r = conn.as_mut() => r,
                        () = kill.cancelled() => return,
                    }
                }
            };
            if let Err(e) = result {
                log::debug!(peer:% = peer, error:% = e; "{name}: connection ended with an error");
            }
        });
    }
    drop(listener);
    tracker.close();
    conns.cancel();
    if tokio::time::timeout(drain, tracker.wait()).await.is_err() && !drain.is_zero() {
        log::warn!("{name}: connections still open after {drain:?}; closing them");
    }
    kill.cancel();
    tracker.wait().await;
}
