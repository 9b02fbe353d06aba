//! The outbox's open store (sled, its syncs, the tree) and the free space on its filesystem.

use std::path::{Path, PathBuf};

use super::error::OutboxError;
use super::location::live_dir;
use super::recovery::load_or_init;
use super::stats::OutboxStats;
use crate::durable::FsSync;

/// The sled tree holding the outbox.
pub(super) const TREE: &str = "outbox";

/// An open store: sled, its syncs, the outbox tree.
pub(super) struct Store {
    pub(super) db: sled::Db,
    pub(super) sync: FsSync,
    pub(super) tree: sled::Tree,
    /// sled's directory: the data dir, or the `store-<n>` in it that `CURRENT` names
    /// ([`super::compact`]).
    pub(super) dir: PathBuf,
}

impl Store {
    /// Opens the live store of the data dir `data_dir` and reads (or creates) its counters,
    /// rolling back what a crash cut off and migrating an older layout.
    pub(super) fn open(
        data_dir: &Path,
        cache_bytes: u64,
    ) -> Result<(Store, OutboxStats), OutboxError> {
        let dir = live_dir(data_dir)?;
        // sled's own `flush` is not a real fsync on Linux: every group commit ends in
        // `FsSync::flush` (see `durable`). `Mode` is left out: sled 0.34 stores it but never
        // reads it.
        let (db, sync) = crate::durable::open(&dir, cache_bytes)?;
        let tree = db.open_tree(TREE)?;
        let stats = load_or_init(&tree)?;
        Ok((
            Store {
                db,
                sync,
                tree,
                dir,
            },
            stats,
        ))
    }
}

/// Bytes available to the daemon on the filesystem holding `dir` (statvfs `f_bavail`).
pub(super) fn free_bytes(dir: &Path) -> std::io::Result<u64> {
    use std::os::unix::ffi::OsStrExt;
    let path = std::ffi::CString::new(dir.as_os_str().as_bytes())?;
    let mut st = std::mem::MaybeUninit::<libc::statvfs>::uninit();
    // SAFETY: `path` is NUL-terminated and `st` is written by statvfs before it is read.
    let rc = unsafe { libc::statvfs(path.as_ptr(), st.as_mut_ptr()) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: statvfs returned 0, so it filled `st`.
    let st = unsafe { st.assume_init() };
    // The field types are 32 bits wide on armv7, 64 on x86_64 and aarch64.
    #[allow(clippy::useless_conversion)]
    Ok(u64::from(st.f_bavail).saturating_mul(u64::from(st.f_frsize)))
}
