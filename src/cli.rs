//! The `edge-relay` command line: the subcommands and their flags (clap), each subcommand's
//! work in its own file. `src/main.rs` only parses, sets up logging and calls [`dispatch`].
//!
//! - `run`: [`crate::daemon::run`]; `check-config`: [`check_config`]; `status`: [`status`];
//!   `send`: [`send`]; `inspect`: [`inspect`]; `compact`: [`compact`]; `probe`: [`probe`];
//!   `sink`: [`sink`];
//!   `demo` (cargo feature `demo`): [`crate::demo`].
//! - [`local_client`]: the HTTP client these commands use to reach a running daemon.

pub mod check_config;
pub mod compact;
pub mod inspect;
pub mod local_client;
pub mod probe;
pub mod send;
pub mod sink;
pub mod status;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::config::Config;
use crate::service::shutdown;

/// Durable, resumable relay of gateway events to an upstream MCP server.
#[derive(Parser)]
#[command(version, about, long_about = None)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Subcommand)]
pub enum Command {
    /// Run the daemon: local ingest, sled outbox, relay to the upstream.
    Run {
        /// TOML config file; without it every key has its default.
        #[arg(long, short, env = "EDGE_RELAY_CONFIG")]
        config: Option<PathBuf>,
    },
    /// Validate a config file and print the effective configuration.
    CheckConfig {
        /// TOML config file.
        file: PathBuf,
    },
    /// Ask a running daemon for its status.
    Status(status::StatusArgs),
    /// Post events to a running daemon: one from flags, or a body (JSON, array or NDJSON) from stdin.
    Send(send::SendArgs),
    /// Offline look at a data dir (the daemon must be stopped): counters, disk use and the
    /// oldest backlog events as NDJSON.
    Inspect(inspect::InspectArgs),
    /// Offline compaction of a data dir (the daemon must be stopped): its live entries copied
    /// into a fresh store, giving back the disk a drained backlog held.
    Compact(compact::CompactArgs),
    /// Check the configured upstream: its MCP era, its tools against the contract, this
    /// gateway's acked seq (asked for the running daemon's stream). Non-zero exit if unmet.
    Probe {
        /// TOML config file; without it every key has its default.
        #[arg(long, short, env = "EDGE_RELAY_CONFIG")]
        config: Option<PathBuf>,
    },
    /// Run the reference upstream: an MCP server implementing edge_ingest and edge_cursor.
    Sink(sink::SinkArgs),
    /// End-to-end demo on the Daphnet recording, with upstream outages and a relay restart.
    #[cfg(feature = "demo")]
    Demo(crate::demo::DemoOptions),
}

/// Runs `command`; its exit code (failure: a check that did not pass).
///
/// # Errors
/// The command failed (printed by `main` as `error: ...`).
pub async fn dispatch(command: Command) -> anyhow::Result<ExitCode> {
    match command {
        Command::Run { config } => {
            crate::daemon::run(
                Config::load_or_default(config.as_deref())?,
                shutdown::on_signals()?,
            )
            .await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::CheckConfig { file } => Ok(check_config::run(&file)),
        Command::Status(args) => status::run(args).await,
        Command::Send(args) => send::run(args).await,
        Command::Inspect(args) => inspect::run(args),
        Command::Compact(args) => compact::run(args),
        Command::Probe { config } => probe::run(&Config::load_or_default(config.as_deref())?).await,
        Command::Sink(args) => sink::run(args).await,
        #[cfg(feature = "demo")]
        Command::Demo(options) => crate::demo::run(options).await,
    }
}
