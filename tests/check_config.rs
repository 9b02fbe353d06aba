//! `edge-relay check-config` (the real binary) reports everything `run` would refuse or crash
//! on, one line per problem, and a TOML error on one line.

mod support;

use std::process::Command;

use support::process::BINARY;

/// Runs `check-config` on `text`; returns its exit success and stderr lines.
fn check(text: &str) -> (bool, Vec<String>) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("edge-relay.toml");
    std::fs::write(&path, text).unwrap();
    let out = Command::new(BINARY)
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
