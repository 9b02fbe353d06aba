//! The real binary as a systemd service sees it: the notify protocol on a fake `NOTIFY_SOCKET`,
//! and a SIGTERM under heavy ingest that loses nothing accepted.

use edge_relay_testkit as support;

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use edge_relay::cli::local_client;
use edge_relay::demo::audit::audit;
use edge_relay::status::StatusReport;
use hyper::Method;
use serde_json::Value;
use support::process::*;
use support::*;
use tokio::net::UnixDatagram;
use uuid::Uuid;

/// The unit's `TimeoutStopSec=`: a graceful stop must end within it.
const TIMEOUT_STOP: Duration = Duration::from_secs(30);
/// `WATCHDOG_USEC` given to the daemon: pings every 500 ms.
const WATCHDOG_USEC: &str = "1000000";

/// A fake service manager: a unix datagram socket in a temp dir, and what arrived on it.
struct NotifySocket {
    path: PathBuf,
    socket: UnixDatagram,
    /// Every line received so far, with when its datagram arrived.
    lines: Vec<(Instant, String)>,
}

impl NotifySocket {
    fn bind(dir: &Path) -> Self {
        let path = dir.join("notify.sock");
        let socket = UnixDatagram::bind(&path).unwrap();
        NotifySocket {
            path,
            socket,
            lines: Vec::new(),
        }
    }

    /// The environment a `Type=notify` service with `WatchdogSec=1s` gets.
    fn env(&self) -> [(&'static str, &std::ffi::OsStr); 2] {
        [
            ("NOTIFY_SOCKET", self.path.as_os_str()),
            ("WATCHDOG_USEC", WATCHDOG_USEC.as_ref()),
        ]
    }

    /// Receives until a line satisfies `wanted`; returns it. Fails after [`WAIT`].
    async fn until(&mut self, what: &str, wanted: impl Fn(&str) -> bool) -> String {
        let deadline = tokio::time::Instant::now() + WAIT;
        let mut buf = vec![0u8; 4096];
        loop {
            let n = tokio::time::timeout_at(deadline, self.socket.recv(&mut buf))
                .await
                .unwrap_or_else(|_| panic!("no {what} within {WAIT:?}; got {:?}", self.lines))
                .unwrap();
            let now = Instant::now();
            let text = String::from_utf8_lossy(&buf[..n]).into_owned();
            let mut found = None;
            for line in text.lines() {
                if found.is_none() && wanted(line) {
                    found = Some(line.to_owned());
                }
                self.lines.push((now, line.to_owned()));
            }
            if let Some(line) = found {
                return line;
            }
        }
    }

    /// Receives until the line `exact`.
    async fn line(&mut self, exact: &str) -> String {
        self.until(exact, |l| l == exact).await
    }

    /// Takes what is already queued on the socket without waiting.
    fn drain(&mut self) {
        let mut buf = vec![0u8; 4096];
        while let Ok(n) = self.socket.try_recv(&mut buf) {
            let now = Instant::now();
            for line in String::from_utf8_lossy(&buf[..n]).lines() {
                self.lines.push((now, line.to_owned()));
            }
        }
    }
}

/// The real upstream and the real binary under a fake service manager, up to `READY=1`.
struct Service {
    _tmp: tempfile::TempDir,
    sink: Sink,
    port: SocketAddr,
    config: PathBuf,
    notify: NotifySocket,
    child: DaemonChild,
}

impl Service {
    async fn start() -> Self {
        let tmp = tempfile::tempdir().unwrap();
        let sink = Sink::start(&tmp.path().join("sink")).await;
        let port = free_port();
        let upstream = format!("url = \"{}\"", sink.url());
        let config = write_config(tmp.path(), "svc-gw", port, &upstream);
        let mut notify = NotifySocket::bind(tmp.path());
        let child = spawn_daemon(&config, &notify.env());
        notify.line("READY=1").await;
        Service {
            _tmp: tmp,
            sink,
            port,
            config,
            notify,
            child,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notify_socket_gets_ready_after_bind_then_status_watchdog_and_stopping() {
    // Named bindings keep the temp dir and the upstream alive to the end of the test.
    let Service {
        _tmp,
        sink: _sink,
        port,
        mut notify,
        mut child,
        ..
    } = Service::start().await;
    // READY is not early: at that moment the store is open and the ingest port answers.
    let (code, answer) = post(port, event("svc", 1).to_string()).await;
    assert_eq!(code, 200, "{answer}");
    assert!(
        notify
            .lines
            .iter()
            .any(|(_, l)| l.starts_with("STATUS=upstream ") && l.contains("backlog")),
        "READY=1 came without a STATUS=: {:?}",
        notify.lines
    );
    // STATUS= follows the event to the upstream.
    notify
        .line("STATUS=upstream connected; backlog 0 events (0 bytes); acked_seq 1, next_seq 2")
        .await;

    // WATCHDOG=1 repeatedly, paced by the interval (every 500 ms), not in a burst.
    let first = notify.lines.len();
    for _ in 0..4 {
        notify.line("WATCHDOG=1").await;
    }
    let pings: Vec<Instant> = notify.lines[first..]
        .iter()
        .filter(|(_, l)| l == "WATCHDOG=1")
        .map(|(t, _)| *t)
        .collect();
    let span = *pings.last().unwrap() - pings[0];
    assert!(
        span >= Duration::from_secs(1),
        "{} pings in {span:?}",
        pings.len()
    );

    sigterm(&child);
    notify.line("STOPPING=1").await;
    let stopping_at = notify.lines.len();
    let (status, took) = wait_exit(&mut child, TIMEOUT_STOP).await;
    assert_eq!(status.code(), Some(0), "exit status {status:?}");
    eprintln!("idle daemon stopped in {took:?}");
    notify.drain();
    let after: Vec<&String> = notify.lines[stopping_at..].iter().map(|(_, l)| l).collect();
    assert!(
        !after.iter().any(|l| *l == "WATCHDOG=1" || *l == "READY=1"),
        "sent after STOPPING=1: {after:?}"
    );
}

/// What the producers saw: `(seq, id)` of events that got a 200, ids of events that did not.
#[derive(Default)]
struct Produced {
    accepted: Vec<(u64, Uuid)>,
    unanswered: HashSet<Uuid>,
}

/// Posts batches of 20 fresh events until a request is not answered 200 (the daemon stops),
/// recording both outcomes.
async fn producer(addr: SocketAddr, name: String, log: Arc<Mutex<Produced>>) {
    for b in 0..2_000u64 {
        let events: Vec<Value> = (0..20).map(|i| event(&name, b * 20 + i)).collect();
        let ids = events
            .iter()
            .map(|e| Uuid::parse_str(e["id"].as_str().unwrap()).unwrap());
        let body = Value::Array(events.clone()).to_string().into_bytes();
        match local_client::request(addr, Method::POST, "/v1/events", body).await {
            Ok((200, text)) => {
                let answer: Value = serde_json::from_str(&text).unwrap();
                log.lock().unwrap().accepted.extend(accepted(&answer));
            }
            Ok((code, text)) if code < 500 => panic!("refused: {code} {text}"),
            _ => {
                log.lock().unwrap().unanswered.extend(ids);
                return;
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_under_heavy_ingest_exits_0_and_every_accepted_event_arrives_once_in_order() {
    const PRODUCERS: usize = 4;
    let Service {
        _tmp,
        sink,
        port,
        config,
        mut notify,
        mut child,
    } = Service::start().await;

    let log = Arc::new(Mutex::new(Produced::default()));
    let producers: Vec<_> = (0..PRODUCERS)
        .map(|p| tokio::spawn(producer(port, format!("p{p}"), log.clone())))
        .collect();
    // SIGTERM mid-ingest, once the relay has delivered some of it.
    let progress =
        |s: &StatusReport| log.lock().unwrap().accepted.len() >= 3_000 && s.acked_seq > 0;
    let stream = poll_until(WAIT, "ingest progress", || status(port), progress)
        .await
        .stream;
    sigterm(&child);
    notify.line("STOPPING=1").await;
    let (status_code, took) = wait_exit(&mut child, TIMEOUT_STOP).await;
    assert_eq!(status_code.code(), Some(0), "exit status {status_code:?}");
    for p in producers {
        tokio::time::timeout(WAIT, p).await.unwrap().unwrap();
    }
    let produced = std::mem::take(&mut *log.lock().unwrap());
    assert_eq!(
        produced.unanswered.len(),
        PRODUCERS * 20,
        "each producer ends on one unanswered batch"
    );

    // A new life on the same outbox delivers the rest.
    let mut child = spawn_daemon(&config, &notify.env());
    notify.line("READY=1").await;
    poll_until(WAIT, "backlog delivered", || status(port), all_acked).await;
    sigterm(&child);
    let (second, _) = wait_exit(&mut child, TIMEOUT_STOP).await;
    assert_eq!(second.code(), Some(0));

    // Every 200 is upstream exactly once, at its seq, in order; the upstream's seqs have no
    // hole. Events of unanswered requests may or may not have been committed before the stop.
    let stored = sink.events("svc-gw", stream);
    let seqs: Vec<u64> = stored.iter().map(|e| e.seq).collect();
    assert_eq!(seqs, (1..=stored.len() as u64).collect::<Vec<_>>());
    let answered: Vec<_> = stored
        .into_iter()
        .filter(|e| !produced.unanswered.contains(&e.id))
        .collect();
    let mut accepted_all = produced.accepted.clone();
    accepted_all.sort_by_key(|(seq, _)| *seq);
    let result = audit(&accepted_all, &answered);
    assert!(result.is_clean(), "{result}");
    eprintln!(
        "SIGTERM under {PRODUCERS} producers: {} events accepted, stop took {took:?}, {} unanswered; {result}",
        accepted_all.len(),
        produced.unanswered.len()
    );
}
