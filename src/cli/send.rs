//! `edge-relay send`: posts events to a running daemon's `POST /v1/events`.

use std::io::Read as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use hyper::Method;

use crate::cli::local_client;
use crate::config::Secret;

/// Flags of `edge-relay send`.
#[derive(clap::Args)]
pub struct SendArgs {
    /// Event source (sensor id, tool name); required unless --stdin.
    #[arg(long, required_unless_present = "stdin")]
    pub source: Option<String>,
    /// Event kind.
    #[arg(long, default_value = "sensor")]
    pub kind: String,
    /// Event data as JSON.
    #[arg(long, default_value = "null")]
    pub data: String,
    /// Idempotency key (UUID); a repeat returns the original seq.
    #[arg(long)]
    pub id: Option<uuid::Uuid>,
    /// Read the request body from stdin instead.
    #[arg(long, conflicts_with_all = ["source", "id"])]
    pub stdin: bool,
    /// File with the daemon's ingest token (`ingest.http.token_file`), sent as a bearer token.
    #[arg(long)]
    pub token_file: Option<PathBuf>,
    /// Daemon's ingest address.
    #[arg(long, default_value = "127.0.0.1:7878")]
    pub addr: SocketAddr,
}

/// Posts the body (stdin, or one event from the flags), prints the daemon's answer; failure
/// when it is not 200.
///
/// # Errors
/// `--data` is not JSON, stdin or the token file cannot be read, or the daemon cannot be
/// reached.
pub async fn run(args: SendArgs) -> anyhow::Result<ExitCode> {
    let token = args
        .token_file
        .as_deref()
        .map(Secret::from_file)
        .transpose()?;
    let body = if args.stdin {
        let mut buf = Vec::new();
        std::io::stdin()
            .read_to_end(&mut buf)
            .context("reading stdin")?;
        buf
    } else {
        event_body(&args)?
    };
    let (code, answer) = local_client::request_with_token(
        args.addr,
        Method::POST,
        "/v1/events",
        body,
        token.as_ref(),
    )
    .await?;
    println!("{answer}");
    if code != 200 {
        eprintln!("error: daemon answered HTTP {code}");
        return Ok(ExitCode::FAILURE);
    }
    Ok(ExitCode::SUCCESS)
}

/// The one event the flags describe, as a JSON body.
fn event_body(args: &SendArgs) -> anyhow::Result<Vec<u8>> {
    let data: serde_json::Value =
        serde_json::from_str(&args.data).context("--data is not valid JSON")?;
    let mut event = serde_json::json!({"source": args.source, "kind": args.kind, "data": data});
    if let Some(id) = args.id {
        event["id"] = serde_json::json!(id);
    }
    Ok(event.to_string().into_bytes())
}
