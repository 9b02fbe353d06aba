//! The real `edge-relay` binary as a child process: its config file, spawn, signals, exit, status.

use std::ffi::OsStr;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use edge_relay::local_client;
use hyper::Method;
use serde_json::Value;

/// Pause between two looks at a condition that has no signal to wait on (a child's exit).
pub const POLL: Duration = Duration::from_millis(20);

/// A loopback address with a port that was free a moment ago (for a child to bind).
pub fn free_port() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

/// Writes `dir/edge-relay.toml`: gateway `gateway`, outbox in `dir/relay`, ingest on `listen`,
/// `upstream` as the `[upstream]` keys, fast reconnects; returns its path.
pub fn write_config(dir: &Path, gateway: &str, listen: SocketAddr, upstream: &str) -> PathBuf {
    let path = dir.join("edge-relay.toml");
    std::fs::write(
        &path,
        format!(
            "gateway_id = \"{gateway}\"\ndata_dir = \"{}\"\n[ingest.http]\nlisten = \"{listen}\"\n\
             [upstream]\n{upstream}\n[relay]\nbackoff_initial_ms = 20\nbackoff_max_ms = 200\n\
             batch_max_events = 50\n",
            dir.join("relay").display(),
        ),
    )
    .unwrap();
    path
}

/// A spawned daemon, SIGKILLed when dropped before it exited: a failing test leaves none behind.
pub struct DaemonChild(Child);

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

/// Starts `edge-relay run --config config` with `env` added, outside any systemd context
/// (`NOTIFY_SOCKET`, `WATCHDOG_*`, `JOURNAL_STREAM` and `STATE_DIRECTORY` removed first).
pub fn spawn_daemon(config: &Path, env: &[(&str, &OsStr)]) -> DaemonChild {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_edge-relay"));
    cmd.args(["run", "--config"])
        .arg(config)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit());
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

/// Sends SIGTERM to `child` (as systemd's `systemctl stop` does).
pub fn sigterm(child: &Child) {
    let sent = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("run kill");
    assert!(sent.success(), "kill -TERM {} failed", child.id());
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

/// The daemon's `GET /v1/status` JSON, or `None` if it does not answer 200.
pub async fn status(addr: SocketAddr) -> Option<Value> {
    let (code, body) = local_client::request(addr, Method::GET, "/v1/status", vec![])
        .await
        .ok()?;
    (code == 200)
        .then(|| serde_json::from_str(&body).ok())
        .flatten()
}
