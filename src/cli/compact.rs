//! `edge-relay compact`: give back the disk a drained backlog held, with the daemon stopped.

use std::path::PathBuf;
use std::process::ExitCode;

/// Flags of `edge-relay compact`.
#[derive(clap::Args)]
pub struct CompactArgs {
    /// TOML config file whose `data_dir` to compact; without it every key has its default.
    #[arg(long, short, env = "EDGE_RELAY_CONFIG")]
    pub config: Option<PathBuf>,
    /// Compact this directory instead of the config's `data_dir`.
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

/// Copies the outbox's live entries into a fresh store that replaces the old one (the swap the
/// daemon runs by itself once a drained store's log reaches `buffer.compact_min_bytes`; see
/// `outbox::compact`), and prints the sizes before and after.
///
/// # Errors
/// The config cannot be loaded, the data dir holds no store, the daemon holds the store's lock,
/// or the swap failed (the old store is then still the live one).
pub fn run(args: CompactArgs) -> anyhow::Result<ExitCode> {
    let config = crate::config::Config::load_or_default(args.config.as_deref())?;
    let dir = args.data_dir.unwrap_or(config.data_dir);
    anyhow::ensure!(
        crate::outbox::holds_store(&dir),
        "{} holds no edge-relay store",
        dir.display()
    );
    let done = crate::outbox::compact_offline(&dir, config.buffer.cache_bytes).map_err(|e| {
        anyhow::anyhow!(
            "compacting {}: {e} (is the daemon running? it compacts by itself)",
            dir.display()
        )
    })?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&done)?);
    } else {
        println!(
            "compacted {}: {} -> {} bytes; next_seq {} acked_seq {} backlog {} events",
            done.store.display(),
            done.before_bytes,
            done.after_bytes,
            done.stats.next_seq,
            done.stats.acked_seq,
            done.stats.backlog_events
        );
    }
    Ok(ExitCode::SUCCESS)
}
