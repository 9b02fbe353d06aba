//! The FUSE side: fuser's `Filesystem` calls on the model, one lock of the state per call.

use std::collections::BTreeMap;
use std::ffi::{OsStr, OsString};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::SystemTime;

use fuser::{
    AccessFlags, Errno, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo,
    LockOwner, OpenFlags, RenameFlags, ReplyAttr, ReplyCreate, ReplyData, ReplyDirectory,
    ReplyEmpty, ReplyEntry, ReplyOpen, ReplyStatfs, ReplyWrite, Request, TimeOrNow, WriteFlags,
};

use super::state::*;
use super::*;

/// The [`Filesystem`] fuser serves: each call locks the state once.
pub(super) struct Served {
    pub(super) state: Arc<Mutex<State>>,
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
