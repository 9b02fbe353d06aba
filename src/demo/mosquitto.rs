//! A private Mosquitto 2.x broker on a free loopback port, for the demo, tests and benchmarks.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context;

/// Longest wait for a started broker to accept TCP connections.
pub const START_TIMEOUT: Duration = Duration::from_secs(10);
/// Ports tried before giving up on starting a broker.
const START_ATTEMPTS: usize = 5;
/// Pause between readiness checks of a starting broker.
const READY_POLL: Duration = Duration::from_millis(20);
/// Largest packet the broker accepts (it advertises it in CONNACK).
pub const MAX_PACKET_BYTES: u32 = 16 * 1024 * 1024;
/// Messages held per client beyond those in flight (offline persistent sessions included);
/// Mosquitto's default, 1000, silently drops the rest.
pub const MAX_QUEUED_MESSAGES: u32 = 1_000_000;

/// Where the `mosquitto` binary is, or a message saying how to install it.
///
/// # Errors
/// Not on `PATH` nor in `/usr/sbin`: "install it with `apt-get install mosquitto`".
pub fn find_binary() -> anyhow::Result<PathBuf> {
    let from_path = std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .map(|dir| dir.join("mosquitto"));
    from_path
        .chain([PathBuf::from("/usr/sbin/mosquitto")])
        .find(|p| p.is_file())
        .context("mosquitto not found: install it with `apt-get install mosquitto` (Debian/Ubuntu)")
}

/// A running broker; killed when dropped.
pub struct Mosquitto {
    /// Listening address.
    pub addr: SocketAddr,
    dir: PathBuf,
    persistence: bool,
    /// Appended to the generated config (bridges, queue limits, ...).
    extra_config: String,
    child: Option<Child>,
}

impl Mosquitto {
    /// Starts a broker in `dir` (config, log and, with `persistence`, its database) on a free
    /// loopback port, and waits until it accepts connections.
    ///
    /// # Errors
    /// No binary, no free port, or the broker did not come up (the log tail is included).
    pub fn start(dir: &Path, persistence: bool) -> anyhow::Result<Self> {
        Self::start_with(dir, persistence, "")
    }

    /// As [`Mosquitto::start`], with `extra_config` appended verbatim to the generated config
    /// (e.g. `max_queued_messages`, or a bridge: `connection` must come after global options).
    /// With `persistence` false, `extra_config` may set up persistence itself (its own
    /// `autosave_interval`). Kept across [`Mosquitto::restart`].
    ///
    /// # Errors
    /// As [`Mosquitto::start`] (a config Mosquitto refuses makes it exit: "did not listen").
    pub fn start_with(dir: &Path, persistence: bool, extra_config: &str) -> anyhow::Result<Self> {
        // A free port found by binding port 0 can be taken by a parallel test before the broker
        // binds it; then the broker exits and another one answers there. Retry on a new port.
        let mut last_error = None;
        for _ in 0..START_ATTEMPTS {
            let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
            let mut broker = Self {
                addr: SocketAddr::from(([127, 0, 0, 1], port)),
                dir: dir.to_owned(),
                persistence,
                extra_config: extra_config.to_owned(),
                child: None,
            };
            match broker.spawn() {
                Ok(()) => return Ok(broker),
                Err(e) => last_error = Some(e),
            }
        }
        Err(last_error.unwrap_or_else(|| anyhow::anyhow!("mosquitto did not start")))
    }

    /// `mqtt://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("mqtt://{}", self.addr)
    }

    fn spawn(&mut self) -> anyhow::Result<()> {
        let binary = find_binary()?;
        std::fs::create_dir_all(&self.dir)?;
        let log = self.dir.join("mosquitto.log");
        let log_start = std::fs::metadata(&log).map_or(0, |m| m.len() as usize);
        let mut conf = format!(
            "listener {} 127.0.0.1\nallow_anonymous true\nmax_packet_size {MAX_PACKET_BYTES}\n\
             max_queued_messages {MAX_QUEUED_MESSAGES}\n\
             log_dest file {}\nlog_timestamp true\nconnection_messages true\n",
            self.addr.port(),
            log.display()
        );
        if self.persistence {
            conf.push_str(&format!(
                "persistence true\npersistence_location {}/\nautosave_interval 1\n",
                self.dir.display()
            ));
        }
        // As root, mosquitto would switch to user `mosquitto`, which cannot write our dir.
        if is_root() {
            conf.push_str("user root\n");
        }
        conf.push_str(&self.extra_config);
        let conf_path = self.dir.join("mosquitto.conf");
        std::fs::write(&conf_path, conf)?;
        let stderr = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("stderr.log"))?;
        let child = Command::new(binary)
            .arg("-c")
            .arg(&conf_path)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .context("starting mosquitto")?;
        self.child = Some(child);
        let deadline = Instant::now() + START_TIMEOUT;
        // Ready = our own broker logged "running" (a connect alone could reach another broker
        // that took the port) and the port accepts connections.
        let running = || {
            std::fs::read(&log).is_ok_and(|l| {
                l.get(log_start..)
                    .is_some_and(|new| new.windows(8).any(|w| w == b" running"))
            })
        };
        while !running() || TcpStream::connect(self.addr).is_err() {
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                anyhow::bail!("mosquitto exited at start ({status}); log:\n{}", self.log());
            }
            if Instant::now() > deadline {
                anyhow::bail!(
                    "mosquitto did not listen on {} within {START_TIMEOUT:?}; log:\n{}",
                    self.addr,
                    self.log()
                );
            }
            std::thread::sleep(READY_POLL);
        }
        Ok(())
    }

    /// Graceful stop (SIGTERM): a persistent broker saves its database.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("kill").arg(child.id().to_string()).status();
            let _ = child.wait();
        }
    }

    /// Abrupt stop (SIGKILL).
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts again on the same port and directory (after `stop` or `kill`).
    ///
    /// # Errors
    /// As [`Mosquitto::start`].
    pub fn restart(&mut self) -> anyhow::Result<()> {
        self.stop();
        self.spawn()
    }

    /// The config file the broker was started with.
    pub fn config_path(&self) -> PathBuf {
        self.dir.join("mosquitto.conf")
    }

    /// The last lines of the broker's log and stderr (for failure messages).
    pub fn log(&self) -> String {
        let mut tail = String::new();
        for name in ["mosquitto.log", "stderr.log"] {
            let text = std::fs::read_to_string(self.dir.join(name)).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            tail.push_str(&format!("--- {name}\n"));
            for line in &lines[lines.len().saturating_sub(30)..] {
                tail.push_str(line);
                tail.push('\n');
            }
        }
        tail
    }
}

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .map(|l| l.split_whitespace().nth(1) == Some("0"))
        })
        .unwrap_or(false)
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        self.kill();
    }
}
