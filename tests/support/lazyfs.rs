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

use std::collections::{BTreeMap, HashMap};
use std::ffi::{CString, OsStr, OsString};
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, SystemTime};

use fuser::{
    AccessFlags, BackgroundSession, Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags,
    Generation, INodeNo, LockOwner, MountOption, OpenFlags, RenameFlags, ReplyAttr, ReplyCreate,
    ReplyData, ReplyDirectory, ReplyEmpty, ReplyEntry, ReplyOpen, ReplyStatfs, ReplyWrite, Request,
    TimeOrNow, WriteFlags,
};

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
                if data.cut() {
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

fn lock(state: &Mutex<State>) -> MutexGuard<'_, State> {
    state.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The whole filesystem: a tree of inodes, in memory.
struct State {
    nodes: HashMap<u64, Node>,
    next_ino: u64,
    next_fh: u64,
    fsync: Fsync,
    power: Power,
    /// Syncs left before the power goes off ([`LazyFs::power_off_at_sync`]).
    countdown: Option<u32>,
    /// Syncs that arrived with the power off, unanswered.
    held: Vec<ReplyEmpty>,
}

/// The device's power.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Power {
    On,
    /// Cut: changes fail, syncs are held.
    Off,
    /// Cut, and its processes killed: syncs fail at once too.
    Dead,
}

struct Node {
    kind: Kind,
    parent: u64,
    perm: u16,
    uid: u32,
    gid: u32,
    /// Open handles; an unlinked file is dropped when the last one closes.
    open: u32,
    linked: bool,
    mtime: SystemTime,
    ctime: SystemTime,
}

enum Kind {
    Dir(BTreeMap<OsString, u64>),
    File(FileData),
}

/// A file's content and what a cut restores.
///
/// Invariant: outside the pages in `undo`, `data` equals the durable content on
/// `[0, durable_len)`; `undo` holds, for every page changed since the last sync, its durable
/// bytes (within `durable_len`).
#[derive(Default)]
struct FileData {
    data: Vec<u8>,
    durable_len: u64,
    undo: BTreeMap<u64, Vec<u8>>,
}

impl FileData {
    /// Saves the durable bytes of `page` before its first change since the last sync.
    fn save(&mut self, page: u64) {
        let start = page * PAGE;
        if start >= self.durable_len || self.undo.contains_key(&page) {
            return;
        }
        let end = (start + PAGE).min(self.durable_len);
        self.undo
            .insert(page, self.data[start as usize..end as usize].to_vec());
    }

    fn write(&mut self, offset: u64, bytes: &[u8]) {
        if bytes.is_empty() {
            return;
        }
        let end = offset + bytes.len() as u64;
        for page in offset / PAGE..=(end - 1) / PAGE {
            self.save(page);
        }
        if (self.data.len() as u64) < end {
            self.data.resize(end as usize, 0);
        }
        self.data[offset as usize..end as usize].copy_from_slice(bytes);
    }

    fn set_len(&mut self, len: u64) {
        let old = self.data.len() as u64;
        if len < old {
            // Pages that lose bytes; those past the durable length need no record.
            for page in len / PAGE..old.min(self.durable_len).div_ceil(PAGE) {
                self.save(page);
            }
        }
        self.data.resize(len as usize, 0);
    }

    fn sync(&mut self) {
        self.undo.clear();
        self.durable_len = self.data.len() as u64;
    }

    /// Back to the durable content; whether anything changed.
    fn cut(&mut self) -> bool {
        let changed = !self.undo.is_empty() || self.data.len() as u64 != self.durable_len;
        for (page, bytes) in std::mem::take(&mut self.undo) {
            let start = (page * PAGE) as usize;
            if self.data.len() < start + bytes.len() {
                self.data.resize(start + bytes.len(), 0);
            }
            self.data[start..start + bytes.len()].copy_from_slice(&bytes);
        }
        self.data.resize(self.durable_len as usize, 0);
        changed
    }
}

impl State {
    fn new(fsync: Fsync) -> Self {
        let mut nodes = HashMap::new();
        let root = Node::new(Kind::Dir(BTreeMap::new()), 1, 0o755, 0, 0);
        nodes.insert(INodeNo::ROOT.0, root);
        State {
            nodes,
            next_ino: 2,
            next_fh: 1,
            fsync,
            power: Power::On,
            countdown: None,
            held: Vec::new(),
        }
    }

    /// Changes reach the device only while the power is on.
    fn powered(&self) -> Result<(), Errno> {
        match self.power {
            Power::On => Ok(()),
            Power::Off | Power::Dead => Err(Errno::EIO),
        }
    }

    /// A sync of `ino` (`None`: a directory, already durable): applied and answered, held
    /// (power off, or it is the armed one), or failed.
    fn sync(&mut self, ino: Option<INodeNo>, reply: ReplyEmpty) {
        if self.power == Power::On
            && let Some(left) = self.countdown.as_mut()
        {
            *left -= 1;
            if *left == 0 {
                self.countdown = None;
                self.power = Power::Off;
            }
        }
        match self.power {
            Power::Off => return self.held.push(reply),
            Power::Dead => return reply.error(Errno::EIO),
            Power::On => {}
        }
        let honoured = self.fsync == Fsync::Honoured;
        match ino.map(|ino| self.file(ino)) {
            Some(Err(e)) => reply.error(e),
            Some(Ok(file)) => {
                if honoured {
                    file.sync();
                }
                reply.ok();
            }
            None => reply.ok(),
        }
    }

    fn node(&mut self, ino: INodeNo) -> Result<&mut Node, Errno> {
        self.nodes.get_mut(&ino.0).ok_or(Errno::ENOENT)
    }

    fn file(&mut self, ino: INodeNo) -> Result<&mut FileData, Errno> {
        match &mut self.node(ino)?.kind {
            Kind::File(f) => Ok(f),
            Kind::Dir(_) => Err(Errno::EISDIR),
        }
    }

    fn dir(&mut self, ino: INodeNo) -> Result<&mut BTreeMap<OsString, u64>, Errno> {
        match &mut self.node(ino)?.kind {
            Kind::Dir(entries) => Ok(entries),
            Kind::File(_) => Err(Errno::ENOTDIR),
        }
    }

    fn child(&mut self, parent: INodeNo, name: &OsStr) -> Result<u64, Errno> {
        self.dir(parent)?.get(name).copied().ok_or(Errno::ENOENT)
    }

    /// `ino`'s path from the root, for reports.
    fn path(&self, ino: u64) -> String {
        let mut parts = Vec::new();
        let mut at = ino;
        while at != INodeNo::ROOT.0 {
            let Some(node) = self.nodes.get(&at) else {
                break;
            };
            let name = match self.nodes.get(&node.parent).map(|p| &p.kind) {
                Some(Kind::Dir(entries)) => entries.iter().find(|(_, i)| **i == at).map(|(n, _)| n),
                _ => None,
            };
            parts.push(name.map_or_else(
                || format!("(unlinked {at})"),
                |n| n.to_string_lossy().into_owned(),
            ));
            at = node.parent;
        }
        parts.reverse();
        parts.join("/")
    }

    fn attr(&self, ino: u64) -> Result<FileAttr, Errno> {
        let node = self.nodes.get(&ino).ok_or(Errno::ENOENT)?;
        let (kind, size) = match &node.kind {
            Kind::Dir(_) => (FileType::Directory, 0),
            Kind::File(f) => (FileType::RegularFile, f.data.len() as u64),
        };
        Ok(FileAttr {
            ino: INodeNo(ino),
            size,
            blocks: size.div_ceil(512),
            atime: node.mtime,
            mtime: node.mtime,
            ctime: node.ctime,
            crtime: node.ctime,
            kind,
            perm: node.perm,
            nlink: if kind == FileType::Directory { 2 } else { 1 },
            uid: node.uid,
            gid: node.gid,
            rdev: 0,
            blksize: PAGE as u32,
            flags: 0,
        })
    }

    /// A new node `name` in `parent`; its attributes.
    fn add(
        &mut self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        kind: Kind,
        mode: u32,
    ) -> Result<FileAttr, Errno> {
        self.powered()?;
        if self.dir(parent)?.contains_key(name) {
            return Err(Errno::EEXIST);
        }
        let ino = self.next_ino;
        self.next_ino += 1;
        let perm = (mode & 0o7777) as u16;
        self.nodes
            .insert(ino, Node::new(kind, parent.0, perm, req.uid(), req.gid()));
        self.dir(parent)?.insert(name.to_owned(), ino);
        self.touch(parent.0);
        self.attr(ino)
    }

    /// Removes the entry `name` of `parent`; the node goes when no handle holds it.
    fn remove(&mut self, parent: INodeNo, name: &OsStr, want_dir: bool) -> Result<(), Errno> {
        self.powered()?;
        let ino = self.child(parent, name)?;
        match (&self.nodes[&ino].kind, want_dir) {
            (Kind::Dir(entries), true) if !entries.is_empty() => return Err(Errno::ENOTEMPTY),
            (Kind::Dir(_), false) => return Err(Errno::EISDIR),
            (Kind::File(_), true) => return Err(Errno::ENOTDIR),
            _ => {}
        }
        self.dir(parent)?.remove(name);
        self.touch(parent.0);
        self.unlinked(ino);
        Ok(())
    }

    fn unlinked(&mut self, ino: u64) {
        let node = self.nodes.get_mut(&ino).expect("a linked node exists");
        node.linked = false;
        if node.open == 0 {
            self.nodes.remove(&ino);
        }
    }

    fn open(&mut self, ino: INodeNo) -> Result<FileHandle, Errno> {
        self.node(ino)?.open += 1;
        let fh = self.next_fh;
        self.next_fh += 1;
        Ok(FileHandle(fh))
    }

    fn release(&mut self, ino: INodeNo) {
        if let Ok(node) = self.node(ino) {
            node.open = node.open.saturating_sub(1);
            if node.open == 0 && !node.linked {
                self.nodes.remove(&ino.0);
            }
        }
    }

    fn touch(&mut self, ino: u64) {
        if let Some(node) = self.nodes.get_mut(&ino) {
            node.mtime = SystemTime::now();
            node.ctime = node.mtime;
        }
    }

    fn rename(
        &mut self,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
    ) -> Result<(), Errno> {
        self.powered()?;
        if flags.intersects(RenameFlags::RENAME_EXCHANGE | RenameFlags::RENAME_WHITEOUT) {
            return Err(Errno::EINVAL);
        }
        let ino = self.child(parent, name)?;
        let moving_dir = matches!(self.nodes[&ino].kind, Kind::Dir(_));
        if let Ok(old) = self.child(newparent, newname) {
            if old == ino {
                return Ok(());
            }
            if flags.contains(RenameFlags::RENAME_NOREPLACE) {
                return Err(Errno::EEXIST);
            }
            match (&self.nodes[&old].kind, moving_dir) {
                (Kind::Dir(entries), true) if !entries.is_empty() => {
                    return Err(Errno::ENOTEMPTY);
                }
                (Kind::Dir(_), false) => return Err(Errno::EISDIR),
                (Kind::File(_), true) => return Err(Errno::ENOTDIR),
                _ => {}
            }
            self.dir(newparent)?.remove(newname);
            self.unlinked(old);
        }
        self.dir(parent)?.remove(name);
        self.dir(newparent)?.insert(newname.to_owned(), ino);
        self.node(INodeNo(ino))?.parent = newparent.0;
        self.touch(parent.0);
        self.touch(newparent.0);
        Ok(())
    }

    fn setattr(
        &mut self,
        ino: INodeNo,
        mode: Option<u32>,
        size: Option<u64>,
    ) -> Result<FileAttr, Errno> {
        if mode.is_some() || size.is_some() {
            self.powered()?;
        }
        if let Some(size) = size {
            self.file(ino)?.set_len(size);
        }
        let node = self.node(ino)?;
        if let Some(mode) = mode {
            node.perm = (mode & 0o7777) as u16;
        }
        node.ctime = SystemTime::now();
        if size.is_some() {
            node.mtime = node.ctime;
        }
        self.attr(ino.0)
    }
}

impl Node {
    fn new(kind: Kind, parent: u64, perm: u16, uid: u32, gid: u32) -> Self {
        let now = SystemTime::now();
        Node {
            kind,
            parent,
            perm,
            uid,
            gid,
            open: 0,
            linked: true,
            mtime: now,
            ctime: now,
        }
    }
}

/// The [`Filesystem`] fuser serves: each call locks the state once.
struct Served {
    state: Arc<Mutex<State>>,
}

impl Served {
    fn state(&self) -> MutexGuard<'_, State> {
        lock(&self.state)
    }
}

/// Replies `Ok(v)` with `ok(v)`, an error with its errno.
macro_rules! answer {
    ($reply:expr, $result:expr, |$v:pat_param| $ok:expr) => {
        match $result {
            Ok($v) => $ok,
            Err(e) => $reply.error(e),
        }
    };
}

impl Filesystem for Served {
    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let mut s = self.state();
        let found = s.child(parent, name).and_then(|ino| s.attr(ino));
        answer!(reply, found, |attr| reply.entry(&TTL, &attr, Generation(0)));
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        answer!(reply, self.state().attr(ino.0), |attr| reply
            .attr(&TTL, &attr));
    }

    fn setattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        _uid: Option<u32>,
        _gid: Option<u32>,
        size: Option<u64>,
        _atime: Option<TimeOrNow>,
        _mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        _fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let result = self.state().setattr(ino, mode, size);
        answer!(reply, result, |attr| reply.attr(&TTL, &attr));
    }

    fn mknod(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        _rdev: u32,
        reply: ReplyEntry,
    ) {
        if mode & libc::S_IFMT != libc::S_IFREG {
            return reply.error(Errno::EPERM);
        }
        let file = Kind::File(FileData::default());
        let result = self.state().add(req, parent, name, file, mode & !umask);
        answer!(reply, result, |attr| reply.entry(
            &TTL,
            &attr,
            Generation(0)
        ));
    }

    fn mkdir(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        reply: ReplyEntry,
    ) {
        let dir = Kind::Dir(BTreeMap::new());
        let result = self.state().add(req, parent, name, dir, mode & !umask);
        answer!(reply, result, |attr| reply.entry(
            &TTL,
            &attr,
            Generation(0)
        ));
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        answer!(reply, self.state().remove(parent, name, false), |()| reply
            .ok());
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        answer!(reply, self.state().remove(parent, name, true), |()| reply
            .ok());
    }

    fn rename(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        let result = self.state().rename(parent, name, newparent, newname, flags);
        answer!(reply, result, |()| reply.ok());
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        let mut s = self.state();
        let opened = s.file(ino).map(|_| ()).and_then(|()| {
            if flags.0 & libc::O_TRUNC != 0 {
                s.powered()?;
                s.file(ino)?.set_len(0);
            }
            s.open(ino)
        });
        answer!(reply, opened, |fh| reply
            .opened(fh, FopenFlags::FOPEN_DIRECT_IO));
    }

    fn create(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        let mut s = self.state();
        let created = match s.child(parent, name) {
            Ok(_) if flags & libc::O_EXCL != 0 => Err(Errno::EEXIST),
            Ok(ino) if flags & libc::O_TRUNC != 0 => s
                .powered()
                .and_then(|()| s.file(INodeNo(ino)))
                .map(|f| f.set_len(0))
                .and_then(|()| s.attr(ino)),
            Ok(ino) => s.file(INodeNo(ino)).map(|_| ()).and_then(|()| s.attr(ino)),
            Err(_) => s.add(
                req,
                parent,
                name,
                Kind::File(FileData::default()),
                mode & !umask,
            ),
        };
        let opened = created.and_then(|attr| Ok((attr, s.open(attr.ino)?)));
        answer!(reply, opened, |(attr, fh)| reply.created(
            &TTL,
            &attr,
            Generation(0),
            fh,
            FopenFlags::FOPEN_DIRECT_IO
        ));
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        let mut s = self.state();
        answer!(reply, s.file(ino), |f| {
            let start = (offset as usize).min(f.data.len());
            let end = (start + size as usize).min(f.data.len());
            reply.data(&f.data[start..end]);
        });
    }

    fn write(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        let mut s = self.state();
        let written = s
            .powered()
            .and_then(|()| s.file(ino))
            .map(|f| f.write(offset, data));
        if written.is_ok() {
            s.touch(ino.0);
        }
        answer!(reply, written, |()| reply.written(data.len() as u32));
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _lo: LockOwner,
        reply: ReplyEmpty,
    ) {
        reply.ok();
    }

    fn release(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        self.state().release(ino);
        reply.ok();
    }

    fn fsync(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        self.state().sync(Some(ino), reply);
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        let mut s = self.state();
        answer!(reply, s.dir(ino), |_| reply
            .opened(FileHandle(0), FopenFlags::empty()));
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let mut s = self.state();
        let parent = match s.node(ino) {
            Ok(node) => node.parent,
            Err(e) => return reply.error(e),
        };
        let entries = match s.dir(ino) {
            Ok(entries) => entries.clone(),
            Err(e) => return reply.error(e),
        };
        let listing = [
            (ino.0, FileType::Directory, OsString::from(".")),
            (parent, FileType::Directory, OsString::from("..")),
        ]
        .into_iter()
        .chain(entries.into_iter().map(|(name, child)| {
            let kind = match s.nodes[&child].kind {
                Kind::Dir(_) => FileType::Directory,
                Kind::File(_) => FileType::RegularFile,
            };
            (child, kind, name)
        }));
        for (i, (child, kind, name)) in listing.enumerate().skip(offset as usize) {
            if reply.add(INodeNo(child), i as u64 + 1, kind, &name) {
                break;
            }
        }
        reply.ok();
    }

    fn fsyncdir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        // Namespace operations are durable at once; a sync point all the same.
        self.state().sync(None, reply);
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        let s = self.state();
        let used: u64 = s
            .nodes
            .values()
            .map(|n| match &n.kind {
                Kind::File(f) => f.data.len() as u64,
                Kind::Dir(_) => 0,
            })
            .sum();
        let blocks = CAPACITY / PAGE;
        let free = blocks.saturating_sub(used.div_ceil(PAGE));
        let files = s.nodes.len() as u64;
        reply.statfs(
            blocks,
            free,
            free,
            files + 1_000_000,
            1_000_000,
            PAGE as u32,
            255,
            PAGE as u32,
        );
    }

    fn access(&self, _req: &Request, ino: INodeNo, _mask: AccessFlags, reply: ReplyEmpty) {
        answer!(reply, self.state().node(ino), |_| reply.ok());
    }

    fn fallocate(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        length: u64,
        mode: i32,
        reply: ReplyEmpty,
    ) {
        let mut s = self.state();
        if let Err(e) = s.powered() {
            return reply.error(e);
        }
        let result = match mode {
            // Allocation only: the size grows to cover the range (as volatile as a write).
            0 => s.file(ino).map(|f| {
                let end = offset + length;
                if end > f.data.len() as u64 {
                    f.set_len(end);
                }
            }),
            libc::FALLOC_FL_KEEP_SIZE => s.file(ino).map(|_| ()),
            _ => Err(Errno::EOPNOTSUPP),
        };
        answer!(reply, result, |()| reply.ok());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file() -> FileData {
        FileData::default()
    }

    #[test]
    fn a_cut_restores_the_synced_content() {
        let mut f = file();
        f.write(0, &[1; 10_000]);
        f.sync();
        f.write(5_000, &[2; 10_000]);
        f.set_len(3);
        f.write(20_000, b"tail");
        assert!(f.cut());
        assert_eq!(f.data, vec![1; 10_000]);
        assert!(!f.cut());
    }

    #[test]
    fn a_file_never_synced_is_empty_after_a_cut() {
        let mut f = file();
        f.write(100, b"abc");
        f.cut();
        assert!(f.data.is_empty());
    }

    #[test]
    fn a_sync_after_truncate_and_regrowth_keeps_the_new_content() {
        let mut f = file();
        f.write(0, &[1; 9_000]);
        f.sync();
        f.set_len(0);
        f.set_len(9_000);
        f.write(8_000, &[3; 10]);
        let now = f.data.clone();
        f.sync();
        f.write(0, &[4; 4]);
        f.cut();
        assert_eq!(f.data, now);
    }
}
