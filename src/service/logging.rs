//! Logging setup: the systemd journal (with structured fields) when stderr is the journal, else stderr.

use log::LevelFilter;

/// Installs the global logger once; `RUST_LOG` sets the level (`info` when unset).
///
/// Under systemd, `JOURNAL_STREAM` names stderr's device and inode; then records go to the
/// journal natively and their key-values (`gateway`, `stream`, `acked_seq`, `error`, ...)
/// become journal fields. Elsewhere env_logger writes them to stderr with `RUST_LOG`
/// filtering (`RUST_LOG=edge_relay=debug,info` style).
pub fn init() {
    if systemd_journal_logger::connected_to_journal() {
        let level = std::env::var("RUST_LOG")
            .ok()
            .and_then(|v| v.parse::<LevelFilter>().ok())
            .unwrap_or(LevelFilter::Info);
        match systemd_journal_logger::JournalLog::new() {
            Ok(journal) => {
                if journal.install().is_ok() {
                    log::set_max_level(level);
                    return;
                }
            }
            Err(e) => eprintln!("journal unavailable ({e}); logging to stderr"),
        }
    }
    let _ = env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info"))
        .format_target(false)
        .try_init();
}
