//! An in-memory FUSE filesystem that loses, on a power cut, every write not yet fsynced: the
//! model of Jepsen's LazyFS, mounted by the test process itself (crate `fuser`).
//!
//! The model, per regular file: writes, `truncate`/`ftruncate` and `fallocate` change only its
//! volatile content; `fsync` or `fdatasync` of the file makes its whole current content (bytes
//! and size) durable; [`LazyFs::cut`] puts every file back to its last durable content (a file
//! never synced becomes empty). `sync_file_range` is not a sync: it never reaches the
//! filesystem (no page cache here, see below), as on a drive whose cache is lost with power.
//!
//! Namespace operations (create, mkdir, unlink, rmdir, rename) are durable at once, as in
//! LazyFS: a cut never brings back a deleted file nor removes a created one, it only empties
//! it. This tests the data path, not missing directory fsyncs (which journaling filesystems
//! mostly forgive). An unlinked file stays readable through its open handles until closed.
//!
//! A cut has an instant, [`LazyFs::power_off`] (or the `k`-th sync after
//! [`LazyFs::power_off_at_sync`], to land a cut exactly between two syncs of a commit): from
//! then on nothing reaches the device (changes fail with EIO) and syncs are held unanswered,
//! so no process can act on a sync the cut swallowed; the test then kills the processes,
//! [`LazyFs::fail_held_syncs`] lets them die, and [`LazyFs::cut`] drops what was not durable.
//!
//! The kernel is kept from hiding the model: files are opened with `FOPEN_DIRECT_IO` (no page
//! cache, so every write and read reaches this filesystem and a `kill -9` leaves nothing
//! behind in the kernel), attributes and entries have a zero TTL (a cut changes sizes). Locks
//! (`flock`, POSIX locks) are not implemented, so the kernel keeps them locally per mount,
//! which is all sled's exclusive `flock` on its log needs.

use std::ffi::CString;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use fuser::{BackgroundSession, Errno, MountOption};

mod fuse;
mod state;

use fuse::Served;
use state::{Kind, Power, State, lock};

/// Source name of every mount (`/proc/mounts`), followed by `-<pid>` of the test process.
pub const FS_NAME: &str = "edge-relay-lazyfs";
/// Granularity of the undo record: the durable bytes of a page are saved before its first change
/// after a sync.
const PAGE: u64 = 4096;
/// Attributes and entries are never cached by the kernel: a cut changes sizes.
const TTL: Duration = Duration::ZERO;
/// Size reported by `statfs` (nothing is enforced: the store lives in the test's memory).
const CAPACITY: u64 = 16 << 30;

/// What `fsync`/`fdatasync` do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fsync {
    /// A sync makes the file's content durable (a real disk).
    Honoured,
    /// A sync does nothing, so a cut drops everything written since the mount: the negative
    /// control, a disk that lies about its flushes.
    Ignored,
}

/// Why the power-cut filesystem cannot be mounted here, if it cannot (checked before mounting).
pub fn unsupported() -> Option<String> {
    if !Path::new("/dev/fuse").exists() {
        return Some("no /dev/fuse (FUSE module not loaded, or a container without it)".into());
    }
    // SAFETY: geteuid has no preconditions and cannot fail.
    let root = unsafe { libc::geteuid() } == 0;
    let fusermount = std::env::var_os("PATH").is_some_and(|paths| {
        std::env::split_paths(&paths).any(|dir| dir.join("fusermount3").exists())
    });
    if !root && !fusermount {
        return Some("not root and no fusermount3 (apt-get install fuse3)".into());
    }
    None
}

/// A mounted [`LazyFs`]; unmounted (lazily, so never busy) when dropped.
pub struct LazyFs {
    state: Arc<Mutex<State>>,
    mountpoint: PathBuf,
    session: Option<BackgroundSession>,
}

impl LazyFs {
    /// Mounts an empty filesystem on `mountpoint` (an existing empty directory), served by a
    /// thread of this process. Mounts left by test processes that are gone are detached first.
    ///
    /// # Errors
    /// The mount failed (no FUSE, no permission): fuser's error.
    pub fn mount(mountpoint: &Path, fsync: Fsync) -> io::Result<LazyFs> {
        detach_stale_mounts();
        let state = Arc::new(Mutex::new(State::new(fsync)));
        let mut config = fuser::Config::default();
        config.mount_options = vec![
            MountOption::FSName(format!("{FS_NAME}-{}", std::process::id())),
            MountOption::Subtype("lazyfs".into()),
            MountOption::RW,
            MountOption::NoAtime,
        ];
        let session = fuser::spawn_mount(
            Served {
                state: state.clone(),
            },
            mountpoint,
            &config,
        )?;
        Ok(LazyFs {
            state,
            mountpoint: mountpoint.to_owned(),
            session: Some(session),
        })
    }

    /// The mount point.
    pub fn path(&self) -> &Path {
        &self.mountpoint
    }

    /// The instant of a power cut: from now on changes fail with EIO and syncs are held
    /// unanswered (none is applied). No-op when already off.
    pub fn power_off(&self) {
        let mut s = lock(&self.state);
        s.countdown = None;
        if s.power == Power::On {
            s.power = Power::Off;
        }
    }

    /// Powers off at the `k`-th sync (`fsync`, `fdatasync`, `fsyncdir`; `k` >= 1) from now,
    /// before applying it: a cut exactly between two syncs.
    pub fn power_off_at_sync(&self, k: u32) {
        lock(&self.state).countdown = Some(k.max(1));
    }

    /// Takes back an armed [`LazyFs::power_off_at_sync`] whose sync never came.
    pub fn disarm(&self) {
        lock(&self.state).countdown = None;
    }

    /// What syncs do from now on (a disk that starts lying about its flushes).
    pub fn set_fsync(&self, fsync: Fsync) {
        lock(&self.state).fsync = fsync;
    }

    /// Powered off (by [`LazyFs::power_off`] or at the armed sync).
    pub fn is_off(&self) -> bool {
        lock(&self.state).power != Power::On
    }

    /// Answers the held syncs, and every later one, with EIO. Call once the processes using
    /// the filesystem are SIGKILLed: a thread in a sync dies when it returns, without running.
    pub fn fail_held_syncs(&self) {
        let mut s = lock(&self.state);
        s.power = Power::Dead;
        for reply in s.held.drain(..) {
            reply.error(Errno::EIO);
        }
    }

    /// The cut: every file goes back to its last durable content, and the power comes back.
    /// Call after [`LazyFs::power_off`], the kill and the reap of every process using the
    /// filesystem. Returns what it dropped, one `path: size -> size` per changed file.
    pub fn cut(&self) -> Vec<String> {
        self.cut_keeping(&mut || false)
    }

    /// [`LazyFs::cut`] on a drive that wrote back part of its cache before the power went:
    /// each page written since its file's last sync (and each grown size) survives with
    /// probability 1/2, drawn from `seed`. A store must recover from any such subset: this is
    /// where a commit's writes reach the medium only in part, and out of order.
    pub fn cut_torn(&self, seed: u64) -> Vec<String> {
        use rand::{RngExt as _, SeedableRng as _};
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        self.cut_keeping(&mut || rng.random_bool(0.5))
    }

    fn cut_keeping(&self, reached: &mut dyn FnMut() -> bool) -> Vec<String> {
        let mut s = lock(&self.state);
        assert!(
            s.held.is_empty(),
            "cut with syncs still held: fail_held_syncs first"
        );
        s.power = Power::On;
        s.countdown = None;
        let mut dropped = Vec::new();
        for (&ino, node) in &mut s.nodes {
            if let Kind::File(data) = &mut node.kind {
                let before = data.data.len();
                if data.cut(reached) {
                    dropped.push((ino, before, data.data.len()));
                }
            }
        }
        let mut dropped: Vec<String> = dropped
            .into_iter()
            .map(|(ino, before, after)| format!("{}: {before} -> {after}", s.path(ino)))
            .collect();
        dropped.sort();
        dropped
    }
}

impl Drop for LazyFs {
    /// Lets any process still in a held sync die (a failing test), then detaches the mount.
    fn drop(&mut self) {
        self.fail_held_syncs();
        detach(&self.mountpoint);
        drop(self.session.take());
    }
}

/// `umount2(path, MNT_DETACH)`: never busy; errors (not mounted) are ignored.
fn detach(path: &Path) {
    if let Ok(c) = CString::new(path.as_os_str().as_bytes()) {
        // SAFETY: `c` is a valid NUL-terminated path for the duration of the call.
        unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
    }
}

/// Detaches mounts of this filesystem whose test process is gone (a killed test run).
fn detach_stale_mounts() {
    let mounts = std::fs::read_to_string("/proc/mounts").unwrap_or_default();
    for line in mounts.lines() {
        let mut fields = line.split(' ');
        let (Some(source), Some(target)) = (fields.next(), fields.next()) else {
            continue;
        };
        let owner = source
            .strip_prefix(FS_NAME)
            .and_then(|rest| rest.strip_prefix('-'))
            .and_then(|pid| pid.parse::<u32>().ok());
        if let Some(pid) = owner
            && !Path::new(&format!("/proc/{pid}")).exists()
        {
            // /proc/mounts escapes spaces and the like as octal; the tests' paths have none.
            detach(Path::new(target));
        }
    }
}
