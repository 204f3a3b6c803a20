//! Regular-file data: open/create/release, read/write, truncate, fallocate,
//! fsync, and the copy-on-write that makes shared content private.
//!
//! Copy-on-write is decided by epochs. A branch's epoch changes whenever a
//! snapshot starts sharing its tree; a content object may be written in place
//! only by the branch whose current epoch it carries. Anything else (objects
//! taken over from a snapshot, or from before the branch's last snapshot) is
//! cloned first. Opening a file for writing does this before the open is
//! answered, so a later passthrough data path can hand the kernel the private
//! object directly; every write re-checks under the object's `io` lock, so a
//! snapshot taken between open and write is still respected.

use super::perm;
use super::tree::{Body, Content, Node, Tree};
use super::{BranchState, FsCore, Handle, HandleKind, OpenFlags};
use crate::attr::{Attr, FileKind};
use crate::creds::Ctx;
use crate::error::{FsError, FsResult};
use crate::ids::{BranchId, HandleId, NodeId};
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::sync::atomic::Ordering;
use std::sync::Arc;

/// Largest file size FsCore accepts (what ext4 allows with 4 KiB blocks).
const MAX_FILE_SIZE: u64 = 16 << 40;

impl FsCore {
    pub fn open(&self, ctx: &Ctx, b: BranchId, id: NodeId, flags: OpenFlags) -> FsResult<HandleId> {
        let branch = self.branch(b)?;
        {
            let t = branch.tree.read();
            let n = super::node(&t, id)?;
            match n.meta.kind {
                FileKind::Directory if flags.write => return Err(FsError::IsDir),
                FileKind::Directory => {}
                FileKind::Symlink => return Err(FsError::Loop),
                _ => {}
            }
            if flags.write || flags.truncate {
                branch.check_writable()?;
            }
            Self::check_open(ctx, &n.meta, flags.read, flags.write || flags.truncate)?;
        }
        let fh = self.add_handle(Arc::clone(&branch), id, HandleKind::File(flags));
        let prepared = (|| {
            // Truncate first: a shared file truncated to nothing needs no copy.
            if flags.truncate {
                self.truncate_branch(ctx, &branch, id, 0)?;
            }
            if flags.write {
                self.make_private(&branch, id)?;
            }
            Ok(())
        })();
        if let Err(e) = prepared {
            let _ = self.remove_handle(fh);
            return Err(e);
        }
        Ok(fh)
    }

    #[allow(clippy::too_many_arguments)]
    pub fn create(
        &self,
        ctx: &Ctx,
        b: BranchId,
        parent: NodeId,
        name: &OsStr,
        mode: u32,
        umask: u32,
        flags: OpenFlags,
        exclusive: bool,
    ) -> FsResult<(Attr, HandleId)> {
        let p = (mode & !umask & 0o7777) as u16;
        self.ensure_loaded(&self.branch(b)?, &[parent])?;
        let created = self.write_tree(b, |t| {
            let existing = super::namespace::entry(t, parent, name.as_bytes())?;
            match existing {
                Some(_) if exclusive => Err(FsError::Exists),
                Some(id) => Ok((id, false)),
                None => {
                    let body = Body::File { content: None };
                    let id = self.make_node(
                        ctx,
                        t,
                        parent,
                        name.as_bytes(),
                        FileKind::RegularFile,
                        p,
                        0,
                        body,
                    )?;
                    Ok((id, true))
                }
            }
        })?;
        let (id, new) = created;
        let fh = if new {
            // The creator may write what it created whatever the mode says.
            let branch = self.branch(b)?;
            self.add_handle(branch, id, HandleKind::File(flags))
        } else {
            self.open(ctx, b, id, flags)?
        };
        Ok((self.attr(b, id)?, fh))
    }

    pub fn release(&self, fh: HandleId) -> FsResult<()> {
        self.remove_handle(fh)
    }

    /// Whether a read-only open of node `n` of branch `b` answers from
    /// memory: FsCore's open never asks the backstore for it, and
    /// [`FsCore::open_passthrough`] (asked when `passthrough`) only when the
    /// file would go to the kernel and its object is not open yet. A hint for
    /// where to run the open; errors count as quick (they answer at once).
    pub fn read_open_is_quick(&self, b: BranchId, n: NodeId, passthrough: bool) -> bool {
        if !passthrough {
            return true;
        }
        let Ok(branch) = self.branch(b) else {
            return true;
        };
        let t = branch.tree.read();
        let Some(c) = t.get(n).and_then(|n| n.content()) else {
            return true;
        };
        let direct = c.epoch() == branch.epoch() || branch.read_only();
        !direct || (c.lower.is_none() && self.backstore.host_file_is_quick(c.id))
    }

    /// Whether releasing `fh` answers without waiting on the storage: it
    /// does unless the kernel writes the object through the handle directly
    /// (passthrough) and the object's file is not open in the backstore
    /// already (the last such handle reads the object's size and mtime into
    /// the node: an `fstat` of an open file, or an open first).
    pub fn release_is_quick(&self, fh: HandleId) -> bool {
        let Ok(h) = self.handle(fh) else {
            return true;
        };
        let writes = matches!(h.kind, HandleKind::File(f) if f.write);
        if !writes || !h.passthrough.load(Ordering::Acquire) {
            return true;
        }
        // Even with other direct writers left, this one may turn out the last
        // by the time it runs (they may be released at the same moment).
        let t = h.branch.tree.read();
        t.get(h.node)
            .and_then(|n| n.content())
            .is_none_or(|c| c.lower.is_none() && self.backstore.host_file_is_quick(c.id))
    }

    /// Offer the kernel direct access (passthrough) to handle `fh`'s data.
    ///
    /// Answers the content object's host file when the handle may use it
    /// directly: the object must be this branch's own, so that no later
    /// copy-on-write replaces it under the kernel; writers get one created or
    /// copied if needed. Answers `None` (serve through FsCore) for readers of
    /// shared or empty content. From then on FsCore treats the handle as one
    /// that changes the object behind its back: snapshot-create copies the
    /// object for the snapshot, and sizes come from the object while it writes.
    pub fn open_passthrough(&self, fh: HandleId) -> FsResult<Option<Arc<std::fs::File>>> {
        let (h, flags) = self.file_handle(fh)?;
        let branch = &h.branch;
        // Count the handle first, so a snapshot from here on copies the object
        // for itself instead of sharing it.
        self.set_direct(&h, flags.write, true);
        let content = if flags.write {
            // A write must drop the file's privileges (setuid, setgid,
            // security.capability), which FsCore does for writes it serves;
            // the kernel does not for writes it passes through
            // (FUSE_HANDLE_KILLPRIV_V2 leaves it to the server).
            let t = branch.tree.read();
            let privileged = super::node(&t, h.node).map(|n| has_privileges(n))?;
            drop(t);
            (!privileged).then(|| self.content_for_write(branch, h.node))
        } else {
            // A snapshot view's objects are never written again by anyone
            // (`snapshot_views`): the kernel may read them directly. A lower
            // file (overlay) is not handed over in a branch: a writer copies
            // it up, and readers already open must see what it writes, which
            // a descriptor of the lower file would not show them.
            let direct = |c: &&Arc<Content>| c.epoch() == branch.epoch() || branch.read_only();
            let t = branch.tree.read();
            let n = super::node(&t, h.node);
            n.map(|n| n.content().filter(direct).cloned()).transpose()
        };
        let file = match content {
            Some(Ok(c)) => self.content_file(&c).map(Some).map_err(FsError::from),
            Some(Err(e)) => Err(e),
            None => Ok(None),
        };
        if !matches!(file, Ok(Some(_))) {
            self.set_direct(&h, flags.write, false);
        }
        file
    }

    /// The kernel could not take the object after all (open_passthrough's
    /// answer was not used): serve the handle through FsCore again.
    pub fn close_passthrough(&self, fh: HandleId) -> FsResult<()> {
        let (h, flags) = self.file_handle(fh)?;
        self.set_direct(&h, flags.write, false);
        Ok(())
    }

    fn set_direct(&self, h: &Handle, writes: bool, on: bool) {
        if h.passthrough.swap(on, Ordering::AcqRel) == on {
            return;
        }
        if on {
            let mut open = h.branch.open.lock();
            let count = open.entry(h.node).or_default();
            count.passthrough += 1;
            count.passthrough_writers += u32::from(writes);
        } else {
            self.drop_direct_writer(&h.branch, h.node, writes, |count| {
                count.passthrough = count.passthrough.saturating_sub(1);
                false
            });
        }
    }

    /// Uncount a handle of node `id`: `uncount` takes it from the node's open
    /// count (answering whether the entry goes: its last handle), and with
    /// `direct_writer` one direct writer goes too. If that is the last direct
    /// writer, the object's size and mtime are first taken into the node,
    /// while it still counts, so no getattr in between sees a stale size.
    /// Answers what `uncount` did.
    ///
    /// Whether a writer is the last and its count dropping are one step for
    /// the writers of a node: apart, two writers closed at once (the kernel
    /// sends RELEASE after close(2) returns, so a file created, closed,
    /// reopened, written and closed has both in flight) each saw the other
    /// still counted, neither took the size, and the file lost its data.
    pub(super) fn drop_direct_writer(
        &self,
        branch: &BranchState,
        id: NodeId,
        direct_writer: bool,
        uncount: impl FnOnce(&mut super::OpenCount) -> bool,
    ) -> bool {
        let end = || {
            if direct_writer && branch.open_count(id).passthrough_writers == 1 {
                self.fold_direct_writes(branch, id);
            }
            let mut open = branch.open.lock();
            let count = open.entry(id).or_default();
            count.passthrough_writers = count
                .passthrough_writers
                .saturating_sub(u32::from(direct_writer));
            let gone = uncount(count);
            if gone {
                open.remove(&id);
            }
            gone
        };
        if direct_writer {
            branch.with_direct_end(id, end)
        } else {
            end()
        }
    }

    /// While the kernel writes node `id`'s object directly, take the
    /// object's size and mtime into the node now (fsync, checkpoint). Under
    /// the node's direct-end lock: a last writer's release folding the final
    /// size at the same moment must not be overwritten by a length read here
    /// before it.
    pub(super) fn fold_if_direct(&self, branch: &BranchState, id: NodeId) {
        branch.with_direct_end(id, || {
            if branch.open_count(id).passthrough_writers > 0 {
                self.fold_direct_writes(branch, id);
            }
        });
    }

    /// Take the size and time the kernel gave node `id`'s object (writing it
    /// directly) into the node. The caller holds the node's direct-end lock
    /// (`BranchState::with_direct_end`).
    fn fold_direct_writes(&self, branch: &BranchState, id: NodeId) {
        let content = {
            let t = branch.tree.read();
            t.get(id).and_then(|n| n.content().cloned())
        };
        let Some(c) = content else { return };
        self.note_object_changed(&c);
        let Ok((len, mtime)) = self.backstore.len_and_mtime(c.id) else {
            return;
        };
        let _ = Self::write_branch_tree(branch, |t| {
            let Some(mut n) = t.edit(id) else {
                return Ok(());
            };
            if n.content().is_some_and(|now| Arc::ptr_eq(now, &c)) {
                n.meta.size = len;
                n.meta.mtime = mtime;
                n.meta.ctime = n.meta.ctime.max(mtime);
                t.insert(id, n);
            }
            Ok(())
        });
    }

    /// A user set the mtime of a node the kernel may be writing directly: put
    /// it on the object too, since the object's mtime is what getattr reports then.
    pub(super) fn keep_direct_mtime(&self, b: BranchId, id: NodeId) -> FsResult<()> {
        let branch = self.branch(b)?;
        if branch.open_count(id).passthrough_writers == 0 {
            return Ok(());
        }
        let (mtime, content) = {
            let t = branch.tree.read();
            let n = super::node(&t, id)?;
            (n.meta.mtime, n.content().cloned())
        };
        if let Some(c) = content {
            self.backstore.set_mtime(c.id, mtime)?;
        }
        Ok(())
    }

    pub fn handle_target(&self, fh: HandleId) -> FsResult<(BranchId, NodeId)> {
        let h = self.handle(fh)?;
        Ok((h.branch.id, h.node))
    }

    fn file_handle(&self, fh: HandleId) -> FsResult<(Arc<Handle>, OpenFlags)> {
        let h = self.handle(fh)?;
        match h.kind {
            HandleKind::File(flags) => Ok((h, flags)),
            HandleKind::Dir(_) => Err(FsError::IsDir),
        }
    }

    /// The file size reads and seeks are bounded by: the node's, or, while the
    /// kernel writes the object directly, the object's length, as `attr`
    /// reports it. The kernel still reads passthrough files through FsCore for
    /// readahead, and takes a short answer as the end of the file.
    fn data_size(&self, h: &Handle, size: u64, content: Option<&Arc<Content>>) -> u64 {
        match content {
            Some(c) if h.branch.open_count(h.node).passthrough_writers > 0 => self
                .backstore
                .len_and_mtime(c.id)
                .map_or(size, |(len, _)| len),
            _ => size,
        }
    }

    pub fn read(&self, fh: HandleId, offset: u64, size: u32) -> FsResult<Vec<u8>> {
        let mut buf = vec![0u8; size as usize];
        let n = self.read_into(fh, offset, &mut buf)?;
        buf.truncate(n);
        Ok(buf)
    }

    /// [`FsCore::read`] into the caller's buffer (up to its length): how many
    /// bytes of it now hold the file's data. Holes read as zeros whatever
    /// the buffer held, so a reused buffer needs no clearing.
    pub fn read_into(&self, fh: HandleId, offset: u64, buf: &mut [u8]) -> FsResult<usize> {
        let (h, flags) = self.file_handle(fh)?;
        if !flags.read {
            return Err(FsError::BadHandle);
        }
        let (len, content) = {
            let t = h.branch.tree.read();
            let n = super::node(&t, h.node)?;
            if n.meta.kind == FileKind::Directory {
                return Err(FsError::IsDir);
            }
            (n.meta.size, n.content().cloned())
        };
        let len = self.data_size(&h, len, content.as_ref());
        if offset >= len {
            return Ok(0);
        }
        let n = usize::try_from(len - offset).map_or(buf.len(), |left| left.min(buf.len()));
        let buf = &mut buf[..n];
        let mut done = 0;
        if let Some(c) = content {
            while done < n {
                let got = self.content_read_at(&c, &mut buf[done..], offset + done as u64)?;
                if got == 0 {
                    break; // The object is shorter than the file: the rest is a hole.
                }
                done += got;
            }
        }
        buf[done..].fill(0);
        Ok(n)
    }

    pub fn write(&self, ctx: &Ctx, fh: HandleId, offset: u64, data: &[u8]) -> FsResult<u32> {
        let (h, flags) = self.file_handle(fh)?;
        if !flags.write {
            return Err(FsError::BadHandle);
        }
        let branch = &h.branch;
        let len = u32::try_from(data.len()).map_err(|_| FsError::Invalid)?;
        loop {
            let content = self.content_for_write(branch, h.node)?;
            let guard = if flags.append {
                Guard::Exclusive(content.io.write())
            } else {
                Guard::Shared(content.io.read())
            };
            if content.epoch() != branch.epoch() {
                // A snapshot shared it after we looked: copy again.
                drop(guard);
                continue;
            }
            let at = if flags.append {
                let t = branch.tree.read();
                super::node(&t, h.node)?.meta.size
            } else {
                offset
            };
            let end = at.checked_add(u64::from(len)).ok_or(FsError::FileTooBig)?;
            if end > MAX_FILE_SIZE {
                return Err(FsError::FileTooBig);
            }
            let written = self.backstore.write_at(content.id, data, at);
            self.note_object_changed(&content);
            written?;
            Self::write_branch_tree(branch, |t| {
                let mut n = t.edit(h.node).ok_or(FsError::NotFound)?;
                n.meta.size = n.meta.size.max(end);
                n.meta.touch_mc();
                kill_privileges(ctx, &mut n);
                t.insert(h.node, n);
                Ok(())
            })?;
            drop(guard);
            return Ok(len);
        }
    }

    pub fn fsync(&self, fh: HandleId, data_only: bool) -> FsResult<()> {
        let h = self.handle(fh)?;
        let content = {
            let t = h.branch.tree.read();
            t.get(h.node).and_then(|n| n.content().cloned())
        };
        // A lower file is never written: nothing of it to sync.
        if let Some(c) = content.filter(|c| c.lower.is_none()) {
            self.backstore.sync(c.id, data_only)?;
            // If the kernel writes the object directly, its size and mtime
            // are the file's, and must be recorded with it.
            self.fold_if_direct(&h.branch, h.node);
        }
        // The file's metadata (and every change before it) is durable too.
        if let Some(j) = self.journal.get() {
            j.sync()?;
        }
        Ok(())
    }

    pub fn fallocate(
        &self,
        ctx: &Ctx,
        fh: HandleId,
        mode: i32,
        offset: u64,
        len: u64,
    ) -> FsResult<()> {
        let (h, flags) = self.file_handle(fh)?;
        if !flags.write {
            return Err(FsError::BadHandle);
        }
        let known =
            libc::FALLOC_FL_KEEP_SIZE | libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_ZERO_RANGE;
        if mode & !known != 0 {
            return Err(FsError::NotSupported);
        }
        if mode & libc::FALLOC_FL_PUNCH_HOLE != 0 && mode & libc::FALLOC_FL_KEEP_SIZE == 0 {
            return Err(FsError::NotSupported);
        }
        if len == 0 {
            return Err(FsError::Invalid);
        }
        let end = offset.checked_add(len).ok_or(FsError::FileTooBig)?;
        if end > MAX_FILE_SIZE {
            return Err(FsError::FileTooBig);
        }
        let branch = &h.branch;
        loop {
            let content = self.content_for_write(branch, h.node)?;
            let guard = content.io.read();
            if content.epoch() != branch.epoch() {
                drop(guard);
                continue;
            }
            let size = {
                let t = branch.tree.read();
                super::node(&t, h.node)?.meta.size
            };
            // Zeroing or punching inside the file must not stop short at the
            // object's end where the file is longer (a truncate-up leaves a
            // hole), and must never shorten an object the kernel writes directly.
            content.forget_allocated();
            if self.backstore.len_and_mtime(content.id)?.0 < size {
                self.backstore.set_len(content.id, size)?;
            }
            let allocated = self.backstore.fallocate(content.id, mode, offset, len);
            self.note_object_changed(&content);
            allocated?;
            Self::write_branch_tree(branch, |t| {
                let mut n = t.edit(h.node).ok_or(FsError::NotFound)?;
                if mode & libc::FALLOC_FL_KEEP_SIZE == 0 {
                    n.meta.size = n.meta.size.max(end);
                }
                n.meta.touch_mc();
                kill_privileges(ctx, &mut n);
                t.insert(h.node, n);
                Ok(())
            })?;
            drop(guard);
            return Ok(());
        }
    }

    pub fn lseek(&self, fh: HandleId, offset: u64, whence: i32) -> FsResult<u64> {
        let (h, _) = self.file_handle(fh)?;
        let (size, content) = {
            let t = h.branch.tree.read();
            let n = super::node(&t, h.node)?;
            (n.meta.size, n.content().cloned())
        };
        let size = self.data_size(&h, size, content.as_ref());
        if offset >= size {
            return Err(FsError::Io(std::io::Error::from_raw_os_error(libc::ENXIO)));
        }
        match (whence, content) {
            (libc::SEEK_DATA, None) => {
                Err(FsError::Io(std::io::Error::from_raw_os_error(libc::ENXIO)))
            }
            (libc::SEEK_HOLE, None) => Ok(offset),
            (libc::SEEK_DATA | libc::SEEK_HOLE, Some(c)) => {
                match self.content_seek(&c, offset, whence) {
                    // Past the object's end but inside the file: a hole up to the file's end.
                    Err(e) if e.raw_os_error() == Some(libc::ENXIO) => {
                        if whence == libc::SEEK_HOLE {
                            Ok(offset)
                        } else {
                            Err(FsError::Io(e))
                        }
                    }
                    Ok(pos) => Ok(pos.min(size)),
                    Err(e) => Err(FsError::Io(e)),
                }
            }
            _ => Err(FsError::Invalid),
        }
    }

    /// Set a file's size (truncate or extend with a hole).
    pub(super) fn truncate(&self, ctx: &Ctx, b: BranchId, id: NodeId, size: u64) -> FsResult<()> {
        let branch = self.branch(b)?;
        self.truncate_branch(ctx, &branch, id, size)
    }

    fn truncate_branch(
        &self,
        ctx: &Ctx,
        branch: &BranchState,
        id: NodeId,
        size: u64,
    ) -> FsResult<()> {
        branch.check_writable()?;
        if size > MAX_FILE_SIZE {
            return Err(FsError::FileTooBig);
        }
        {
            let t = branch.tree.read();
            match super::node(&t, id)?.meta.kind {
                FileKind::RegularFile => {}
                FileKind::Directory => return Err(FsError::IsDir),
                _ => return Err(FsError::Invalid),
            }
        }
        let shared = {
            let t = branch.tree.read();
            super::node(&t, id)?
                .content()
                .is_some_and(|c| c.epoch() != branch.epoch())
        };
        if size == 0 && shared {
            // Nothing of the old bytes survives: let go of the object instead of
            // copying it. (A private object is truncated in place below: the
            // kernel may be writing it directly.)
            Self::write_branch_tree(branch, |t| {
                let mut n = t.edit(id).ok_or(FsError::NotFound)?;
                if n.meta.size != 0 || n.content().is_some() {
                    kill_privileges(ctx, &mut n);
                }
                n.body = Body::File { content: None };
                n.meta.size = 0;
                n.meta.touch_mc();
                t.insert(id, n);
                Ok(())
            })?;
            self.reap();
            return Ok(());
        }
        loop {
            let content = self.make_private(branch, id)?;
            let guard = content.as_ref().map(|c| c.io.read());
            if content
                .as_ref()
                .is_some_and(|c| c.epoch() != branch.epoch())
            {
                drop(guard);
                continue;
            }
            if let Some(c) = &content {
                let truncated = self.backstore.set_len(c.id, size);
                self.note_object_changed(c);
                truncated?;
            }
            // Under the node's direct-end lock: a direct writer's release
            // folding the object's length into the node must not read it
            // before the cut and store it after this.
            branch.with_direct_end(id, || {
                Self::write_branch_tree(branch, |t| {
                    let mut n = t.edit(id).ok_or(FsError::NotFound)?;
                    if n.meta.size != size {
                        n.meta.size = size;
                        kill_privileges(ctx, &mut n);
                    }
                    n.meta.touch_mc();
                    t.insert(id, n);
                    Ok(())
                })
            })?;
            drop(guard);
            self.reap();
            return Ok(());
        }
    }

    /// Make node `id`'s content this branch's own, cloning shared content.
    /// Answers the private object, or `None` for a file with no data yet.
    pub(super) fn make_private(
        &self,
        branch: &BranchState,
        id: NodeId,
    ) -> FsResult<Option<Arc<Content>>> {
        branch.check_writable()?;
        loop {
            let (content, epoch, size) = {
                let t = branch.tree.read();
                let n = super::node(&t, id)?;
                (n.content().cloned(), branch.epoch(), n.meta.size)
            };
            let Some(content) = content else {
                return Ok(None);
            };
            if content.epoch() == epoch {
                return Ok(Some(content));
            }
            // Shared: copy without holding the tree lock; shared objects are never
            // written in place, so the source cannot change under the copy.
            let copy = Content::new(self.copy_object(&content, size)?, epoch, &self.reaper);
            self.cow_clones.fetch_add(1, Ordering::Relaxed);
            self.note_object_changed(&copy);
            let installed = Self::write_branch_tree(branch, |t| {
                Ok(install(t, id, &content, &copy) && branch.epoch() == epoch)
            })?;
            self.reap();
            if installed {
                return Ok(Some(copy));
            }
        }
    }

    /// The private content object to write, created if the file has none yet.
    fn content_for_write(&self, branch: &BranchState, id: NodeId) -> FsResult<Arc<Content>> {
        branch.check_writable()?;
        loop {
            if let Some(c) = self.make_private(branch, id)? {
                return Ok(c);
            }
            let epoch = branch.epoch();
            // A file with no data yet may have a size (a truncate-up): its
            // first object gets that length, holes included, so that the
            // object's length is the file's wherever the kernel reads or
            // writes it directly (passthrough).
            let size = {
                let t = branch.tree.read();
                super::node(&t, id)?.meta.size
            };
            let fresh = Content::new(self.backstore.create()?, epoch, &self.reaper);
            if size > 0 {
                self.backstore.set_len(fresh.id, size)?;
            }
            self.note_object_changed(&fresh);
            let installed = Self::write_branch_tree(branch, |t| {
                let mut n = t.edit(id).ok_or(FsError::NotFound)?;
                let same_size = n.meta.size == size;
                match &mut n.body {
                    Body::File { content } if content.is_none() && same_size => {
                        *content = Some(Arc::clone(&fresh));
                        t.insert(id, n);
                        Ok(true)
                    }
                    // Someone else gave it an object, or changed its size: again.
                    Body::File { .. } => Ok(false),
                    _ => Err(FsError::Invalid),
                }
            })?;
            if installed {
                return Ok(fresh);
            }
            drop(fresh);
            self.reap();
        }
    }
}

/// Replace `old` by `new` as node `id`'s content, if `old` is still its content.
fn install(t: &mut Tree, id: NodeId, old: &Arc<Content>, new: &Arc<Content>) -> bool {
    let Some(mut n) = t.edit(id) else {
        return false;
    };
    match &mut n.body {
        Body::File { content: Some(c) } if Arc::ptr_eq(c, old) => {
            *c = Arc::clone(new);
            t.insert(id, n);
            true
        }
        _ => false,
    }
}

/// A read or write guard of a content object's `io` lock.
enum Guard<'a> {
    Shared(#[allow(dead_code)] parking_lot::RwLockReadGuard<'a, ()>),
    Exclusive(#[allow(dead_code)] parking_lot::RwLockWriteGuard<'a, ()>),
}

/// The extended attribute holding a file's capabilities.
pub(crate) const CAPABILITY_XATTR: &[u8] = b"security.capability";

/// Whether a write to `n` must change its mode or xattrs: it is setuid, setgid
/// with group-execute, or carries capabilities.
pub(crate) fn has_privileges(n: &Node) -> bool {
    perm::kill_suid(n.meta.perm) != n.meta.perm
        || n.xattrs
            .as_ref()
            .is_some_and(|x| x.contains_key(CAPABILITY_XATTR))
}

/// What a write, truncate or chown by `ctx` takes from a file, as Linux
/// does: setuid (and setgid with group-execute) unless `ctx` is root, and its
/// capabilities whoever writes.
pub(crate) fn kill_privileges(ctx: &Ctx, n: &mut Node) {
    n.meta.perm = perm::after_write(ctx, n.meta.perm);
    drop_capabilities(&mut n.xattrs);
}

/// Remove the capabilities xattr, if any.
pub(crate) fn drop_capabilities(xattrs: &mut Option<super::tree::Xattrs>) {
    if xattrs
        .as_ref()
        .is_some_and(|x| x.contains_key(CAPABILITY_XATTR))
    {
        let mut map = xattrs.as_deref().cloned().unwrap_or_default();
        map.remove(CAPABILITY_XATTR);
        *xattrs = (!map.is_empty()).then(|| Arc::new(map));
    }
}
