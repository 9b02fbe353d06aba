//! The power-cut family's processes and producers: the relay and the upstream as child
//! processes on their FUSE mounts, paced producers, and bounded waits.

use std::ffi::OsString;
use std::fmt::Debug;
use std::fs::File;
use std::future::Future;
use std::io::{Read, Seek, SeekFrom};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use edge_relay::cli::local_client;
use edge_relay::event::DEFAULT_MAX_EVENT_BYTES;
use hyper::Method;
use rand::RngExt;
use rand::rngs::StdRng;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::real_net::*;
use crate::support::accepted;
use crate::support::process::{POLL, binary};

use super::*;

/// Polls `probe` every [`POLL`] until `done` holds; the error names `what` and the last answer.
pub(super) async fn within<T: Debug, F, Fut>(
    bound: Duration,
    what: &str,
    probe: F,
    done: impl Fn(&T) -> bool,
) -> Result<T, String>
where
    F: Fn() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let started = Instant::now();
    loop {
        match probe().await {
            Some(v) if done(&v) => return Ok(v),
            last if started.elapsed() >= bound => {
                return Err(format!("{what}: not within {bound:?}; last: {last:?}"));
            }
            _ => tokio::time::sleep(POLL).await,
        }
    }
}

/// A producer posting batches of 1..=[`MAX_BATCH`] events of 100 B to `max_event_bytes`
/// (encoded `data`), each retried with the same ids until it gets a 200, or until `abandon`.
/// Returns every answer `(seq, id)`, retries included.
pub(super) fn producer(
    addr: SocketAddr,
    seed: u64,
    abandon: CancellationToken,
) -> Producer<(u64, Uuid)> {
    Producer::spawn(move |stopped, counted| async move {
        let mut rng: StdRng = rand::SeedableRng::seed_from_u64(seed);
        let mut answers = Vec::new();
        let mut n = 0u64;
        while !stopped.is_cancelled() {
            let size = rng.random_range(1..=MAX_BATCH);
            let body: Vec<Value> = (0..size)
                .map(|i| {
                    let bytes = event_size(&mut rng);
                    // A JSON string of bytes - 2 ASCII characters encodes to `bytes`.
                    let data = format!("{:010}", n + i) + &hex(&mut rng, bytes - 12);
                    json!({"id": Uuid::now_v7(), "source": "powercut", "kind": "sensor", "data": data})
                })
                .collect();
            n += size;
            let body = Value::Array(body).to_string().into_bytes();
            loop {
                match local_client::request(addr, Method::POST, "/v1/events", body.clone()).await {
                    Ok((200, text)) => {
                        answers.extend(accepted(&serde_json::from_str(&text).unwrap()));
                        counted();
                        break;
                    }
                    Ok((code, text)) if code < 500 => panic!("refused: {code} {text}"),
                    _ if abandon.is_cancelled() => break,
                    _ => tokio::time::sleep(RETRY_PAUSE).await,
                }
            }
            hold(&mut rng, PACE_MS).await;
        }
        answers
    })
}

/// An event's encoded `data` size: 20% 100 B-1 KiB, 20% 1-10 KiB, 50% 10 KiB to just under the
/// limit, 10% exactly `max_event_bytes` (64 KiB): large events are where sled writes blobs.
/// `len` random hex digits: they compress only about 2x, so a large event still takes many
/// outbox pieces, as real binary-ish payloads (base64 images, encrypted blobs) do.
fn hex(rng: &mut StdRng, len: usize) -> String {
    (0..len)
        .map(|_| char::from(b"0123456789abcdef"[rng.random_range(0..16)]))
        .collect()
}

pub(super) fn event_size(rng: &mut StdRng) -> usize {
    match rng.random_range(0..10) {
        0 | 1 => rng.random_range(100..1024),
        2 | 3 => rng.random_range(1024..10 * 1024),
        9 => DEFAULT_MAX_EVENT_BYTES,
        _ => rng.random_range(10 * 1024..DEFAULT_MAX_EVENT_BYTES),
    }
}

/// A run's relay (`edge-relay run`, `data_dir` = `<tmp>/relay`, with `relay_keys` under
/// `[relay]`) and upstream (`edge-relay sink`, its store in `sink_dir`), not started, with the
/// relay's ingest address; their stderr goes to `<tmp>/relay.log` and `<tmp>/sink.log`.
pub(super) fn relay_and_sink(
    tmp: &Path,
    sink_dir: &Path,
    relay_keys: &str,
) -> (Proc, Proc, SocketAddr) {
    let (port, sink_addr) = (free_port(), free_port());
    let upstream = format!("url = \"http://{sink_addr}/mcp\"");
    let config = write_config_with(tmp, GATEWAY, port, &upstream, relay_keys);
    let relay = Proc::new(
        "the relay (edge-relay run)",
        &["run", "--config"],
        &config,
        port,
        &tmp.join("relay.log"),
    );
    let sink = Proc::new(
        "the upstream (edge-relay sink)",
        &["sink", "--listen", &sink_addr.to_string(), "--data-dir"],
        sink_dir,
        sink_addr,
        &tmp.join("sink.log"),
    );
    (relay, sink, port)
}

/// One of the run's processes (`edge-relay ARGS PATH`), restartable, its stderr appended to a
/// log file off the cut filesystems; killed when dropped.
pub(super) struct Proc {
    pub(super) what: &'static str,
    pub(super) args: Vec<OsString>,
    pub(super) addr: SocketAddr,
    pub(super) log: PathBuf,
    pub(super) child: Option<Child>,
}

impl Proc {
    pub(super) fn new(
        what: &'static str,
        args: &[&str],
        path: &Path,
        addr: SocketAddr,
        log: &Path,
    ) -> Self {
        let mut args: Vec<OsString> = args.iter().map(OsString::from).collect();
        args.push(path.into());
        Proc {
            what,
            args,
            addr,
            log: log.to_owned(),
            child: None,
        }
    }

    pub(super) fn running(&self) -> bool {
        self.child.is_some()
    }

    /// Starts it and waits until its port accepts connections (its store is open by then).
    ///
    /// # Errors
    /// It exited first, or did not listen within [`START_BOUND`] (then it is killed): the
    /// message has its stderr of this life.
    pub(super) async fn start(&mut self) -> Result<(), String> {
        let mut log = File::options()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let from = log.seek(SeekFrom::End(0)).unwrap();
        let mut cmd = family_child(binary());
        // A panic's message, not pages of backtrace, in the report.
        cmd.args(&self.args)
            .env("RUST_BACKTRACE", "0")
            .stderr(Stdio::from(log));
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {}: {e}", self.what));
        let started = Instant::now();
        let failed = loop {
            if tokio::net::TcpStream::connect(self.addr).await.is_ok() {
                self.child = Some(child);
                return Ok(());
            }
            if let Some(exit) = child.try_wait().unwrap() {
                break format!("exited ({exit}) at start");
            }
            if started.elapsed() > START_BOUND {
                let _ = child.kill();
                let _ = child.wait();
                break format!("did not listen within {START_BOUND:?} (hung at start?)");
            }
            tokio::time::sleep(POLL).await;
        };
        Err(format!(
            "{} {failed}; its stderr:\n{}",
            self.what,
            head(&self.log, from)
        ))
    }

    /// `kill -9` and reap, if it runs.
    pub(super) fn kill(&mut self) {
        self.sigkill();
        self.reap();
    }

    /// `kill -9`, if it runs (it may still be finishing a filesystem request).
    pub(super) fn sigkill(&mut self) {
        if let Some(child) = &mut self.child {
            let _ = child.kill();
        }
    }

    /// Waits for its exit, if it runs.
    pub(super) fn reap(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.wait();
        }
    }
}

impl Drop for Proc {
    /// SIGKILL only: a wait could hang on a sync its filesystem holds (a failing test).
    fn drop(&mut self) {
        self.sigkill();
    }
}

/// The log written since offset `from`, its first 4 KiB at most (where a panic's message is).
pub(super) fn head(log: &Path, from: u64) -> String {
    let mut text = Vec::new();
    if let Ok(f) = File::open(log) {
        let mut f = std::io::BufReader::new(f);
        let _ = f.seek(SeekFrom::Start(from));
        let _ = f.take(4096).read_to_end(&mut text);
    }
    String::from_utf8_lossy(&text).into_owned()
}
