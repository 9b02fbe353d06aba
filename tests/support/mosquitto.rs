//! A real Mosquitto 2.x per test (own temp dir, free loopback port) and a QoS 1 test publisher.

use std::net::{SocketAddr, TcpListener};
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::mqttbytes::v5::{Packet, PubAckReason};
use rumqttc::v5::{AsyncClient, Event, MqttOptions};
use tokio::process::{Child, Command};

use super::WAIT;

/// Longest wait for a started broker to accept TCP connections.
pub const START_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest wait for the broker to exit after SIGTERM or SIGKILL.
pub const STOP_TIMEOUT: Duration = Duration::from_secs(10);
/// Pause between readiness checks of a starting broker and between subscription probes.
const POLL_INTERVAL: Duration = Duration::from_millis(20);
/// Largest packet the broker accepts (advertised in CONNACK); also the publisher's limit.
pub const MAX_PACKET_BYTES: u32 = 16 * 1024 * 1024;
/// Messages the broker holds per client beyond those in flight (an offline persistent session
/// included). Mosquitto's default, 1000, silently drops the rest, which no test here wants.
pub const MAX_QUEUED_MESSAGES: u32 = 1_000_000;

const NOT_FOUND: &str = "mosquitto not found: install it with `apt-get install mosquitto` (the MQTT tests need a real broker)";

/// A running broker; killed when dropped.
pub struct Mosquitto {
    port: u16,
    persistence: bool,
    dir: tempfile::TempDir,
    child: Option<Child>,
}

fn binary() -> PathBuf {
    let on_path = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .unwrap_or_default()
        .into_iter()
        .map(|dir| dir.join("mosquitto"));
    on_path
        .chain([PathBuf::from("/usr/sbin/mosquitto")])
        .find(|p| p.is_file())
        .unwrap_or_else(|| panic!("{NOT_FOUND}"))
}

impl Mosquitto {
    /// Starts a broker on a free loopback port and waits until it accepts TCP. With
    /// `persistence`, it saves its database in its temp dir (on SIGTERM and every second).
    pub async fn start(persistence: bool) -> Mosquitto {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free loopback port")
            .port();
        let mut broker = Mosquitto {
            port,
            persistence,
            dir: tempfile::tempdir().expect("a temp dir"),
            child: None,
        };
        broker.spawn().await;
        broker
    }

    /// `mqtt://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("mqtt://127.0.0.1:{}", self.port)
    }

    /// Graceful stop: SIGTERM (a persistent broker saves its database), then waits for exit.
    pub async fn stop(&mut self) {
        if let Some(child) = &self.child {
            let pid = child.id().expect("a running broker has a pid").to_string();
            let status = std::process::Command::new("kill")
                .args(["-TERM", &pid])
                .status()
                .expect("running kill");
            assert!(status.success(), "kill -TERM {pid} failed");
        }
        self.reap("SIGTERM").await;
    }

    /// Abrupt stop: SIGKILL, then waits for exit. A persistent broker loses what it changed
    /// since its last autosave (at most a second ago).
    pub async fn kill(&mut self) {
        if let Some(child) = &mut self.child {
            child.start_kill().expect("sending SIGKILL");
        }
        self.reap("SIGKILL").await;
    }

    /// Stops (SIGTERM) if running, then starts again on the same port and persistence dir.
    pub async fn restart(&mut self) {
        self.stop().await;
        self.spawn().await;
    }

    /// The last lines of the broker's log and stderr, for failure messages.
    pub fn log_tail(&self) -> String {
        let mut tail = String::new();
        for name in ["mosquitto.log", "stderr.log"] {
            let text = std::fs::read_to_string(self.dir.path().join(name)).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            tail.push_str(&format!("--- {name}\n"));
            for line in &lines[lines.len().saturating_sub(30)..] {
                tail.push_str(line);
                tail.push('\n');
            }
        }
        tail
    }

    async fn reap(&mut self, signal: &str) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        if tokio::time::timeout(STOP_TIMEOUT, child.wait())
            .await
            .is_err()
        {
            panic!(
                "mosquitto did not exit within {STOP_TIMEOUT:?} of {signal}\n{}",
                self.log_tail()
            );
        }
    }

    async fn spawn(&mut self) {
        let dir = self.dir.path();
        let mut conf = format!(
            "listener {} 127.0.0.1\nallow_anonymous true\nmax_packet_size {MAX_PACKET_BYTES}\n\
             max_queued_messages {MAX_QUEUED_MESSAGES}\n\
             log_dest file {}\nlog_type all\nlog_timestamp true\nconnection_messages true\n",
            self.port,
            dir.join("mosquitto.log").display(),
        );
        if self.persistence {
            conf.push_str(&format!(
                "persistence true\npersistence_location {}/\nautosave_interval 1\n",
                dir.display()
            ));
        }
        // As root, mosquitto switches to user `mosquitto`, who cannot write our 0700 temp dir.
        if std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0) {
            conf.push_str("user root\n");
        }
        let conf_path = dir.join("mosquitto.conf");
        std::fs::write(&conf_path, conf).expect("writing mosquitto.conf");
        let stderr = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join("stderr.log"))
            .expect("opening stderr.log");
        let child = Command::new(binary())
            .arg("-c")
            .arg(&conf_path)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| panic!("starting mosquitto: {e}"));
        self.child = Some(child);
        self.wait_ready().await;
    }

    async fn wait_ready(&mut self) {
        let addr = SocketAddr::from(([127, 0, 0, 1], self.port));
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                panic!("mosquitto exited at start ({status})\n{}", self.log_tail());
            }
            if tokio::net::TcpStream::connect(addr).await.is_ok() {
                return;
            }
            if Instant::now() > deadline {
                panic!(
                    "mosquitto did not accept TCP on {addr} within {START_TIMEOUT:?}\n{}",
                    self.log_tail()
                );
            }
            tokio::time::sleep(POLL_INTERVAL).await;
        }
    }
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        if let Some(child) = &mut self.child {
            let _ = child.start_kill();
        }
    }
}

/// Publishes every `(topic, payload)` at QoS 1, in order, on one fresh connection, and waits
/// (bounded by [`WAIT`]) for their PUBACKs. Returns how many the broker PUBACKed with Success;
/// "no matching subscribers" does not count, since that message reached nobody.
pub async fn publish_qos1(url: &str, client_id: &str, messages: Vec<(String, Vec<u8>)>) -> usize {
    let port = url
        .rsplit_once(':')
        .and_then(|(_, p)| p.parse().ok())
        .expect("url is mqtt://127.0.0.1:PORT");
    let mut options = MqttOptions::new(client_id, "127.0.0.1", port);
    options
        .set_keep_alive(Duration::from_secs(15))
        .set_max_packet_size(Some(MAX_PACKET_BYTES));
    let (client, mut eventloop) = AsyncClient::new(options, 64);
    let total = messages.len();
    let sender = client.clone();
    let publishing = tokio::spawn(async move {
        for (topic, payload) in messages {
            if sender
                .publish(topic, QoS::AtLeastOnce, false, payload)
                .await
                .is_err()
            {
                return;
            }
        }
    });
    let (mut success, mut answered) = (0, 0);
    let acks = async {
        while answered < total {
            match eventloop.poll().await {
                Ok(Event::Incoming(Packet::PubAck(ack))) => {
                    answered += 1;
                    success += usize::from(ack.reason == PubAckReason::Success);
                }
                Ok(_) => {}
                Err(e) => {
                    eprintln!("test publisher {client_id}: {e}");
                    return;
                }
            }
        }
    };
    let finished = tokio::time::timeout(WAIT, acks).await.is_ok();
    publishing.abort();
    if finished {
        let _ = client.disconnect().await;
        let _ = tokio::time::timeout(Duration::from_secs(2), async {
            while let Ok(event) = eventloop.poll().await {
                if matches!(event, Event::Outgoing(rumqttc::Outgoing::Disconnect)) {
                    break;
                }
            }
        })
        .await;
    }
    success
}

/// Waits until some session subscribes to `topic`: publishes a probe there (payload `"probe"`)
/// until the broker PUBACKs it with Success. Exactly one probe reaches the subscriber.
pub async fn wait_subscribed(url: &str, topic: &str) {
    let deadline = Instant::now() + WAIT;
    let probe = vec![(topic.to_owned(), b"\"probe\"".to_vec())];
    while publish_qos1(url, "test-probe", probe.clone()).await != 1 {
        assert!(
            Instant::now() < deadline,
            "nobody subscribed to {topic} within {WAIT:?}"
        );
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}
