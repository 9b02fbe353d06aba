//! The filesystem's model: inodes in memory, each file's content and what a cut restores.

use std::collections::{BTreeMap, HashMap};
use std::ffi::{OsStr, OsString};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::SystemTime;

use fuser::{Errno, FileAttr, FileHandle, FileType, INodeNo, RenameFlags, ReplyEmpty, Request};

use super::*;

pub(super) fn lock(state: &Mutex<State>) -> MutexGuard<'_, State> {
    state.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The whole filesystem: a tree of inodes, in memory.
pub(super) struct State {
    pub(super) nodes: HashMap<u64, Node>,
    pub(super) next_ino: u64,
    pub(super) next_fh: u64,
    pub(super) fsync: Fsync,
    pub(super) power: Power,
    /// Syncs left before the power goes off ([`LazyFs::power_off_at_sync`]).
    pub(super) countdown: Option<u32>,
    /// Syncs that arrived with the power off, unanswered.
    pub(super) held: Vec<ReplyEmpty>,
}

/// The device's power.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Power {
    On,
    /// Cut: changes fail, syncs are held.
    Off,
    /// Cut, and its processes killed: syncs fail at once too.
    Dead,
}

pub(super) struct Node {
    pub(super) kind: Kind,
    pub(super) parent: u64,
    pub(super) perm: u16,
    pub(super) uid: u32,
    pub(super) gid: u32,
    /// Open handles; an unlinked file is dropped when the last one closes.
    pub(super) open: u32,
    pub(super) linked: bool,
    pub(super) mtime: SystemTime,
    pub(super) ctime: SystemTime,
}

pub(super) enum Kind {
    Dir(BTreeMap<OsString, u64>),
    File(FileData),
}

/// A file's content and what a cut restores.
///
/// Invariant: outside the pages in `undo`, `data` equals the durable content on
/// `[0, durable_len)`; `undo` holds, for every page changed since the last sync, its durable
/// bytes (within `durable_len`).
#[derive(Default)]
pub(super) struct FileData {
    pub(super) data: Vec<u8>,
    pub(super) durable_len: u64,
    pub(super) undo: BTreeMap<u64, Vec<u8>>,
}

impl FileData {
    /// Saves the durable bytes of `page` before its first change since the last sync.
    pub(super) fn save(&mut self, page: u64) {
        let start = page * PAGE;
        if start >= self.durable_len || self.undo.contains_key(&page) {
            return;
        }
        let end = (start + PAGE).min(self.durable_len);
        self.undo
            .insert(page, self.data[start as usize..end as usize].to_vec());
    }

    pub(super) fn write(&mut self, offset: u64, bytes: &[u8]) {
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

    pub(super) fn set_len(&mut self, len: u64) {
        let old = self.data.len() as u64;
        if len < old {
            // Pages that lose bytes; those past the durable length need no record.
            for page in len / PAGE..old.min(self.durable_len).div_ceil(PAGE) {
                self.save(page);
            }
        }
        self.data.resize(len as usize, 0);
    }

    pub(super) fn sync(&mut self) {
        self.undo.clear();
        self.durable_len = self.data.len() as u64;
    }

    /// Back to the durable content, except what `reached` picks among the changes since the
    /// last sync: each changed page, and a grown size, is asked once and kept when it says
    /// true (a drive writes its cache back in any order, so any subset may have reached the
    /// medium). `|| false` is the plain cut. A file that shrank gets its durable content back
    /// whole. Returns whether anything changed.
    pub(super) fn cut(&mut self, reached: &mut dyn FnMut() -> bool) -> bool {
        let volatile_len = self.data.len() as u64;
        let changed = !self.undo.is_empty() || volatile_len != self.durable_len;
        let shrank = volatile_len < self.durable_len;
        let len = if volatile_len > self.durable_len && reached() {
            volatile_len
        } else {
            self.durable_len
        };
        if self.data.len() < self.durable_len as usize {
            self.data.resize(self.durable_len as usize, 0);
        }
        for (page, bytes) in std::mem::take(&mut self.undo) {
            if !shrank && reached() {
                continue;
            }
            let start = (page * PAGE) as usize;
            let end = (start + PAGE as usize).min(self.data.len());
            self.data[start..start + bytes.len()].copy_from_slice(&bytes);
            // The part of the page past the durable length was never durable.
            self.data[start + bytes.len()..end].fill(0);
        }
        for page in self.durable_len.div_ceil(PAGE)..volatile_len.div_ceil(PAGE) {
            if !reached() {
                let start = (page * PAGE) as usize;
                let end = (start + PAGE as usize).min(self.data.len());
                self.data[start..end].fill(0);
            }
        }
        self.data.resize(len as usize, 0);
        self.durable_len = len;
        changed
    }
}

impl State {
    pub(super) fn new(fsync: Fsync) -> Self {
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
    pub(super) fn powered(&self) -> Result<(), Errno> {
        match self.power {
            Power::On => Ok(()),
            Power::Off | Power::Dead => Err(Errno::EIO),
        }
    }

    /// A sync of `ino` (`None`: a directory, already durable): applied and answered, held
    /// (power off, or it is the armed one), or failed.
    pub(super) fn sync(&mut self, ino: Option<INodeNo>, reply: ReplyEmpty) {
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

    pub(super) fn node(&mut self, ino: INodeNo) -> Result<&mut Node, Errno> {
        self.nodes.get_mut(&ino.0).ok_or(Errno::ENOENT)
    }

    pub(super) fn file(&mut self, ino: INodeNo) -> Result<&mut FileData, Errno> {
        match &mut self.node(ino)?.kind {
            Kind::File(f) => Ok(f),
            Kind::Dir(_) => Err(Errno::EISDIR),
        }
    }

    pub(super) fn dir(&mut self, ino: INodeNo) -> Result<&mut BTreeMap<OsString, u64>, Errno> {
        match &mut self.node(ino)?.kind {
            Kind::Dir(entries) => Ok(entries),
            Kind::File(_) => Err(Errno::ENOTDIR),
        }
    }

    pub(super) fn child(&mut self, parent: INodeNo, name: &OsStr) -> Result<u64, Errno> {
        self.dir(parent)?.get(name).copied().ok_or(Errno::ENOENT)
    }

    /// `ino`'s path from the root, for reports.
    pub(super) fn path(&self, ino: u64) -> String {
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

    pub(super) fn attr(&self, ino: u64) -> Result<FileAttr, Errno> {
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
    pub(super) fn add(
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
    pub(super) fn remove(
        &mut self,
        parent: INodeNo,
        name: &OsStr,
        want_dir: bool,
    ) -> Result<(), Errno> {
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

    pub(super) fn unlinked(&mut self, ino: u64) {
        let node = self.nodes.get_mut(&ino).expect("a linked node exists");
        node.linked = false;
        if node.open == 0 {
            self.nodes.remove(&ino);
        }
    }

    pub(super) fn open(&mut self, ino: INodeNo) -> Result<FileHandle, Errno> {
        self.node(ino)?.open += 1;
        let fh = self.next_fh;
        self.next_fh += 1;
        Ok(FileHandle(fh))
    }

    pub(super) fn release(&mut self, ino: INodeNo) {
        if let Ok(node) = self.node(ino) {
            node.open = node.open.saturating_sub(1);
            if node.open == 0 && !node.linked {
                self.nodes.remove(&ino.0);
            }
        }
    }

    pub(super) fn touch(&mut self, ino: u64) {
        if let Some(node) = self.nodes.get_mut(&ino) {
            node.mtime = SystemTime::now();
            node.ctime = node.mtime;
        }
    }

    pub(super) fn rename(
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

    pub(super) fn setattr(
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
    pub(super) fn new(kind: Kind, parent: u64, perm: u16, uid: u32, gid: u32) -> Self {
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
        assert!(f.cut(&mut || false));
        assert_eq!(f.data, vec![1; 10_000]);
        assert!(!f.cut(&mut || false));
    }

    #[test]
    fn a_torn_cut_keeps_exactly_the_changes_it_is_told_reached() {
        let page = PAGE as usize;
        let mut f = file();
        f.write(0, &vec![1; 3 * page]);
        f.sync();
        f.write(0, &vec![2; 3 * page]);
        f.write(3 * page as u64, &vec![3; 2 * page]);
        // Asked in order: the grown size, then pages 0-2 (changed), then 3-4 (appended).
        let mut answers = [true, true, false, true, false, true].into_iter();
        assert!(f.cut(&mut || answers.next().unwrap()));
        assert_eq!(answers.next(), None);
        let pages: Vec<u8> = f.data.chunks(page).map(|p| p[0]).collect();
        assert_eq!(pages, [2, 1, 2, 0, 3]);
        assert!(f.data.chunks(page).all(|p| p.iter().all(|b| *b == p[0])));
        // What the cut left is the durable content now.
        assert!(!f.cut(&mut || false));
        assert_eq!(f.data.len(), 5 * page);
    }

    #[test]
    fn a_file_never_synced_is_empty_after_a_cut() {
        let mut f = file();
        f.write(100, b"abc");
        f.cut(&mut || false);
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
        f.cut(&mut || false);
        assert_eq!(f.data, now);
    }
}
