//! The real `edge-relay` binary as a child process: its config file, spawn, signals, exit, status.

use std::ffi::OsStr;
use std::fmt::{Debug, Display};
use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use edge_relay::cli::local_client;
use edge_relay::status::StatusReport;
use hyper::Method;

use super::WAIT;

/// Pause between two looks at a condition that has no signal to wait on (a child's exit).
pub const POLL: Duration = Duration::from_millis(20);

/// The `edge-relay` binary under test, which cargo builds for every integration test: in the
/// profile dir (`target/debug/`) whose `deps/` holds the running test executable.
///
/// # Panics
/// The binary is not there (a test executable run from elsewhere).
pub fn binary() -> &'static str {
    static PATH: OnceLock<String> = OnceLock::new();
    PATH.get_or_init(|| {
        let exe = std::env::current_exe().expect("the test executable's path");
        let profile = exe
            .parent()
            .and_then(Path::parent)
            .expect("a test executable in <profile>/deps/");
        let bin = profile.join(format!("edge-relay{}", std::env::consts::EXE_SUFFIX));
        assert!(bin.is_file(), "no edge-relay binary at {}", bin.display());
        bin.into_os_string().into_string().expect("a UTF-8 path")
    })
}

/// `[relay]` keys of [`write_config`]: fast reconnects, batches of at most 50 events.
pub const FAST_RELAY: &str = "backoff_initial_ms = 20\nbackoff_max_ms = 200\nbatch_max_events = 50";

/// A loopback address with a port that was free a moment ago (for a child to bind).
pub fn free_port() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

/// Writes `dir/edge-relay.toml`: gateway `gateway`, outbox in `dir/relay`, ingest on `listen`,
/// `upstream` as the `[upstream]` keys, [`FAST_RELAY`] as the `[relay]` keys; returns its path.
pub fn write_config(dir: &Path, gateway: &str, listen: SocketAddr, upstream: &str) -> PathBuf {
    write_config_with(dir, gateway, listen, upstream, FAST_RELAY)
}

/// [`write_config`] with `relay` as the `[relay]` keys.
pub fn write_config_with(
    dir: &Path,
    gateway: &str,
    listen: impl Display,
    upstream: &str,
    relay: &str,
) -> PathBuf {
    let path = dir.join("edge-relay.toml");
    std::fs::write(
        &path,
        format!(
            "gateway_id = \"{gateway}\"\ndata_dir = \"{}\"\n[ingest.http]\nlisten = \"{listen}\"\n\
             [upstream]\n{upstream}\n[relay]\n{relay}\n",
            dir.join("relay").display(),
        ),
    )
    .unwrap();
    path
}

/// A spawned daemon, SIGKILLed when dropped before it exited: a failing test leaves none behind.
pub struct DaemonChild(pub Child);

impl std::ops::Deref for DaemonChild {
    type Target = Child;
    fn deref(&self) -> &Child {
        &self.0
    }
}

impl std::ops::DerefMut for DaemonChild {
    fn deref_mut(&mut self) -> &mut Child {
        &mut self.0
    }
}

impl Drop for DaemonChild {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// `program` as a child with `RUST_LOG=log`: no stdin, stdout discarded, stderr inherited (its
/// log shows in the test's output).
pub fn child_command(program: &str, log: &str) -> Command {
    let mut cmd = Command::new(program);
    cmd.env("RUST_LOG", log)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit());
    cmd
}

/// Starts `edge-relay run --config config` with `env` added, outside any systemd context
/// (`NOTIFY_SOCKET`, `WATCHDOG_*`, `JOURNAL_STREAM` and `STATE_DIRECTORY` removed first).
pub fn spawn_daemon(config: &Path, env: &[(&str, &OsStr)]) -> DaemonChild {
    let mut cmd = child_command(binary(), "warn");
    cmd.args(["run", "--config"]).arg(config);
    for var in [
        "NOTIFY_SOCKET",
        "WATCHDOG_USEC",
        "WATCHDOG_PID",
        "JOURNAL_STREAM",
        "STATE_DIRECTORY",
    ] {
        cmd.env_remove(var);
    }
    cmd.envs(env.iter().copied());
    DaemonChild(cmd.spawn().expect("spawn edge-relay"))
}

/// Spawns `cmd` and waits (bounded by [`WAIT`]) until `addr` accepts TCP connections; `what`
/// names the child in the failure.
pub async fn spawn_listening(cmd: &mut Command, addr: SocketAddr, what: &str) -> Child {
    let child = cmd.spawn().unwrap_or_else(|e| panic!("spawn {what}: {e}"));
    wait_listening(addr, what).await;
    child
}

/// Polls (bounded by [`WAIT`]) until `addr` accepts TCP connections.
pub async fn wait_listening(addr: SocketAddr, what: &str) {
    poll_until(
        WAIT,
        &format!("{what} listening on {addr}"),
        || async { tokio::net::TcpStream::connect(addr).await.ok() },
        |_| true,
    )
    .await;
}

/// Sends SIGTERM to `child` (as systemd's `systemctl stop` does).
pub fn sigterm(child: &Child) {
    let sent = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("run kill");
    assert!(sent.success(), "kill -TERM {} failed", child.id());
}

/// `kill -9` and reap.
pub fn kill_9(child: &mut Child) {
    child.kill().unwrap();
    child.wait().unwrap();
}

/// Waits for `child` to exit, at most `bound`; returns its status and how long it took.
pub async fn wait_exit(child: &mut Child, bound: Duration) -> (ExitStatus, Duration) {
    let start = Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return (status, start.elapsed());
        }
        if start.elapsed() > bound {
            let _ = child.kill();
            panic!("edge-relay did not exit within {bound:?}");
        }
        tokio::time::sleep(POLL).await;
    }
}

/// The daemon's `GET /v1/status`, or `None` while it does not answer 200 (down, starting).
pub async fn status(addr: SocketAddr) -> Option<StatusReport> {
    let (code, body) = local_client::request(addr, Method::GET, "/v1/status", vec![])
        .await
        .ok()?;
    (code == 200).then(|| serde_json::from_str(&body).ok())?
}

/// Everything the daemon accepted is acknowledged by the upstream.
pub fn all_acked(report: &StatusReport) -> bool {
    report.backlog_events == 0 && report.acked_seq + 1 == report.next_seq
}

/// Polls `probe` every [`POLL`] until it answers a value for which `done` holds; returns it.
///
/// # Panics
/// Not within `bound` (the message names `what` and the last answer).
pub async fn poll_until<T, F, Fut>(
    bound: Duration,
    what: &str,
    probe: F,
    done: impl Fn(&T) -> bool,
) -> T
where
    T: Debug,
    F: Fn() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let started = Instant::now();
    loop {
        match probe().await {
            Some(v) if done(&v) => return v,
            last => assert!(
                started.elapsed() < bound,
                "{what} within {bound:?}; last: {last:?}"
            ),
        }
        tokio::time::sleep(POLL).await;
    }
}
