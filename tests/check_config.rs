//! `edge-relay check-config` (the real binary) reports everything `run` would refuse or crash
//! on, one line per problem, and a TOML error on one line.

use edge_relay_testkit as support;

use std::process::Command;

use support::process::binary;

/// Runs `check-config` on `text`; returns its exit success and stderr lines.
fn check(text: &str) -> (bool, Vec<String>) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("edge-relay.toml");
    std::fs::write(&path, text).unwrap();
    let out = Command::new(binary())
        .arg("check-config")
        .arg(&path)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    (
        out.status.success(),
        stderr.lines().map(str::to_owned).collect(),
    )
}

#[test]
fn check_config_lists_every_problem_run_would_hit() {
    let text = r#"
data_dir = "/etc/hostname/data"
[ingest.http]
token_file = "/nonexistent/ingest-token"
[ingest.mqtt]
url = "mqtt://bad host:1883"
[upstream]
url = "http://u:hunter2@upstream:99999/mcp"
token_file = "/nonexistent/upstream-token"
[buffer]
cache_bytes = 0
"#;
    let (ok, lines) = check(text);
    assert!(!ok, "{lines:#?}");
    for key in [
        "buffer.cache_bytes",
        "upstream.url",
        "ingest.mqtt.url",
        "data_dir",
        "ingest.http.token_file",
        "upstream.token_file",
    ] {
        let found = lines.iter().filter(|l| l.contains(key)).count();
        assert_eq!(found, 1, "one line for {key}: {lines:#?}");
    }
    assert_eq!(lines.len(), 6, "{lines:#?}");
    assert!(!lines.iter().any(|l| l.contains("hunter2")), "{lines:#?}");
    let (ok, lines) = check("[upstream]\nurl = \"http://\"\n");
    assert!(
        !ok && lines.len() == 1 && lines[0].contains("upstream.url"),
        "{lines:#?}"
    );
}

#[test]
fn check_config_reports_a_toml_error_on_one_line() {
    let (ok, lines) = check("[relay]\nbatch_max_event = 3\n");
    assert!(!ok);
    assert_eq!(lines.len(), 1, "{lines:#?}");
    assert!(
        lines[0].contains("line 2") && lines[0].contains("batch_max_event"),
        "{lines:#?}"
    );
    let (ok, lines) = check("");
    assert!(ok, "{lines:#?}");
}

#[test]
fn check_config_validates_the_tls_files() {
    use support::certs::{Ca, Validity};
    let tmp = tempfile::tempdir().unwrap();
    let pki = tmp.path();
    let ca = Ca::new(pki, "fleet");
    let device = ca.client(pki, "device", "gw-01", Validity::Current);
    let other = ca.client(pki, "other", "gw-02", Validity::Current);
    let expired = ca.client(pki, "expired", "gw-03", Validity::Expired);
    let data = pki.join("data");
    let config = |upstream_url: &str, cert: &std::path::Path, key: &std::path::Path| {
        format!(
            "data_dir = {data:?}\n[upstream]\nurl = \"{upstream_url}\"\n[upstream.tls]\n\
             ca_file = {:?}\ncert_file = {cert:?}\nkey_file = {key:?}\n",
            ca.cert
        )
    };
    // Control: good files pass.
    let (ok, lines) = check(&config("https://upstream/mcp", &device.cert, &device.key));
    assert!(ok, "{lines:#?}");

    let (ok, lines) = check(&config("https://upstream/mcp", &device.cert, &other.key));
    assert!(!ok && lines.len() == 1, "{lines:#?}");
    let key = std::fs::read_to_string(&other.key).unwrap();
    assert!(
        !lines[0].contains(key.lines().nth(1).unwrap()),
        "the key is never shown"
    );
    assert!(
        lines[0].contains("upstream.tls.key_file") && lines[0].contains("does not match"),
        "{lines:#?}"
    );
    let (ok, lines) = check(&config("https://upstream/mcp", &expired.cert, &expired.key));
    assert!(!ok && lines.len() == 1, "{lines:#?}");
    assert!(
        lines[0].contains("upstream.tls.cert_file") && lines[0].contains("expired"),
        "{lines:#?}"
    );
    let (ok, lines) = check(&config("https://upstream/mcp", &device.key, &device.key));
    assert!(!ok && lines.len() == 1, "{lines:#?}");
    assert!(
        lines[0].contains("upstream.tls.cert_file") && lines[0].contains("no PEM CERTIFICATE"),
        "{lines:#?}"
    );
    let missing = pki.join("missing.key");
    let (ok, lines) = check(&config("http://upstream/mcp", &device.cert, &missing));
    assert!(!ok && lines.len() == 2, "{lines:#?}");
    assert!(
        lines.iter().any(|l| l.contains("is not https://")),
        "{lines:#?}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.contains("upstream.tls.key_file") && l.contains("cannot read")),
        "{lines:#?}"
    );
    let text = format!(
        "data_dir = {data:?}\n[ingest.mqtt]\nurl = \"mqtts://broker\"\n[ingest.mqtt.tls]\n\
         ca_file = {missing:?}\n"
    );
    let (ok, lines) = check(&text);
    assert!(!ok && lines.len() == 1, "{lines:#?}");
    assert!(lines[0].contains("ingest.mqtt.tls.ca_file"), "{lines:#?}");
}
