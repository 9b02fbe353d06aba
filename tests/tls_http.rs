//! The relay and the reference upstream over HTTPS: mutual TLS delivers exactly once; a wrong
//! CA, a wrong name, a missing or expired client certificate are named errors that deliver
//! nothing and leave the acked seq where it was; files rotated on disk take effect on the next
//! connection, without a restart.

use edge_relay_testkit as support;

use std::path::Path;

use edge_relay::cli::local_client;
use edge_relay::config::{Config, TlsConfig};
use edge_relay::daemon::Daemon;
use edge_relay::sink::Eras;
use edge_relay::tls::server::ServerTls;
use support::certs::*;
use support::*;

/// A sink serving HTTPS with `server`, requiring client certificates of `client_ca` if given.
async fn https_sink(dir: &Path, server: &Leaf, client_ca: Option<&Path>) -> Sink {
    let tls = ServerTls {
        cert_file: server.cert.clone(),
        key_file: server.key.clone(),
        client_ca_file: client_ca.map(Path::to_owned),
    };
    Sink::start_tls("127.0.0.1:0".parse().unwrap(), dir, Eras::Both, Some(tls)).await
}

/// A relay to `sink` trusting `ca`, presenting `client` if given.
async fn relay(dir: &Path, sink: &Sink, ca: &Path, client: Option<&Leaf>) -> Daemon {
    relay_with(dir, sink, ca, client, None).await
}

async fn relay_with(
    dir: &Path,
    sink: &Sink,
    ca: &Path,
    client: Option<&Leaf>,
    server_name: Option<&str>,
) -> Daemon {
    start_relay(tls_config(dir, sink, ca, client, server_name)).await
}

fn tls_config(
    dir: &Path,
    sink: &Sink,
    ca: &Path,
    client: Option<&Leaf>,
    server_name: Option<&str>,
) -> Config {
    let mut config = relay_config(dir, &sink.url());
    config.upstream.tls = TlsConfig {
        server_name: server_name.map(str::to_owned),
        ..client_tls(ca, client)
    };
    config
}

/// Nothing of the relay's stream reached the upstream and its acked seq did not move.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_delivers_exactly_once_and_a_relay_without_a_client_certificate_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let pki = tmp.path();
    let ca = Ca::new(pki, "fleet");
    let server = ca.server(pki, "upstream", &["localhost", "127.0.0.1"]);
    let device = ca.client(pki, "device", "gw-01", Validity::Current);
    let sink = https_sink(&pki.join("sink"), &server, Some(&ca.cert)).await;

    // Control: the sink does require a client certificate.
    let anonymous = relay(&pki.join("anonymous"), &sink, &ca.cert, None).await;
    post_events(&anonymous, "imu", 5).await;
    let e = error_containing(&anonymous, NO_CLIENT_CERT).await;
    assert_nothing_delivered(sink.store(), &anonymous);
    println!("without a client certificate: {e}");
    anonymous.stop().await;

    let config = tls_config(&pki.join("relay"), &sink, &ca.cert, Some(&device), None);
    let relay = start_relay(config.clone()).await;
    let mut sent = post_events(&relay, "imu", 300).await;
    drained(&relay).await;
    // `/metrics` tells how long the presented client certificate has left (rcgen: until 4096).
    let (code, metrics) = local_client::request(
        relay.ingest_addr,
        hyper::Method::GET,
        "/metrics",
        Vec::new(),
    )
    .await
    .unwrap();
    assert_eq!(code, 200);
    let left: i64 = metrics
        .lines()
        .find_map(|l| {
            l.strip_prefix("edge_relay_tls_client_cert_expiry_seconds{section=\"upstream.tls\"} ")
        })
        .unwrap_or_else(|| panic!("no client certificate expiry in {metrics}"))
        .parse()
        .unwrap();
    assert!(left > 1_000 * 365 * 86_400, "{left}");
    // `probe` names both certificates.
    let probed = edge_relay::cli::probe::probe(&config, None).await.unwrap();
    assert!(
        probed.contains("server certificate: CN=localhost, expires"),
        "{probed}"
    );
    assert!(
        probed.contains("client certificate: CN=gw-01, expires"),
        "{probed}"
    );
    // A new connection after the upstream restarts handshakes again.
    let sink = sink.restart().await;
    sent.extend(post_events(&relay, "imu", 200).await);
    drained(&relay).await;
    assert_stored_exactly_once(sink.store(), &relay, &sent);
    relay.stop().await;
    sink.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_ca_names_ca_file_and_delivers_nothing_until_the_right_ca_is_on_disk() {
    let tmp = tempfile::tempdir().unwrap();
    let pki = tmp.path();
    let ca = Ca::new(pki, "fleet");
    let other = Ca::new(pki, "other");
    let server = ca.server(pki, "upstream", &["127.0.0.1"]);
    let sink = https_sink(&pki.join("sink"), &server, None).await;
    let trusted = pki.join("trusted-ca.pem");
    std::fs::copy(&other.cert, &trusted).unwrap();
    let relay = relay(&pki.join("relay"), &sink, &trusted, None).await;
    let sent = post_events(&relay, "imu", 20).await;
    let e = error_containing(&relay, UNKNOWN_CA).await;
    assert!(e.contains(&trusted.display().to_string()), "{e}");
    println!("unknown CA: {e}");
    assert_nothing_delivered(sink.store(), &relay);
    // Control: the same relay, the right CA written over the file, delivers (no restart).
    std::fs::copy(&ca.cert, &trusted).unwrap();
    drained(&relay).await;
    assert_stored_exactly_once(sink.store(), &relay, &sent);
    relay.stop().await;
    sink.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_name_mismatch_names_server_name_and_the_override_delivers() {
    let tmp = tempfile::tempdir().unwrap();
    let pki = tmp.path();
    let ca = Ca::new(pki, "fleet");
    let server = ca.server(pki, "upstream", &["upstream.fleet.example"]);
    let sink = https_sink(&pki.join("sink"), &server, None).await;
    let by_ip = relay(&pki.join("by-ip"), &sink, &ca.cert, None).await;
    post_events(&by_ip, "imu", 20).await;
    let e = error_containing(
        &by_ip,
        &[
            "server side",
            "not valid for the name",
            "upstream.tls.server_name",
        ],
    )
    .await;
    assert!(e.contains("upstream.fleet.example"), "{e}");
    println!("name mismatch: {e}");
    assert_nothing_delivered(sink.store(), &by_ip);
    by_ip.stop().await;
    // Control: the name the certificate carries, set as `server_name`.
    let named = relay_with(
        &pki.join("named"),
        &sink,
        &ca.cert,
        None,
        Some("upstream.fleet.example"),
    )
    .await;
    let sent = post_events(&named, "imu", 20).await;
    drained(&named).await;
    assert_stored_exactly_once(sink.store(), &named, &sent);
    named.stop().await;
    sink.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_client_certificate_is_refused_and_a_rotated_one_is_used_without_a_restart() {
    let tmp = tempfile::tempdir().unwrap();
    let pki = tmp.path();
    let ca = Ca::new(pki, "fleet");
    let server = ca.server(pki, "upstream", &["127.0.0.1"]);
    let device = ca.client(pki, "device", "gw-01", Validity::Expired);
    let sink = https_sink(&pki.join("sink"), &server, Some(&ca.cert)).await;
    let relay = relay(&pki.join("relay"), &sink, &ca.cert, Some(&device)).await;
    let sent = post_events(&relay, "imu", 20).await;
    let e = error_containing(&relay, CLIENT_CERT_REFUSED).await;
    assert!(e.contains(&device.cert.display().to_string()), "{e}");
    println!("expired client certificate: {e}");
    assert_nothing_delivered(sink.store(), &relay);
    // Control: a renewed certificate written over the same files is used by the next connection.
    ca.client(pki, "renewed", "gw-01", Validity::Current)
        .install_as(&device);
    drained(&relay).await;
    assert_stored_exactly_once(sink.store(), &relay, &sent);
    relay.stop().await;
    sink.stop().await;
}
