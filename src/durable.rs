//! Durable flush of a sled store: sled's own flush, then the filesystem syncs sled leaves out;
//! and an open that never turns a store sled cannot open into a crash loop.
//!
//! sled 0.34 on Linux makes `flush` "durable" with `sync_file_range`, which flushes neither the
//! drive's volatile write cache nor the metadata of a grown file; it never syncs its `conf`
//! file, its directory entries, or its blob files (log items over `segment_size / 4` =
//! 128 KiB), and the log entry that points at a blob can reach the disk before the blob does.
//! [`FsSync`] adds the `fdatasync`s of the log and the directory; blobs are avoided rather than
//! synced: callers keep every sled value small enough that no page ever becomes one (the
//! outbox's and the sink's stores keep values at or under 4 KiB, see `outbox::chunk`). Blobs
//! found anyway (a store written by an older version) are synced before the log each flush.

use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError, mpsc};
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

/// Largest sled value this project's stores write, bytes (keys are a few dozen bytes more). A sled leaf page holds
/// at most about 21 entries (it splits above 16; a merge adds at most 4), so with values this
/// small no page, and so no log item, reaches sled's blob threshold (`segment_size / 4` =
/// 128 KiB at the default 512 KiB segments), and sled never writes a blob file.
pub const MAX_VALUE_BYTES: usize = 4096;

/// How long [`open`] waits for a store's lock that a just-dropped handle still holds.
pub const LOCK_RELEASE_WAIT: Duration = Duration::from_secs(2);

/// Opens the sled store in `dir` with a page cache of `cache_bytes`, and its [`FsSync`];
/// waits up to [`LOCK_RELEASE_WAIT`] while the directory lock is held.
///
/// Dropping the last `sled::Db` does not release the lock at once: I/O jobs already on sled's
/// thread pool hold the file until they finish, so reopening right after a close (a restart in
/// the same process, the demo, tests) can find it still locked for a moment. Another live
/// process holding the store still fails, after the wait, with sled's lock error.
///
/// # Errors
/// sled's error: the lock is still held after the wait, or any other open failure at once; or
/// the store's files cannot be opened for syncing (`sled::Error::Io`).
pub fn open(dir: &Path, cache_bytes: u64) -> sled::Result<(sled::Db, FsSync)> {
    let config = sled::Config::new().path(dir).cache_capacity(cache_bytes);
    let db = open_waiting(dir, &config)?;
    let sync = FsSync::open(dir)?;
    Ok((db, sync))
}

/// Whether sled's error means the store itself cannot be opened (damage, a layout this build
/// cannot read), as opposed to a condition outside it (a held lock, permissions, a full disk).
pub fn is_unopenable(e: &sled::Error) -> bool {
    matches!(
        e,
        sled::Error::Corruption { .. }
            | sled::Error::ReportableBug(_)
            | sled::Error::Unsupported(_)
    )
}

/// `config.open()` on `dir`, waiting while another handle holds the store's lock, up to
/// [`LOCK_RELEASE_WAIT`].
fn open_waiting(dir: &Path, config: &sled::Config) -> sled::Result<sled::Db> {
    let deadline = Instant::now() + LOCK_RELEASE_WAIT;
    while lock_held(dir) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    if !lock_held(dir) {
        remove_unfinished_snapshots(dir)?;
    }
    config.open()
}

/// Removes the snapshot files sled had not finished (`snap.<lsn>.generating`) from the store in
/// `dir`; call only while no handle holds the store.
///
/// sled 0.34 writes a snapshot to `snap.<lsn>.generating`, fsyncs it, and only then renames it
/// to `snap.<lsn>` and removes the older one. A power cut before that fsync leaves the file empty
/// or short, yet sled's open takes the newest `snap.*` file, this one, finds it "empty/corrupt",
/// drops the complete older snapshot it had, replays the log from its start and fails with
/// "Read corrupted data" (found by the power-cut family's compaction sweep, issue 9). An
/// unfinished snapshot is never needed: the previous complete one is still there until the
/// rename.
fn remove_unfinished_snapshots(dir: &Path) -> io::Result<()> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Ok(()); // a store not created yet
    };
    let mut removed = false;
    for entry in entries {
        let entry = entry?;
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name.starts_with("snap.") && name.ends_with(".generating") {
            log::warn!(path:% = entry.path().display();
                "removing a snapshot sled had not finished writing (a crash or power cut)");
            std::fs::remove_file(entry.path())?;
            removed = true;
        }
    }
    if removed {
        File::open(dir)?.sync_all()?;
    }
    Ok(())
}

/// Whether another handle (of this process or another) holds sled's lock on `<dir>/db`. sled
/// 0.34 takes it with `flock(LOCK_EX | LOCK_NB)` (fs2) and reports a held one only as text, so
/// the lock is probed the same way here, and released at once. A store that does not exist yet
/// is not locked.
fn lock_held(dir: &Path) -> bool {
    use std::os::fd::AsRawFd as _;
    let Ok(file) = File::open(dir.join("db")) else {
        return false;
    };
    // SAFETY: `file` is open for the duration of both calls.
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
        // SAFETY: as above; closing the file would release the lock too.
        unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_UN) };
        return false;
    }
    io::Error::last_os_error().kind() == io::ErrorKind::WouldBlock
}

/// Handles on a sled store's files, used to make each flush a real sync. Clones share them.
///
/// Flushes are serialised (sled 0.34.7's `flush_async` could hang forever when called
/// concurrently, spacejam/sled#1308, fixed only after the last release; they now run on one
/// thread per store, see [`FsSync::flush`]) and shared: a caller whose writes a flush that
/// started after them already covered returns without its own.
#[derive(Debug, Clone)]
pub struct FsSync {
    inner: Arc<Inner>,
    flushes: Arc<Flushes>,
    /// Jobs for the store's sync thread, which ends once every clone is dropped.
    jobs: mpsc::Sender<FlushJob>,
}

/// One flush for the sync thread: the store, its files, and where to answer. The thread drops
/// its handles before it answers, so a store dropped after its last flush really closes.
type FlushJob = (sled::Db, Arc<Inner>, oneshot::Sender<sled::Result<()>>);

/// The body of a store's sync thread: for each job, sled's `flush`, then the syncs.
fn sync_thread(jobs: mpsc::Receiver<FlushJob>) {
    while let Ok((db, inner, reply)) = jobs.recv() {
        let done = db
            .flush()
            .and_then(|_| inner.sync().map_err(sled::Error::Io));
        drop((db, inner));
        // The caller may have gone (its task was cancelled): the flush happened all the same.
        let _ = reply.send(done);
    }
}

/// Flush requests and completions, in tickets.
#[derive(Debug, Default)]
struct Flushes {
    /// Tickets handed out: one per [`FsSync::flush`] call, after the caller's writes.
    requested: std::sync::atomic::AtomicU64,
    /// Highest ticket whose writes a completed flush covers; held while a flush runs.
    completed: tokio::sync::Mutex<u64>,
}

#[derive(Debug)]
struct Inner {
    /// sled's log file, `<dir>/db`.
    log: File,
    /// The store's directory (snapshot files are renamed into it, old ones unlinked).
    dir: File,
    /// `<dir>/blobs`, where sled writes one file per blob, named by its LSN.
    blobs: PathBuf,
    /// What the last sync saw: blob files with their synced lengths, and the directory's
    /// entries (to sync the directory only when they changed).
    synced: Mutex<Seen>,
}

#[derive(Debug, Default, PartialEq)]
struct Seen {
    blobs: Vec<(std::ffi::OsString, u64)>,
    entries: Vec<std::ffi::OsString>,
}

impl FsSync {
    /// Opens the files of the sled store in `dir` (call after sled opened it) and syncs sled's
    /// `conf` file (which sled writes without a sync) and the directories once, so a store
    /// created just now keeps its entries.
    ///
    /// # Errors
    /// A file cannot be opened or synced (missing, permissions, I/O error); the message names it.
    pub fn open(dir: &Path) -> io::Result<FsSync> {
        let named = |path: &Path, e: io::Error| {
            io::Error::new(e.kind(), format!("syncing {}: {e}", path.display()))
        };
        let log_path = dir.join("db");
        let log = File::open(&log_path).map_err(|e| named(&log_path, e))?;
        let blobs = dir.join("blobs");
        let conf = dir.join("conf");
        for path in [conf.as_path(), blobs.as_path(), dir] {
            File::open(path)
                .and_then(|f| f.sync_all())
                .map_err(|e| named(path, e))?;
        }
        let (jobs, queue) = mpsc::channel();
        std::thread::Builder::new()
            .name("store-sync".into())
            .spawn(move || sync_thread(queue))?;
        Ok(FsSync {
            inner: Arc::new(Inner {
                log,
                dir: File::open(dir).map_err(|e| named(dir, e))?,
                blobs,
                synced: Mutex::default(),
            }),
            flushes: Arc::default(),
            jobs,
        })
    }

    /// Flushes `db` and then fsyncs what sled left unsynced; only after `Ok` is every write made
    /// to `db` before the call on stable storage.
    ///
    /// Both parts run on the store's own sync thread, one handoff there and one back per
    /// flush. sled's `flush_async` and a blocking task for the syncs took two of each, and each
    /// is a thread wakeup (README, "Measured"). One long-lived thread rather than tokio's
    /// blocking pool: sled's flush on the pool's changing threads made the relay's RSS grow
    /// with the backlog (same section). The caller's task waits for the thread as for I/O, so
    /// under a paused clock (the turmoil simulation) the flush takes simulated time.
    ///
    /// # Errors
    /// sled's flush failed, or a sync did (`sled::Error::Io`, e.g. EIO from the device), or the
    /// sync thread is gone (it only ends with the last handle, or by a panic).
    pub async fn flush(&self, db: &sled::Db) -> sled::Result<()> {
        use std::sync::atomic::Ordering;
        let ticket = self.flushes.requested.fetch_add(1, Ordering::SeqCst) + 1;
        let mut completed = self.flushes.completed.lock().await;
        if *completed >= ticket {
            return Ok(());
        }
        // Every ticket up to here was taken after its writes, so this flush covers them all.
        let covers = self.flushes.requested.load(Ordering::SeqCst);
        let gone = || sled::Error::Io(io::Error::other("the store's sync thread is gone"));
        let (reply, done) = oneshot::channel();
        self.jobs
            .send((db.clone(), self.inner.clone(), reply))
            .map_err(|_| gone())?;
        done.await.map_err(|_| gone())??;
        *completed = covers;
        Ok(())
    }

    /// [`FsSync::flush`] for code outside a runtime or at open, on the calling thread.
    ///
    /// # Errors
    /// As [`FsSync::flush`].
    pub fn flush_blocking(&self, db: &sled::Db) -> sled::Result<()> {
        db.flush()?;
        self.inner.sync()?;
        Ok(())
    }
}

impl Inner {
    /// `fdatasync` of every blob file that is new or grew since the last sync (so a blob sled
    /// was still writing is synced again once complete) and of the blob directory, then of the
    /// log (its data and grown size): a durable log entry never points at a blob that is not.
    /// Then `fsync` of the store's directory when its entries changed (a new snapshot, an old
    /// one removed).
    fn sync(&self) -> io::Result<()> {
        let mut seen = self.synced.lock().unwrap_or_else(PoisonError::into_inner);
        let blobs = listing(&self.blobs, true)?;
        let blob_list: Vec<(std::ffi::OsString, u64)> = blobs
            .into_iter()
            .map(|(name, len)| (name, len.unwrap_or(0)))
            .collect();
        if blob_list != seen.blobs {
            for entry in blob_list.iter().filter(|e| !seen.blobs.contains(e)) {
                File::open(self.blobs.join(&entry.0))?.sync_data()?;
            }
            File::open(&self.blobs)?.sync_all()?;
        }
        self.log.sync_data()?;
        let entries: Vec<std::ffi::OsString> = listing(self.dir_path(), false)?
            .into_iter()
            .map(|(name, _)| name)
            .collect();
        if entries != seen.entries {
            self.dir.sync_all()?;
        }
        *seen = Seen {
            blobs: blob_list,
            entries,
        };
        Ok(())
    }

    fn dir_path(&self) -> &Path {
        self.blobs.parent().unwrap_or(Path::new("."))
    }
}

/// Sorted names in `dir`, with file lengths when `lengths`.
fn listing(dir: &Path, lengths: bool) -> io::Result<Vec<(std::ffi::OsString, Option<u64>)>> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let len = if lengths {
            Some(entry.metadata()?.len())
        } else {
            None
        };
        out.push((entry.file_name(), len));
    }
    out.sort();
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn flush_makes_writes_readable_after_reopen() {
        let dir = tempfile::tempdir().unwrap();
        {
            let db = sled::open(dir.path()).unwrap();
            let sync = FsSync::open(dir.path()).unwrap();
            db.insert(b"k", b"v").unwrap();
            sync.flush(&db).await.unwrap();
        }
        let db = sled::open(dir.path()).unwrap();
        assert_eq!(db.get(b"k").unwrap().as_deref(), Some(&b"v"[..]));
    }

    #[tokio::test]
    async fn the_sync_thread_releases_the_store_and_ends_with_the_last_handle() {
        let dir = tempfile::tempdir().unwrap();
        let (jobs, queue) = mpsc::channel();
        let thread = std::thread::spawn(move || sync_thread(queue));
        {
            let db = sled::open(dir.path()).unwrap();
            let sync = FsSync::open(dir.path()).unwrap();
            db.insert(b"k", b"v").unwrap();
            let (reply, done) = oneshot::channel();
            jobs.send((db.clone(), sync.inner.clone(), reply)).unwrap();
            done.await.unwrap().unwrap();
        }
        // The thread kept no handle on the store after answering: it opens again at once.
        let db = sled::open(dir.path()).unwrap();
        assert_eq!(db.get(b"k").unwrap().as_deref(), Some(&b"v"[..]));
        drop(jobs);
        thread.join().unwrap();
    }

    /// spacejam/sled#1308: concurrent `flush_async` calls could wait forever; the reference
    /// upstream flushes from every ingest in flight.
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn concurrent_flushes_all_complete_and_cover_their_writes() {
        let dir = tempfile::tempdir().unwrap();
        let db = sled::open(dir.path()).unwrap();
        let sync = FsSync::open(dir.path()).unwrap();
        let tasks: Vec<_> = (0..64u32)
            .map(|i| {
                let (db, sync) = (db.clone(), sync.clone());
                tokio::spawn(async move {
                    db.insert(i.to_be_bytes(), &b"v"[..]).unwrap();
                    sync.flush(&db).await.unwrap();
                })
            })
            .collect();
        let all = futures::future::join_all(tasks);
        let done = tokio::time::timeout(std::time::Duration::from_secs(60), all).await;
        assert!(
            done.expect("a flush never completed")
                .iter()
                .all(Result::is_ok)
        );
        drop(db);
        let db = sled::open(dir.path()).unwrap();
        assert_eq!(db.len(), 64);
    }

    #[tokio::test]
    async fn large_values_become_blobs_and_are_synced() {
        let dir = tempfile::tempdir().unwrap();
        let db = sled::open(dir.path()).unwrap();
        let sync = FsSync::open(dir.path()).unwrap();
        db.insert(b"big", vec![7u8; 300 * 1024]).unwrap();
        sync.flush(&db).await.unwrap();
        let blobs = std::fs::read_dir(dir.path().join("blobs")).unwrap().count();
        assert!(blobs >= 1, "a 300 KiB value is stored as a blob");
        assert_eq!(sync.inner.synced.lock().unwrap().blobs.len(), blobs);
    }

    #[test]
    fn a_store_held_by_a_live_handle_fails_after_the_wait() {
        let dir = tempfile::tempdir().unwrap();
        let _held = open(dir.path(), 1 << 20).unwrap();
        let started = Instant::now();
        let err = open(dir.path(), 1 << 20).unwrap_err().to_string();
        assert!(err.contains("could not acquire lock"), "{err}");
        assert!(started.elapsed() >= LOCK_RELEASE_WAIT);
    }

    #[test]
    fn the_lock_probe_sees_sleds_lock_and_never_keeps_it() {
        let dir = tempfile::tempdir().unwrap();
        assert!(!lock_held(dir.path()), "no store yet");
        let held = open(dir.path(), 1 << 20).unwrap();
        assert!(lock_held(dir.path()), "a live handle holds the lock");
        drop(held);
        assert!(!lock_held(dir.path()), "released with the handle");
        // The probe released what it took: sled's own lock succeeds at once.
        let started = Instant::now();
        let reopened = open(dir.path(), 1 << 20);
        assert!(reopened.is_ok(), "{:?}", reopened.err());
        assert!(started.elapsed() < LOCK_RELEASE_WAIT);
    }

    #[test]
    fn a_missing_store_names_its_file() {
        let err = FsSync::open(Path::new("/nonexistent/edge-relay-store")).unwrap_err();
        let text = err.to_string();
        assert!(text.contains("/nonexistent/edge-relay-store/db"), "{text}");
    }
}
