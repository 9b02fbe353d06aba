//! `edge-relay status`: a running daemon's `GET /v1/status`, as text or raw JSON.

use std::net::SocketAddr;
use std::process::ExitCode;

use anyhow::Context;
use hyper::Method;

use crate::cli::local_client;
use crate::status::StatusReport;

/// Flags of `edge-relay status`.
#[derive(clap::Args)]
pub struct StatusArgs {
    /// Print the raw JSON of GET /v1/status.
    #[arg(long)]
    pub json: bool,
    /// Daemon's ingest address.
    #[arg(long, default_value = "127.0.0.1:7878")]
    pub addr: SocketAddr,
}

/// Asks the daemon at `args.addr` and prints its report.
///
/// # Errors
/// The daemon cannot be reached, answers other than 200, or sends a report that does not
/// parse.
pub async fn run(args: StatusArgs) -> anyhow::Result<ExitCode> {
    let (code, body) = local_client::request(args.addr, Method::GET, "/v1/status", vec![]).await?;
    anyhow::ensure!(code == 200, "daemon answered HTTP {code}: {body}");
    if args.json {
        println!("{body}");
    } else {
        let report: StatusReport = serde_json::from_str(&body).context("parsing /v1/status")?;
        print!("{}", text(&report));
    }
    Ok(ExitCode::SUCCESS)
}

/// The report as the lines `edge-relay status` prints.
pub fn text(r: &StatusReport) -> String {
    let mut out = format!(
        "gateway {} stream {}\nupstream {}{}{}\nbacklog {} events, {} bytes\nnext_seq {} acked_seq {} dropped {}\ndelivered {} events in {} batches, {} sessions\n",
        r.gateway,
        r.stream,
        r.upstream,
        r.protocol_version
            .as_ref()
            .map(|v| format!(", MCP {v}"))
            .unwrap_or_default(),
        r.last_error
            .as_ref()
            .map(|e| format!(" (last error: {e})"))
            .unwrap_or_default(),
        r.backlog_events,
        r.backlog_bytes,
        r.next_seq,
        r.acked_seq,
        r.dropped_events,
        r.events_delivered,
        r.batches_delivered,
        r.reconnects
    );
    for path in &r.stores_moved_aside {
        out.push_str(&format!(
            "store moved aside (could not be opened): {path}\n"
        ));
    }
    out
}
