//! A real Mosquitto 2.x per test (own temp dir, free loopback port) and a QoS 1 test publisher.

use std::time::{Duration, Instant};

use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::mqttbytes::v5::{Packet, PubAckReason};
use rumqttc::v5::{AsyncClient, Event, MqttOptions};

use std::path::Path;

use edge_relay::tls::ClientTls;
use rumqttc::{TlsConfiguration, Transport};

use super::WAIT;
use super::certs::Leaf;

/// Pause between subscription probes.
const POLL_INTERVAL: Duration = Duration::from_millis(20);
/// Largest packet the test publisher sends.
pub const MAX_PACKET_BYTES: u32 = edge_relay::demo::mosquitto::MAX_PACKET_BYTES;

/// A real broker in its own temp dir (see `edge_relay::demo::mosquitto`); killed when dropped.
pub struct Mosquitto {
    inner: edge_relay::demo::mosquitto::Mosquitto,
    _dir: tempfile::TempDir,
}

impl Mosquitto {
    /// Starts a broker on a free loopback port; with `persistence` it saves its database.
    pub async fn start(persistence: bool) -> Mosquitto {
        let dir = tempfile::tempdir().expect("a temp dir");
        let inner = edge_relay::demo::mosquitto::Mosquitto::start(dir.path(), persistence)
            .unwrap_or_else(|e| panic!("{e:#}"));
        Mosquitto { inner, _dir: dir }
    }

    /// A broker whose only listener speaks TLS with `server` (its certificate and key) and
    /// requires client certificates signed by the CA in `ca` (Mosquitto's `cafile`,
    /// `certfile`, `keyfile`, `require_certificate true`).
    pub async fn start_tls(ca: &Path, server: &Leaf) -> Mosquitto {
        let dir = tempfile::tempdir().expect("a temp dir");
        let tls = format!(
            "cafile {}\ncertfile {}\nkeyfile {}\nrequire_certificate true\n",
            ca.display(),
            server.cert.display(),
            server.key.display()
        );
        let inner = edge_relay::demo::mosquitto::Mosquitto::start_with(dir.path(), false, &tls)
            .unwrap_or_else(|e| panic!("{e:#}"));
        Mosquitto { inner, _dir: dir }
    }

    /// `mqtt://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        self.inner.url()
    }

    /// `mqtts://127.0.0.1:PORT` (for a broker of [`Mosquitto::start_tls`]).
    pub fn tls_url(&self) -> String {
        format!("mqtts://{}", self.inner.addr)
    }

    /// Graceful stop (SIGTERM; a persistent broker saves its database).
    pub async fn stop(&mut self) {
        self.inner.stop();
    }

    /// Abrupt stop (SIGKILL).
    pub async fn kill(&mut self) {
        self.inner.kill();
    }

    /// Stops if running, then starts again on the same port and persistence dir.
    pub async fn restart(&mut self) {
        self.inner.restart().unwrap_or_else(|e| panic!("{e:#}"));
    }

    /// The last lines of the broker's log, for failure messages.
    pub fn log_tail(&self) -> String {
        self.inner.log()
    }
}

/// Publishes every `(topic, payload)` at QoS 1, in order, on one fresh connection, and waits
/// (bounded by [`WAIT`]) for their PUBACKs. Returns how many the broker PUBACKed with Success;
/// "no matching subscribers" does not count, since that message reached nobody.
pub async fn publish_qos1(url: &str, client_id: &str, messages: Vec<(String, Vec<u8>)>) -> usize {
    publish_qos1_tls(url, None, client_id, messages).await
}

/// [`publish_qos1`] over TLS with `tls` (the URL's scheme is not looked at).
pub async fn publish_qos1_tls(
    url: &str,
    tls: Option<&ClientTls>,
    client_id: &str,
    messages: Vec<(String, Vec<u8>)>,
) -> usize {
    let port = url
        .rsplit_once(':')
        .and_then(|(_, p)| p.parse().ok())
        .expect("url is mqtt://127.0.0.1:PORT");
    let mut options = MqttOptions::new(client_id, "127.0.0.1", port);
    options
        .set_keep_alive(Duration::from_secs(15))
        .set_max_packet_size(Some(MAX_PACKET_BYTES));
    if let Some(tls) = tls {
        let config = tls.load().unwrap_or_else(|e| panic!("{e}"));
        options.set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(config)));
    }
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
    wait_subscribed_tls(url, None, topic).await;
}

/// [`wait_subscribed`] through a TLS broker, connecting with `tls`.
pub async fn wait_subscribed_tls(url: &str, tls: Option<&ClientTls>, topic: &str) {
    let deadline = Instant::now() + WAIT;
    let probe = vec![(topic.to_owned(), b"\"probe\"".to_vec())];
    while publish_qos1_tls(url, tls, "test-probe", probe.clone()).await != 1 {
        assert!(
            Instant::now() < deadline,
            "nobody subscribed to {topic} within {WAIT:?}"
        );
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}

/// A plain MQTT 5 client (fresh id, no MCP properties) subscribed to `filters`: it sees what
/// MCP clients and servers publish without taking part.
pub async fn bystander(url: &str, filters: &[&str]) -> edge_relay::mqtt::link::Link {
    use edge_relay::mqtt::link::{Link, LinkOptions};
    let options = LinkOptions {
        url: url.to_owned(),
        tls: None,
        client_id: format!("bystander-{}", uuid::Uuid::now_v7().simple()),
        component: None,
        meta: None,
        will: None,
        password: None,
        manual_acks: false,
        persistent_session: None,
    };
    let link = Link::connect(options, WAIT).await.unwrap();
    let filters: Vec<String> = filters.iter().map(|f| (*f).to_owned()).collect();
    link.subscribe(&filters, false, WAIT).await.unwrap();
    link
}
