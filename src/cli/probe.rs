//! `edge-relay probe`: start a session with the configured upstream (current era preferred),
//! report the era and protocol version, whether the server also serves the other era, check
//! its tools against the contract (docs/DESIGN.md §3) and read this gateway's acked seq.

use std::fmt::Write as _;

use anyhow::Context;
use uuid::Uuid;

use crate::config::Config;
use crate::contract::CursorArgs;
use crate::tls::{ClientTls, x509};
use crate::uplink::Connector;
use crate::uplink::diagnose::Diagnosis;
use crate::uplink::{EraChoice, SessionConfig};

/// Runs the probe; returns the report text. `stream` is this gateway's stream, when known.
/// Over TLS it also names the server's certificate (subject, expiry) and the client
/// certificate this relay offers.
///
/// # Errors
/// Connecting fails (with the server's certificate, if it sent one), or the upstream does not
/// meet the contract (the message lists every problem found).
pub async fn probe(config: &Config, stream: Option<Uuid>) -> anyhow::Result<String> {
    let tls = crate::uplink::upstream_tls(config);
    let connector = crate::uplink::build_connector(config, tls.clone(), None)?;
    let session_config = SessionConfig::from_config(config);
    let mut out = String::new();
    let session = connector
        .connect(session_config.clone())
        .await
        .with_context(|| {
            let seen = certificates(&tls);
            let seen = if seen.is_empty() {
                String::new()
            } else {
                format!(" ({})", seen.join("; "))
            };
            format!("connecting to {}{seen}", connector.describe())
        })?;
    let negotiated = session.negotiated();
    let _ = writeln!(
        out,
        "upstream: {}\nserver: {}\nera: {}\nprotocol version: {}",
        connector.describe(),
        negotiated.server,
        negotiated.era(),
        negotiated.version
    );
    for line in certificates(&tls) {
        let _ = writeln!(out, "{line}");
    }
    let diagnosis = Diagnosis::of_session(&session, &session_config).await;
    let acked_seq = match (&diagnosis, stream) {
        (Ok(d), Some(stream)) if d.problems.is_empty() => {
            let args = CursorArgs {
                gateway: config.gateway_id.clone(),
                stream,
            };
            Some(session.cursor(&args).await.map(|ack| (stream, ack)))
        }
        _ => None,
    };
    session.close().await;
    let other = other_era(&*connector, &session_config, negotiated.current_era).await;
    let _ = writeln!(out, "{other}");
    let diagnosis = diagnosis?;
    for name in &diagnosis.ok {
        let _ = writeln!(out, "tool {name}: ok");
    }
    let _ = writeln!(out, "tools offered: {}", diagnosis.offered.join(", "));
    match acked_seq {
        Some(acked_seq) => {
            let (stream, ack) = acked_seq?;
            let _ = writeln!(
                out,
                "acked seq of gateway {} stream {stream}: acked_seq={} acked_id={}",
                config.gateway_id,
                ack.acked_seq.map_or("null".into(), |s| s.to_string()),
                ack.acked_id.map_or("null".into(), |s| s.to_string())
            );
        }
        None if diagnosis.problems.is_empty() => {
            let _ = writeln!(
                out,
                "acked seq: no outbox stream yet (start the daemon once)"
            );
        }
        None => {}
    }
    if diagnosis.problems.is_empty() {
        out.push_str("contract: ok\n");
        Ok(out)
    } else {
        let problems = diagnosis.problems.join("\n  - ");
        anyhow::bail!("{out}contract NOT met:\n  - {problems}")
    }
}

/// `["server certificate: ...", "client certificate: ..."]` once a TLS handshake was tried;
/// empty before (plain HTTP or MQTT).
fn certificates(tls: &ClientTls) -> Vec<String> {
    let Some(server) = tls.server_cert() else {
        return Vec::new();
    };
    let client = match tls.client_cert() {
        Ok(Some(c)) => format!("{}, expires {}", c.subject, x509::format_time(c.not_after)),
        Ok(None) => format!("none ({}.cert_file unset)", tls.section()),
        Err(e) => e.to_string(),
    };
    vec![
        format!(
            "server certificate: {}, expires {}",
            server.subject,
            x509::format_time(server.not_after)
        ),
        format!("client certificate: {client}"),
    ]
}

/// Whether the server also serves the era not negotiated: a second session start forced to
/// it, closed at once. One line: `also serves legacy: yes (2025-11-25)` or `... no (why)`.
async fn other_era(connector: &dyn Connector, config: &SessionConfig, current: bool) -> String {
    let (era, name) = if current {
        (EraChoice::Legacy, "legacy (initialize)")
    } else {
        (EraChoice::Current, "current (server/discover)")
    };
    let forced = SessionConfig {
        era,
        ..config.clone()
    };
    match connector.connect(forced).await {
        Ok(session) => {
            let version = session.negotiated().version;
            session.close().await;
            format!("also serves {name}: yes ({version})")
        }
        Err(e) => format!("also serves {name}: no ({e})"),
    }
}

/// `edge-relay probe`: asks the running daemon (if any) for its stream, probes, prints the
/// report; failure when the upstream cannot be probed or does not meet the contract.
///
/// # Errors
/// None of its own: a failed probe is printed and returned as failure.
pub async fn run(config: &Config) -> anyhow::Result<std::process::ExitCode> {
    let stream = crate::cli::local_client::request(
        config.ingest.http.listen,
        hyper::Method::GET,
        "/v1/status",
        vec![],
    )
    .await
    .ok()
    .and_then(|(_, body)| serde_json::from_str::<crate::status::StatusReport>(&body).ok())
    .map(|r| r.stream);
    match probe(config, stream).await {
        Ok(report) => {
            print!("{report}");
            Ok(std::process::ExitCode::SUCCESS)
        }
        Err(e) => {
            eprintln!("error: {e:#}");
            Ok(std::process::ExitCode::FAILURE)
        }
    }
}
