//! A TCP fault proxy between the relay and its peer, with fault modes switchable at runtime.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// Longest wait for the proxy's own connect to the peer; a peer that is down refuses faster.
const PEER_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Largest chunk forwarded at once, bytes.
const CHUNK: usize = 64 * 1024;
/// Slices per second a throttled chunk is written in.
const THROTTLE_SLICES_PER_SEC: u64 = 20;
/// What the armed one-shot cut looks for: an upstream answer carrying an ack.
const ANSWER_MARKER: &[u8] = b"acked_seq";

/// How the proxy treats traffic; [`FaultProxy::set`] switches it for new and open connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Forward both ways unchanged.
    Pass,
    /// New connections are closed at once (FIN) without reaching the peer; open ones pass.
    Refuse,
    /// Open and new connections are reset (SO_LINGER 0, then closed: the peer sees RST).
    Reset,
    /// Open and new connections turn half-open: bytes both ways are read and dropped, nothing is
    /// closed, and they stay that way after a heal until an endpoint gives up (its timeout).
    Blackhole,
    /// Every chunk waits this long before it is forwarded (both ways).
    Delay(Duration),
    /// Forwarding is paced to about this many bytes per second (both ways, per connection).
    Throttle(u64),
    /// Each connection forwards at most this many bytes from the peer (a response killed midway),
    /// then is closed.
    CutAfter(usize),
}

/// Counters shared by the accept loop and the connection tasks.
#[derive(Default)]
struct Counters {
    faults: AtomicU64,
    cuts: AtomicU64,
    armed: AtomicBool,
}

/// A proxy listening on loopback that forwards to `peer` (reference upstream or broker).
/// Dropping it stops accepting; open connections end when their endpoints close.
pub struct FaultProxy {
    /// Address the relay connects to instead of the peer.
    pub addr: SocketAddr,
    mode: watch::Sender<Mode>,
    counters: Arc<Counters>,
    accept: tokio::task::JoinHandle<()>,
}

impl FaultProxy {
    /// Starts a proxy to `peer` on a free loopback port, in [`Mode::Pass`].
    pub async fn start(peer: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (mode, modes) = watch::channel(Mode::Pass);
        let counters = Arc::new(Counters::default());
        let shared = counters.clone();
        let accept = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                tokio::spawn(connection(client, peer, modes.clone(), shared.clone()));
            }
        });
        Self {
            addr,
            mode,
            counters,
            accept,
        }
    }

    /// Switches the mode for new connections and, where the mode says so, for open ones.
    pub fn set(&self, mode: Mode) {
        self.mode.send_replace(mode);
    }

    /// The current mode.
    pub fn mode(&self) -> Mode {
        *self.mode.borrow()
    }

    /// Faults applied so far: connections refused, reset, blackholed, cut, delayed or throttled
    /// (each connection counts once per mode that hit it), plus armed cuts.
    pub fn faults(&self) -> u64 {
        self.counters.faults.load(Ordering::SeqCst)
    }

    /// One-shot, whatever the mode: the next chunk from the peer that carries an answer
    /// (`acked_seq`) is swallowed and its connection dropped, so the upstream has stored the
    /// batch (it answers after its fsync) but the relay never sees the answer. Arm it while the
    /// relay is idle, so that the answer cut is an `edge_ingest` one.
    pub fn arm(&self) {
        self.counters.armed.store(true, Ordering::SeqCst);
    }

    /// Answers cut by [`FaultProxy::arm`] so far.
    pub fn cuts(&self) -> u64 {
        self.counters.cuts.load(Ordering::SeqCst)
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

/// How a forwarding direction ended.
enum End {
    /// An endpoint closed or failed: close both.
    Closed,
    /// Reset both endpoints.
    Reset,
    /// Turn the connection half-open.
    Blackhole,
}

/// Which way a chunk flows: only answers from the peer are cut.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Way {
    ToPeer,
    FromPeer,
}

async fn connection(
    client: TcpStream,
    peer: SocketAddr,
    modes: watch::Receiver<Mode>,
    counters: Arc<Counters>,
) {
    let fault = || counters.faults.fetch_add(1, Ordering::SeqCst);
    match *modes.borrow() {
        Mode::Refuse => {
            fault();
            return;
        }
        Mode::Reset => {
            fault();
            let _ = client.set_zero_linger();
            return;
        }
        _ => {}
    }
    let (mut cr, mut cw) = client.into_split();
    if *modes.borrow() == Mode::Blackhole {
        fault();
        return half_open(&mut cr, None).await;
    }
    let server = match tokio::time::timeout(PEER_CONNECT_TIMEOUT, TcpStream::connect(peer)).await {
        Ok(Ok(s)) => s,
        // Peer down: the relay sees its connection closed, as it would see a refusal.
        _ => return,
    };
    let (mut sr, mut sw) = server.into_split();
    let end = {
        let up = forward(&mut cr, &mut sw, Way::ToPeer, modes.clone(), &counters);
        let down = forward(&mut sr, &mut cw, Way::FromPeer, modes.clone(), &counters);
        tokio::select! {
            e = up => e,
            e = down => e,
        }
    };
    match end {
        End::Closed => {}
        End::Reset => {
            fault();
            // Whole streams: dropping a write half alone would send a FIN before the RST.
            for (r, w) in [(cr, cw), (sr, sw)] {
                if let Ok(stream) = r.reunite(w) {
                    let _ = stream.set_zero_linger();
                }
            }
        }
        End::Blackhole => {
            fault();
            half_open(&mut cr, Some(&mut sr)).await;
        }
    }
}

/// Reads and drops bytes from both endpoints until one of them closes.
async fn half_open(client: &mut OwnedReadHalf, server: Option<&mut OwnedReadHalf>) {
    match server {
        Some(server) => {
            tokio::select! {
                () = swallow(client) => {}
                () = swallow(server) => {}
            }
        }
        None => swallow(client).await,
    }
}

/// Reads and drops bytes until EOF or an error.
async fn swallow(r: &mut OwnedReadHalf) {
    let mut buf = vec![0u8; CHUNK];
    while matches!(r.read(&mut buf).await, Ok(n) if n > 0) {}
}

/// Forwards one way, applying the mode in force to each chunk.
async fn forward(
    from: &mut OwnedReadHalf,
    to: &mut OwnedWriteHalf,
    way: Way,
    mut modes: watch::Receiver<Mode>,
    counters: &Counters,
) -> End {
    let mut buf = vec![0u8; CHUNK];
    // Bytes still allowed from the peer under CutAfter, and modes that already counted a fault.
    let mut budget: Option<usize> = None;
    let mut counted: Option<Mode> = None;
    loop {
        let n = tokio::select! {
            r = from.read(&mut buf) => match r {
                Ok(0) | Err(_) => return End::Closed,
                Ok(n) => n,
            },
            changed = modes.changed() => {
                if changed.is_err() {
                    return End::Closed;
                }
                match *modes.borrow_and_update() {
                    Mode::Reset => return End::Reset,
                    Mode::Blackhole => return End::Blackhole,
                    _ => continue,
                }
            }
        };
        let mode = *modes.borrow();
        let mut chunk = &buf[..n];
        let mut count_once = |m: Mode| {
            if counted != Some(m) {
                counted = Some(m);
                counters.faults.fetch_add(1, Ordering::SeqCst);
            }
        };
        match mode {
            Mode::Reset => return End::Reset,
            Mode::Blackhole => return End::Blackhole,
            Mode::Delay(d) => {
                count_once(mode);
                tokio::time::sleep(d).await;
            }
            Mode::CutAfter(limit) if way == Way::FromPeer => {
                let left = budget.get_or_insert(limit);
                if chunk.len() >= *left {
                    chunk = &chunk[..*left];
                    let _ = to.write_all(chunk).await;
                    counters.faults.fetch_add(1, Ordering::SeqCst);
                    return End::Closed;
                }
                *left -= chunk.len();
            }
            _ => budget = None,
        }
        if way == Way::FromPeer
            && chunk
                .windows(ANSWER_MARKER.len())
                .any(|w| w == ANSWER_MARKER)
            && counters.armed.swap(false, Ordering::SeqCst)
        {
            counters.cuts.fetch_add(1, Ordering::SeqCst);
            counters.faults.fetch_add(1, Ordering::SeqCst);
            return End::Closed;
        }
        let written = match mode {
            Mode::Throttle(bytes_per_sec) => {
                count_once(mode);
                throttled(to, chunk, bytes_per_sec.max(1)).await
            }
            _ => to.write_all(chunk).await.is_ok(),
        };
        if !written {
            return End::Closed;
        }
    }
}

/// Writes `chunk` in slices paced to `bytes_per_sec`; false when the endpoint is gone.
async fn throttled(to: &mut OwnedWriteHalf, chunk: &[u8], bytes_per_sec: u64) -> bool {
    let slice = (bytes_per_sec / THROTTLE_SLICES_PER_SEC).max(1) as usize;
    for part in chunk.chunks(slice) {
        if to.write_all(part).await.is_err() {
            return false;
        }
        let pause = Duration::from_secs_f64(part.len() as f64 / bytes_per_sec as f64);
        tokio::time::sleep(pause).await;
    }
    true
}
