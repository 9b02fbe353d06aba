//! Durable flush of a sled store: sled's own flush, then the filesystem sync sled leaves out.
//!
//! sled 0.34 on Linux makes `flush` "durable" with `sync_file_range`, which flushes neither the
//! drive's volatile write cache nor the metadata of a grown file, and it never syncs its blob
//! files (log items over `segment_size / 4` = 128 KiB, e.g. a leaf page of 17 large events) nor
//! their directory entries. A power cut could then lose, or corrupt the store around, events a
//! producer was told "accepted". One `syncfs(2)` on the store's directory covers all of that; on
//! a dedicated data partition it costs about what an `fdatasync` of the log file costs.

use std::fs::File;
use std::io;
use std::path::Path;
use std::sync::Arc;

/// A handle on a sled store's directory, used to make each flush a real sync. Clones share it.
#[derive(Debug, Clone)]
pub struct FsSync {
    dir: Arc<File>,
}

impl FsSync {
    /// Opens `dir` (the sled store's directory) for syncing.
    ///
    /// # Errors
    /// The directory cannot be opened (missing, permissions).
    pub fn open(dir: &Path) -> io::Result<FsSync> {
        let dir = File::open(dir).map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("opening {} for fsync: {e}", dir.display()),
            )
        })?;
        Ok(FsSync { dir: Arc::new(dir) })
    }

    /// Flushes `db` and then syncs the filesystem holding it; only after `Ok` is every write
    /// made to `db` before the call on stable storage.
    ///
    /// # Errors
    /// sled's flush failed, or the sync did (`sled::Error::Io`, e.g. EIO from the device).
    pub async fn flush(&self, db: &sled::Db) -> sled::Result<()> {
        db.flush_async().await?;
        let dir = self.dir.clone();
        tokio::task::spawn_blocking(move || sync_filesystem(&dir))
            .await
            .map_err(io::Error::other)??;
        Ok(())
    }

    /// Blocking [`FsSync::flush`], for open and close paths outside the runtime's hot loop.
    ///
    /// # Errors
    /// As [`FsSync::flush`].
    pub fn flush_blocking(&self, db: &sled::Db) -> sled::Result<()> {
        db.flush()?;
        sync_filesystem(&self.dir)?;
        Ok(())
    }
}

#[cfg(target_os = "linux")]
fn sync_filesystem(dir: &File) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    // SAFETY: `dir` is an open descriptor for the whole call; syncfs only reads it.
    if unsafe { libc::syncfs(dir.as_raw_fd()) } == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

#[cfg(not(target_os = "linux"))]
fn sync_filesystem(dir: &File) -> io::Result<()> {
    // Elsewhere sled's flush already ends in fsync; syncing the directory adds its entries.
    dir.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn flush_makes_writes_readable_after_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let sync = FsSync::open(dir.path()).unwrap();
        {
            let db = sled::open(dir.path()).unwrap();
            db.insert(b"k", b"v").unwrap();
            sync.flush(&db).await.unwrap();
            sync.flush_blocking(&db).unwrap();
        }
        let db = sled::open(dir.path()).unwrap();
        assert_eq!(db.get(b"k").unwrap().as_deref(), Some(&b"v"[..]));
    }

    #[test]
    fn a_missing_dir_names_itself() {
        let err = FsSync::open(Path::new("/nonexistent/edge-relay-store")).unwrap_err();
        assert!(
            err.to_string().contains("/nonexistent/edge-relay-store"),
            "{err}"
        );
    }
}
