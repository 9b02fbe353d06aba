//! MQTT over TLS against a real Mosquitto TLS listener that requires client certificates
//! (`cafile`, `certfile`, `keyfile`, `require_certificate true`): the relay's MCP over MQTT
//! uplink and the reference upstream over `mqtts://` deliver exactly once; the MQTT ingest
//! takes events over `mqtts://`; a wrong CA and an expired client certificate are named errors
//! that deliver nothing and leave the acked seq unchanged, until the right files are on disk.

use edge_relay_testkit as support;

use std::path::Path;
use std::sync::Arc;

use edge_relay::config::MqttIngestConfig;
use edge_relay::daemon::Daemon;
use edge_relay::sink::{Eras, SinkStore};
use edge_relay::tls::ClientTls;
use serde_json::json;
use support::certs::*;
use support::mcp_mqtt::{MqttSink, SERVER_NAME, relay_config_mqtt};
use support::mosquitto::{Mosquitto, publish_qos1_tls, wait_subscribed_tls};
use support::*;
use uuid::Uuid;

/// A CA, a TLS Mosquitto with its server certificate, and the reference upstream connected to
/// it over `mqtts://` with a certificate of its own.
struct Fleet {
    ca: Ca,
    broker: Mosquitto,
    sink: MqttSink,
}

impl Fleet {
    async fn start(pki: &Path) -> Fleet {
        let ca = Ca::new(pki, "fleet");
        let server = ca.server(pki, "broker", &["localhost", "127.0.0.1"]);
        let broker = Mosquitto::start_tls(&ca.cert, &server).await;
        let upstream = ca.client(pki, "upstream", "upstream", Validity::Current);
        let store = Arc::new(SinkStore::open(&pki.join("sink")).unwrap());
        let tls = ClientTls::new("--mqtt", client_tls(&ca.cert, Some(&upstream)));
        let sink = MqttSink::serve_tls(store, &broker.tls_url(), Eras::Both, Some(tls)).await;
        Fleet { ca, broker, sink }
    }

    /// A relay whose uplink is MCP over MQTT through the broker, trusting `ca`, presenting
    /// `client` if given.
    async fn relay(&self, dir: &Path, ca: &Path, client: Option<&Leaf>) -> Daemon {
        let mut config = relay_config_mqtt(dir, &self.broker.tls_url());
        config.upstream.tls = client_tls(ca, client);
        start_relay(config).await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_and_upstream_over_mqtts_with_client_certificates_deliver_exactly_once() {
    let tmp = tempfile::tempdir().unwrap();
    let pki = tmp.path();
    let fleet = Fleet::start(pki).await;
    // Control: the broker does require a client certificate.
    let anonymous = fleet
        .relay(&pki.join("anonymous"), &fleet.ca.cert, None)
        .await;
    post_events(&anonymous, "imu", 5).await;
    let e = error_containing(&anonymous, NO_CLIENT_CERT).await;
    println!("without a client certificate: {e}");
    assert_nothing_delivered(fleet.sink.store(), &anonymous);
    anonymous.stop().await;

    let device = fleet.ca.client(pki, "device", "gw-01", Validity::Current);
    let relay = fleet
        .relay(&pki.join("relay"), &fleet.ca.cert, Some(&device))
        .await;
    let sent = post_events(&relay, "imu", 300).await;
    drained(&relay).await;
    assert_stored_exactly_once(fleet.sink.store(), &relay, &sent);
    relay.stop().await;
    fleet.sink.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt_ingest_over_mqtts_takes_every_pubacked_message_once() {
    let tmp = tempfile::tempdir().unwrap();
    let pki = tmp.path();
    let fleet = Fleet::start(pki).await;
    let upstream = Sink::start(&pki.join("http-sink")).await;
    let device = fleet.ca.client(pki, "device", "gw-01", Validity::Current);
    let mut config = relay_config(&pki.join("relay"), &upstream.url());
    config.ingest.mqtt = Some(MqttIngestConfig {
        url: fleet.broker.tls_url(),
        topics: vec!["sensors/#".into()],
        tls: client_tls(&fleet.ca.cert, Some(&device)),
        ..MqttIngestConfig::default()
    });
    let relay = start_relay(config).await;
    let producer_leaf = fleet
        .ca
        .client(pki, "producer", "producer", Validity::Current);
    let producer = ClientTls::new("producer", client_tls(&fleet.ca.cert, Some(&producer_leaf)));
    let url = fleet.broker.tls_url();
    wait_subscribed_tls(&url, Some(&producer), "sensors/probe").await;
    let before = relay.outbox.stats().next_seq - 1;
    let ids: Vec<Uuid> = (0..200).map(|_| Uuid::now_v7()).collect();
    let messages = ids
        .iter()
        .enumerate()
        .map(|(n, id)| {
            (
                "sensors/imu".to_owned(),
                json!({"id": id, "n": n}).to_string().into_bytes(),
            )
        })
        .collect();
    assert_eq!(
        publish_qos1_tls(&url, Some(&producer), "producer", messages).await,
        200
    );
    acked_at_least(&relay, before + 200).await;
    let stored = upstream.events("test-gw", relay.outbox.stats().stream);
    let got: Vec<Uuid> = stored
        .iter()
        .filter(|e| e.source == "sensors/imu")
        .map(|e| e.data["id"].as_str().unwrap().parse().unwrap())
        .collect();
    assert_eq!(got, ids, "every PUBACKed message once, in order");
    relay.stop().await;
    upstream.stop().await;
    fleet.sink.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_broker_ca_is_named_and_nothing_advances_until_the_right_ca_is_on_disk() {
    let tmp = tempfile::tempdir().unwrap();
    let pki = tmp.path();
    let fleet = Fleet::start(pki).await;
    let other = Ca::new(pki, "other");
    let trusted = pki.join("trusted-ca.pem");
    std::fs::copy(&other.cert, &trusted).unwrap();
    let device = fleet.ca.client(pki, "device", "gw-01", Validity::Current);
    let relay = fleet
        .relay(&pki.join("relay"), &trusted, Some(&device))
        .await;
    let sent = post_events(&relay, "imu", 20).await;
    let e = error_containing(&relay, UNKNOWN_CA).await;
    println!("unknown broker CA: {e}");
    assert_nothing_delivered(fleet.sink.store(), &relay);
    // Control: the right CA written over the file is used by the next connection.
    std::fs::copy(&fleet.ca.cert, &trusted).unwrap();
    drained(&relay).await;
    assert_stored_exactly_once(fleet.sink.store(), &relay, &sent);
    relay.stop().await;
    fleet.sink.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_device_certificate_is_refused_by_the_broker_and_a_rotated_one_delivers() {
    let tmp = tempfile::tempdir().unwrap();
    let pki = tmp.path();
    let fleet = Fleet::start(pki).await;
    let device = fleet.ca.client(pki, "device", "gw-01", Validity::Expired);
    let relay = fleet
        .relay(&pki.join("relay"), &fleet.ca.cert, Some(&device))
        .await;
    let sent = post_events(&relay, "imu", 20).await;
    let e = error_containing(&relay, CLIENT_CERT_REFUSED).await;
    println!("expired device certificate: {e}");
    assert_nothing_delivered(fleet.sink.store(), &relay);
    // Control: a renewed certificate rotated on disk, no restart.
    fleet
        .ca
        .client(pki, "renewed", "gw-01", Validity::Current)
        .install_as(&device);
    drained(&relay).await;
    assert_stored_exactly_once(fleet.sink.store(), &relay, &sent);
    relay.stop().await;
    fleet.sink.stop().await;
}

/// The `edge-relay sink` binary with its TLS flags: HTTPS requiring client certificates
/// (`--tls-cert`, `--tls-key`, `--client-ca`) and its broker over `mqtts://` (`--mqtt-ca`,
/// `--mqtt-cert`, `--mqtt-key`); one relay reaches it over each, each exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sink_binary_serves_https_and_mqtts_with_its_tls_flags() {
    use support::process::{binary, child_command, free_port, sigterm, spawn_listening, wait_exit};
    let tmp = tempfile::tempdir().unwrap();
    let pki = tmp.path();
    let ca = Ca::new(pki, "fleet");
    let broker_leaf = ca.server(pki, "broker", &["127.0.0.1"]);
    let broker = Mosquitto::start_tls(&ca.cert, &broker_leaf).await;
    let web = ca.server(pki, "web", &["127.0.0.1"]);
    let upstream = ca.client(pki, "upstream", "upstream", Validity::Current);
    let listen = free_port();
    let mut cmd = child_command(binary(), "warn");
    cmd.arg("sink")
        .args(["--listen", &listen.to_string()])
        .arg("--data-dir")
        .arg(pki.join("sink"))
        .args(["--tls-cert", &web.cert.display().to_string()])
        .args(["--tls-key", &web.key.display().to_string()])
        .args(["--client-ca", &ca.cert.display().to_string()])
        .args(["--mqtt", &broker.tls_url(), "--server-name", SERVER_NAME])
        .args(["--mqtt-ca", &ca.cert.display().to_string()])
        .args(["--mqtt-cert", &upstream.cert.display().to_string()])
        .args(["--mqtt-key", &upstream.key.display().to_string()]);
    let mut sink = spawn_listening(&mut cmd, listen, "edge-relay sink").await;

    let device = ca.client(pki, "device", "gw-01", Validity::Current);
    let mut https = relay_config(&pki.join("over-https"), &format!("https://{listen}/mcp"));
    https.upstream.tls = client_tls(&ca.cert, Some(&device));
    let over_https = start_relay(https).await;
    let mut mqtts = relay_config_mqtt(&pki.join("over-mqtts"), &broker.tls_url());
    mqtts.upstream.tls = client_tls(&ca.cert, Some(&device));
    let over_mqtts = start_relay(mqtts).await;
    let sent_https = post_events(&over_https, "imu", 100).await;
    let sent_mqtts = post_events(&over_mqtts, "imu", 100).await;
    drained(&over_https).await;
    drained(&over_mqtts).await;
    let streams = [&over_https, &over_mqtts].map(|r| r.outbox.stats().stream);
    over_https.stop().await;
    over_mqtts.stop().await;
    sigterm(&sink);
    assert!(wait_exit(&mut sink, WAIT).await.0.success());
    let store = SinkStore::open(&pki.join("sink")).unwrap();
    assert_stream_holds(&store, streams[0], &sent_https);
    assert_stream_holds(&store, streams[1], &sent_mqtts);
}
