//! `edge-relay inspect`: an offline look at a data dir while the daemon is stopped.

use std::fmt;
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::event::Event;
use crate::outbox::{Outbox, OutboxConfig, OutboxStats};

/// What a data dir holds: the outbox counters, its size on disk and the oldest backlog events.
#[derive(Debug, Serialize)]
pub struct Inspection {
    /// The inspected directory.
    pub data_dir: PathBuf,
    /// The outbox counters as of its last fsync.
    #[serde(flatten)]
    pub stats: OutboxStats,
    /// Bytes of all files under the data dir (sled's files never shrink).
    pub disk_bytes: u64,
    /// The first backlog events, oldest first (as many as asked for).
    pub oldest: Vec<Event>,
    /// Stores moved aside inside this data dir (`aside-*`), with their `REASON`.
    pub moved_aside: Vec<(PathBuf, String)>,
}

/// `REASON` of a moved-aside store (empty when it has none).
fn reason(dir: &Path) -> String {
    std::fs::read_to_string(dir.join(crate::aside::REASON_FILE))
        .unwrap_or_default()
        .trim()
        .to_owned()
}

/// Opens the outbox in `dir` without running its writer and reads up to `events` backlog events.
///
/// Opening repairs what a crash cut off (an append past the durable `next_seq` is rolled back),
/// exactly as the daemon's next start would; nothing else is written.
///
/// # Errors
/// `dir` holds no outbox, the daemon (or another process) holds the store's lock, or a record
/// cannot be decoded.
pub fn inspect(dir: &Path, events: usize) -> anyhow::Result<Inspection> {
    anyhow::ensure!(
        crate::outbox::holds_store(dir),
        "{} holds no edge-relay store",
        dir.display()
    );
    let config = OutboxConfig {
        max_bytes: u64::MAX,
        overflow: crate::config::Overflow::Reject,
        cache_bytes: 4 << 20,
        id_retention: 0,
        min_free_bytes: 0,
        compact_min_bytes: 0,
        commit_delay_max: std::time::Duration::ZERO,
    };
    // The error's Display already carries sled's cause; as a context it would print twice.
    let (outbox, _writer) = Outbox::open(dir, config).map_err(|e| {
        let why = reason(dir);
        if why.is_empty() {
            anyhow::anyhow!(
                "opening {}: {e} (is the daemon running? then use `edge-relay status`)",
                dir.display()
            )
        } else {
            anyhow::anyhow!(
                "opening {}: {e}; this store was moved aside because: {why}",
                dir.display()
            )
        }
    })?;
    let stats = outbox.stats();
    let oldest = if events == 0 {
        Vec::new()
    } else {
        outbox.batch_after(stats.acked_seq, events, usize::MAX)?
    };
    Ok(Inspection {
        data_dir: dir.to_owned(),
        stats,
        disk_bytes: crate::outbox::store_bytes(dir),
        oldest,
        moved_aside: crate::aside::list(dir)
            .into_iter()
            .map(|path| {
                let why = reason(&path);
                (path, why)
            })
            .collect(),
    })
}

impl fmt::Display for Inspection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "data dir {}", self.data_dir.display())?;
        let s = &self.stats;
        writeln!(f, "stream {}", s.stream)?;
        writeln!(
            f,
            "next_seq {} acked_seq {} dropped {}",
            s.next_seq, s.acked_seq, s.dropped_events
        )?;
        writeln!(
            f,
            "backlog {} events, {} bytes; {} bytes on disk",
            s.backlog_events, s.backlog_bytes, self.disk_bytes
        )?;
        for (path, why) in &self.moved_aside {
            writeln!(f, "store moved aside: {} ({why})", path.display())?;
        }
        for event in &self.oldest {
            writeln!(
                f,
                "{}",
                serde_json::to_string(event).map_err(|_| fmt::Error)?
            )?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::NewEvent;
    use tokio_util::sync::CancellationToken;

    #[tokio::test]
    async fn shows_counters_and_the_oldest_backlog() {
        let dir = tempfile::tempdir().unwrap();
        {
            let (outbox, writer) = Outbox::open(
                dir.path(),
                OutboxConfig {
                    max_bytes: 1 << 20,
                    overflow: crate::config::Overflow::Reject,
                    cache_bytes: 1 << 20,
                    id_retention: 10,
                    min_free_bytes: 0,
                    compact_min_bytes: 0,
                    commit_delay_max: std::time::Duration::ZERO,
                },
            )
            .unwrap();
            let stop = CancellationToken::new();
            let task = tokio::spawn(writer.run(stop.clone()));
            let events = (0..5)
                .map(|n| NewEvent {
                    id: None,
                    source: "s".into(),
                    kind: "sensor".into(),
                    time: None,
                    data: serde_json::json!(n),
                })
                .collect();
            outbox.append(events).await.unwrap();
            outbox.mark_sent(2).await.unwrap();
            outbox.ack(2).await.unwrap();
            stop.cancel();
            task.await.unwrap();
        }
        let seen = inspect(dir.path(), 2).unwrap();
        assert_eq!(
            (
                seen.stats.next_seq,
                seen.stats.acked_seq,
                seen.stats.backlog_events
            ),
            (6, 2, 3)
        );
        let seqs: Vec<u64> = seen.oldest.iter().map(|e| e.seq).collect();
        assert_eq!(seqs, [3, 4]);
        assert!(seen.disk_bytes > 0);
        let text = seen.to_string();
        assert!(text.contains("next_seq 6 acked_seq 2"), "{text}");
    }

    #[test]
    fn an_empty_dir_is_not_a_store() {
        let dir = tempfile::tempdir().unwrap();
        let err = inspect(dir.path(), 0).unwrap_err().to_string();
        assert!(err.contains("holds no edge-relay store"), "{err}");
    }
}

/// Flags of `edge-relay inspect`.
#[derive(clap::Args)]
pub struct InspectArgs {
    /// TOML config file whose `data_dir` to inspect; without it every key has its default.
    #[arg(long, short, env = "EDGE_RELAY_CONFIG")]
    pub config: Option<PathBuf>,
    /// Inspect this directory instead of the config's `data_dir`.
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// How many of the oldest backlog events to print.
    #[arg(long, default_value_t = 0)]
    pub events: usize,
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

/// Prints the [`Inspection`] of the data dir `args` name, as text or JSON.
///
/// # Errors
/// As [`inspect`]; or the config cannot be loaded.
pub fn run(args: InspectArgs) -> anyhow::Result<std::process::ExitCode> {
    let dir = match args.data_dir {
        Some(dir) => dir,
        None => crate::config::Config::load_or_default(args.config.as_deref())?.data_dir,
    };
    let seen = inspect(&dir, args.events)?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&seen)?);
    } else {
        print!("{seen}");
    }
    Ok(std::process::ExitCode::SUCCESS)
}
