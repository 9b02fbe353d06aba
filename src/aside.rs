//! A store that cannot be opened is moved aside, never a crash loop (docs/DESIGN.md §7).
//!
//! sled 0.34 can panic or hang while opening a damaged store (issue 9 saw both after power
//! cuts). With `panic = "abort"` under systemd's `Restart=` that would be a crash loop with
//! every accepted, undelivered event stranded. [`open_guarded`] therefore:
//! - counts attempts in `<data_dir>/open-attempts` (fsynced before the attempt, removed after
//!   it finished), so a panic that aborts the process, or a hang that the watchdog or systemd's
//!   start timeout kills, still counts: after [`OPEN_ATTEMPTS`] unfinished attempts in a row
//!   the store is moved aside before the next one;
//! - runs the open on its own thread, catches a panic (where panics unwind) and stops waiting
//!   after [`OPEN_TIMEOUT`];
//! - moves the store aside at once when the open failed because of the store itself (damage,
//!   an unreadable layout), but never for a condition outside it (a held lock, permissions).
//!
//! Moving aside renames every file of the store into `<data_dir>/aside-<UTC time>/`, with a
//! `REASON` file; nothing is deleted, and `edge-relay inspect` can open what sled still can.
//! A new, empty store (a new stream) then starts in `data_dir`. The daemon reports moved-aside
//! stores in `status`, `STATUS=` and `/metrics` until the operator removes them.

use std::fmt::Display;
use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Unfinished opens in a row (a crash or a hang during the open) after which the store is
/// moved aside before the next attempt. More than one, so that a single power cut during an
/// open does not move a healthy store.
pub const OPEN_ATTEMPTS: u32 = 3;
/// Longest wait for an open before the store is treated as one that hangs sled. The unit's
/// `TimeoutStartSec` is longer, so this fires first.
pub const OPEN_TIMEOUT: Duration = Duration::from_secs(240);
/// The attempt counter, in the data dir.
const ATTEMPTS_FILE: &str = "open-attempts";
/// Name prefix of moved-aside stores, in the data dir.
pub const ASIDE_PREFIX: &str = "aside-";
/// Why a store was moved aside, inside its directory.
pub const REASON_FILE: &str = "REASON";

/// A store moved aside by [`open_guarded`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MovedAside {
    /// Where its files are now.
    pub path: PathBuf,
    /// Why (also in its `REASON` file).
    pub reason: String,
}

/// Opens the store in `dir` with `open`; a store that cannot be opened is moved aside and a
/// new one opened in its place (see the module docs).
///
/// `unopenable` tells a failure of the store itself (move it aside) from any other (return it).
///
/// # Errors
/// `open`'s error when it is not `unopenable`, or the new store's error; an I/O error moving
/// the store aside or writing the counter, as `io`.
pub fn open_guarded<T, E>(
    dir: &Path,
    open: impl Fn(&Path) -> Result<T, E> + Send + Sync + 'static,
    unopenable: fn(&E) -> bool,
    io: fn(io::Error) -> E,
) -> Result<(T, Option<MovedAside>), E>
where
    T: Send + 'static,
    E: Display + Send + 'static,
{
    let counter = dir.join(ATTEMPTS_FILE);
    let attempts = fs::read_to_string(&counter)
        .ok()
        .and_then(|s| s.trim().parse::<u32>().ok())
        .unwrap_or(0);
    if attempts >= OPEN_ATTEMPTS {
        let reason = format!(
            "{attempts} attempts in a row to open it never finished (sled crashed or hung)"
        );
        let moved = move_aside(dir, &reason).map_err(io)?;
        let store = open(dir)?;
        return Ok((store, Some(moved)));
    }
    write_synced(&counter, &(attempts + 1).to_string()).map_err(io)?;
    let open = std::sync::Arc::new(open);
    let attempt = {
        let (tx, rx) = std::sync::mpsc::channel();
        let (open, dir) = (open.clone(), dir.to_owned());
        std::thread::Builder::new()
            .name("store-open".into())
            .spawn(move || {
                let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| open(&dir)));
                drop(tx.send(result));
            })
            .map_err(io)?;
        rx.recv_timeout(OPEN_TIMEOUT)
    };
    let reason = match attempt {
        Ok(Ok(Ok(store))) => {
            remove_counter(&counter).map_err(io)?;
            return Ok((store, None));
        }
        Ok(Ok(Err(e))) if !unopenable(&e) => {
            remove_counter(&counter).map_err(io)?;
            return Err(e);
        }
        Ok(Ok(Err(e))) => format!("sled could not open it: {e}"),
        Ok(Err(panic)) => format!("sled panicked opening it: {}", panic_text(&panic)),
        Err(_) => format!("opening it took longer than {} s", OPEN_TIMEOUT.as_secs()),
    };
    let moved = move_aside(dir, &reason).map_err(io)?;
    let store = open(dir)?;
    Ok((store, Some(moved)))
}

/// Moved-aside stores in `dir`, oldest first.
pub fn list(dir: &Path) -> Vec<PathBuf> {
    let mut found: Vec<PathBuf> = fs::read_dir(dir)
        .into_iter()
        .flatten()
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_string_lossy().starts_with(ASIDE_PREFIX))
        .map(|e| e.path())
        .collect();
    found.sort();
    found
}

/// Renames every file of the store in `dir` into a new `aside-<time>` directory with a
/// `REASON` file, syncs both directories, and logs an error naming the path.
fn move_aside(dir: &Path, reason: &str) -> io::Result<MovedAside> {
    let stamp: String = crate::event::now_rfc3339()
        .chars()
        .filter(char::is_ascii_alphanumeric)
        .collect();
    let mut aside = dir.join(format!("{ASIDE_PREFIX}{stamp}"));
    let mut n = 1;
    while aside.exists() {
        aside = dir.join(format!("{ASIDE_PREFIX}{stamp}-{n}"));
        n += 1;
    }
    fs::create_dir(&aside)?;
    for entry in fs::read_dir(dir)? {
        let name = entry?.file_name();
        let text = name.to_string_lossy();
        if text.starts_with(ASIDE_PREFIX) {
            continue;
        }
        let to = if text == ATTEMPTS_FILE {
            aside.join(format!("{ATTEMPTS_FILE}.at-move"))
        } else {
            aside.join(&name)
        };
        fs::rename(dir.join(&name), to)?;
    }
    write_synced(&aside.join(REASON_FILE), &format!("{reason}\n"))?;
    File::open(&aside)?.sync_all()?;
    File::open(dir)?.sync_all()?;
    log::error!(path:% = aside.display(), reason = reason;
        "the store in {} could not be opened: moved it aside to {} and started a new stream \
         (its undelivered events are kept there; `edge-relay inspect --data-dir {}`)",
        dir.display(), aside.display(), aside.display());
    Ok(MovedAside {
        path: aside,
        reason: reason.to_owned(),
    })
}

fn write_synced(path: &Path, text: &str) -> io::Result<()> {
    let mut f = File::create(path)?;
    f.write_all(text.as_bytes())?;
    f.sync_all()?;
    if let Some(parent) = path.parent() {
        File::open(parent)?.sync_all()?;
    }
    Ok(())
}

fn remove_counter(counter: &Path) -> io::Result<()> {
    match fs::remove_file(counter) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

fn panic_text(panic: &Box<dyn std::any::Any + Send>) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "(no message)".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug)]
    struct Fail(&'static str, bool);
    impl Display for Fail {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str(self.0)
        }
    }
    fn unopenable(e: &Fail) -> bool {
        e.1
    }
    fn io_fail(_: io::Error) -> Fail {
        Fail("io", false)
    }

    fn store_files(dir: &Path) {
        fs::write(dir.join("db"), b"old log").unwrap();
        fs::create_dir(dir.join("blobs")).unwrap();
    }

    #[test]
    fn a_damaged_store_is_moved_aside_and_a_new_one_opened() {
        let dir = tempfile::tempdir().unwrap();
        store_files(dir.path());
        let (store, moved) = open_guarded(
            dir.path(),
            |d: &Path| {
                if fs::read(d.join("db")).is_ok() {
                    Err(Fail("corrupt log", true))
                } else {
                    Ok("new store")
                }
            },
            unopenable,
            io_fail,
        )
        .unwrap();
        assert_eq!(store, "new store");
        let moved = moved.expect("moved aside");
        assert_eq!(fs::read(moved.path.join("db")).unwrap(), b"old log");
        let reason = fs::read_to_string(moved.path.join(REASON_FILE)).unwrap();
        assert!(reason.contains("corrupt log"), "{reason}");
        assert_eq!(list(dir.path()), [moved.path]);
        assert!(!dir.path().join(ATTEMPTS_FILE).exists());
    }

    #[test]
    fn a_failure_outside_the_store_is_returned_and_nothing_moves() {
        let dir = tempfile::tempdir().unwrap();
        store_files(dir.path());
        let err = open_guarded(
            dir.path(),
            |_: &Path| Err::<(), _>(Fail("could not acquire lock", false)),
            unopenable,
            io_fail,
        )
        .unwrap_err();
        assert_eq!(err.0, "could not acquire lock");
        assert!(list(dir.path()).is_empty());
        assert!(dir.path().join("db").exists());
    }

    #[test]
    fn a_panic_moves_the_store_aside() {
        let dir = tempfile::tempdir().unwrap();
        store_files(dir.path());
        let (_, moved) = open_guarded(
            dir.path(),
            |d: &Path| {
                assert!(!d.join("db").exists(), "tried to serialize Uninitialized");
                Ok::<_, Fail>(())
            },
            unopenable,
            io_fail,
        )
        .unwrap();
        let reason = moved.expect("moved aside").reason;
        assert!(
            reason.contains("tried to serialize Uninitialized"),
            "{reason}"
        );
    }

    #[test]
    fn unfinished_attempts_in_a_row_move_the_store_aside_before_the_next() {
        let dir = tempfile::tempdir().unwrap();
        store_files(dir.path());
        // Two opens that aborted the process (the counter stays) do not move it yet.
        fs::write(dir.path().join(ATTEMPTS_FILE), "2").unwrap();
        let (_, moved) = open_guarded(
            dir.path(),
            |_: &Path| Ok::<_, Fail>(()),
            unopenable,
            io_fail,
        )
        .unwrap();
        assert!(moved.is_none());
        assert!(dir.path().join("db").exists());
        // The third unfinished one does.
        fs::write(dir.path().join(ATTEMPTS_FILE), OPEN_ATTEMPTS.to_string()).unwrap();
        let (_, moved) = open_guarded(
            dir.path(),
            |_: &Path| Ok::<_, Fail>(()),
            unopenable,
            io_fail,
        )
        .unwrap();
        let moved = moved.expect("moved aside");
        assert!(moved.reason.contains("never finished"), "{}", moved.reason);
        assert!(moved.path.join("db").exists());
        assert!(!dir.path().join("db").exists());
    }
}
