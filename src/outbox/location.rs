//! Where the outbox's store lives in the data dir: in the data dir itself (every store before
//! its first compaction) or in the `store-<n>` directory that `CURRENT` names (docs/DESIGN.md
//! §6); what an interrupted swap of [`super::compact`] left is removed at open.

use std::fs::{self, File};
use std::io;
use std::path::{Path, PathBuf};

use super::error::OutboxError;

/// The file naming the directory of the live store, in the data dir.
pub const CURRENT_FILE: &str = "CURRENT";
/// `CURRENT` while it is written, before the rename that commits a swap.
pub(super) const CURRENT_TMP: &str = "CURRENT.tmp";
/// Name prefix of a store's own directory in the data dir (`store-<n>`, n counting swaps).
pub const STORE_PREFIX: &str = "store-";
/// The live store's directory: `<data_dir>/<name>` when `CURRENT` names one, else the data dir.
/// Removes what an interrupted swap left (see the module docs).
///
/// # Errors
/// [`OutboxError::Corrupt`] when `CURRENT` is unreadable or names a directory that does not
/// exist (the data dir is then moved aside, `crate::aside`); [`OutboxError::Storage`] when the
/// leftovers cannot be removed.
pub(super) fn live_dir(data_dir: &Path) -> Result<PathBuf, OutboxError> {
    let corrupt = |reason: String| OutboxError::Corrupt { seq: 0, reason };
    let live = match fs::read(data_dir.join(CURRENT_FILE)) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => data_dir.to_owned(),
        Err(e) => return Err(OutboxError::Storage(e.into())),
        Ok(text) => {
            let text = String::from_utf8_lossy(&text);
            let name = text.trim();
            if store_number(name).is_none() {
                return Err(corrupt(format!(
                    "{CURRENT_FILE} holds {name:?}, not a store name"
                )));
            }
            let live = data_dir.join(name);
            if !live.join("db").is_file() {
                return Err(corrupt(format!(
                    "{CURRENT_FILE} names {name}, which holds no store"
                )));
            }
            live
        }
    };
    remove_stale(data_dir, &live).map_err(|e| OutboxError::Storage(e.into()))?;
    Ok(live)
}

/// Whether `data_dir` holds an outbox store: sled's log in it, or a `CURRENT` naming one.
pub fn holds_store(data_dir: &Path) -> bool {
    data_dir.join("db").is_file() || data_dir.join(CURRENT_FILE).is_file()
}

/// The `n` of a `store-<n>` name.
pub(super) fn store_number(name: &str) -> Option<u64> {
    name.strip_prefix(STORE_PREFIX)?.parse().ok()
}

/// Whether `name` is one of the files sled keeps in a store's directory (sled 0.34: the log
/// `db`, `conf`, snapshots `snap.<lsn>` and `snap.<lsn>.generating`, and `blobs/`).
fn is_sled_file(name: &str) -> bool {
    matches!(name, "db" | "conf" | "blobs") || name.starts_with("snap.")
}

/// Removes every store in `data_dir` but `live`: sled's files in the data dir itself when the
/// store lives in a `store-<n>` directory, every other `store-<n>` directory, and
/// `CURRENT.tmp`; then fsyncs the data dir if anything was removed.
pub(super) fn remove_stale(data_dir: &Path, live: &Path) -> io::Result<()> {
    let mut removed = false;
    for entry in fs::read_dir(data_dir)? {
        let entry = entry?;
        let name = entry.file_name();
        let name = name.to_string_lossy();
        let path = entry.path();
        let stale = if name == CURRENT_TMP {
            true
        } else if store_number(&name).is_some() {
            path != live
        } else {
            live != data_dir && is_sled_file(&name)
        };
        if !stale {
            continue;
        }
        if entry.file_type()?.is_dir() {
            fs::remove_dir_all(&path)?;
        } else {
            fs::remove_file(&path)?;
        }
        removed = true;
    }
    if removed {
        File::open(data_dir)?.sync_all()?;
    }
    Ok(())
}

/// Length of the store's log file (`<dir>/db`), bytes: nearly all of a sled store's disk.
pub(super) fn log_bytes(dir: &Path) -> u64 {
    fs::metadata(dir.join("db")).map_or(0, |m| m.len())
}

/// Bytes of every file under `dir`, recursively: a store's log, snapshots, `conf` and blobs, or
/// a whole data dir; what cannot be listed counts 0.
pub fn store_bytes(dir: &Path) -> u64 {
    fn walk(path: &Path) -> u64 {
        let Ok(entries) = fs::read_dir(path) else {
            return 0;
        };
        entries
            .filter_map(Result::ok)
            .map(|e| match e.metadata() {
                Ok(m) if m.is_dir() => walk(&e.path()),
                Ok(m) => m.len(),
                Err(_) => 0,
            })
            .sum()
    }
    walk(dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn current_must_name_an_existing_store() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(live_dir(dir.path()).unwrap(), dir.path());
        fs::write(dir.path().join(CURRENT_FILE), "garbage\n").unwrap();
        let e = live_dir(dir.path()).unwrap_err().to_string();
        assert!(e.contains("not a store name"), "{e}");
        fs::write(dir.path().join(CURRENT_FILE), "store-2\n").unwrap();
        let e = live_dir(dir.path()).unwrap_err().to_string();
        assert!(e.contains("names store-2, which holds no store"), "{e}");
    }

    #[test]
    fn leftovers_of_an_interrupted_swap_are_removed_and_nothing_else() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        // A swap to store-2 committed; the old in-place store and an older store-1 remain,
        // with a half-written CURRENT.tmp of a later swap and a store-3 it had begun.
        for name in [
            "store-1",
            "store-2",
            "store-3",
            "store-2/blobs",
            "blobs",
            "aside-x",
        ] {
            fs::create_dir(d.join(name)).unwrap();
        }
        for name in [
            "db",
            "conf",
            "snap.00A0",
            "store-1/db",
            "store-2/db",
            "store-3/db",
        ] {
            fs::write(d.join(name), b"x").unwrap();
        }
        fs::write(d.join("open-attempts"), b"1").unwrap();
        fs::write(d.join(CURRENT_TMP), b"store-3\n").unwrap();
        fs::write(d.join(CURRENT_FILE), b"store-2\n").unwrap();
        assert_eq!(live_dir(d).unwrap(), d.join("store-2"));
        let mut left: Vec<String> = fs::read_dir(d)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        left.sort();
        assert_eq!(left, ["CURRENT", "aside-x", "open-attempts", "store-2"]);
        assert!(d.join("store-2/db").is_file() && d.join("store-2/blobs").is_dir());
    }

    #[test]
    fn without_current_the_in_place_store_stays_and_unnamed_stores_go() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        fs::write(d.join("db"), b"x").unwrap();
        fs::create_dir(d.join("store-1")).unwrap();
        fs::write(d.join("store-1/db"), b"half a copy").unwrap();
        assert_eq!(live_dir(d).unwrap(), d);
        assert!(d.join("db").is_file());
        assert!(!d.join("store-1").exists());
    }
}
