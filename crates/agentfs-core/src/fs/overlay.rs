//! Overlay mounts: the default branch starts as an existing host directory
//! (the lower directory, [`Lower`]), read in place and never written.
//!
//! Two kinds of tree node stand for what is still only in the lower directory
//! (specs/overlay.md):
//! - a lower directory whose entries are not read yet (`Body::Dir` with
//!   `lower: Some(path)` and no entries). [`FsCore::load_dir`] reads them
//!   the first time an operation needs them (a lookup in it, a readdir, a
//!   create, an unlink...): one `readdir` and one `lstat` per entry, then one
//!   commit that puts a node per entry into the tree, each a lower directory
//!   not read yet, a symlink, a special file, or a file whose content is the
//!   lower file. From then on the tree alone says what the directory holds:
//!   an unlink removes the entry (a whiteout needs no record of its own), and
//!   a directory removed and made again is an ordinary, empty directory
//!   (opaque). Mounting reads nothing but the root's `lstat`.
//! - a lower file: a [`Content`] whose `lower` is its path. Its epoch is
//!   frozen, so copy-on-write already does the rest: the first write,
//!   truncate or fallocate copies it up into a backstore object (a reflink
//!   where the two filesystems allow it); chmod, chown, utimens and xattrs
//!   change only the node. Its reads go to the lower file; a read-only open
//!   may hand the kernel the lower file for passthrough.
//!
//! Loading is a tree change like any other (journaled, so a remount goes on
//! with the same node ids), except that it is allowed on a snapshot's
//! read-only view too: it changes what is known, not what the view holds.

use super::tree::{Body, Content, Meta, Name, Node};
use super::{BranchState, FsCore};
use crate::attr::FileKind;
use crate::error::{FsError, FsResult};
use crate::ids::{ContentId, NodeId};
use crate::lower::{self, Lower, LowerEntry, LowerStat};
use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::sync::Arc;

/// The entries of one lower directory as read: what [`FsCore::load_dir`]
/// puts into every tree where that directory is still unread, and what its
/// journal record holds.
pub(crate) struct Loaded {
    pub(crate) dir: NodeId,
    pub(crate) path: Arc<[u8]>,
    pub(crate) entries: imbl::OrdMap<Name, NodeId>,
    pub(crate) children: Vec<(Name, NodeId, Arc<Node>)>,
    pub(crate) subdirs: u32,
}

/// The directory node each distinct unread node became, so trees that
/// shared one node share its successor too.
#[derive(Default)]
pub(crate) struct Shared(Vec<(Arc<Node>, Arc<Node>)>);

impl Loaded {
    /// Put the entries into `t` if its node `dir` is the unread lower
    /// directory at `path`; answers whether it was.
    pub(crate) fn apply(&self, t: &mut super::tree::Tree, shared: &mut Shared) -> bool {
        let Some(old) = t.get(self.dir).cloned() else {
            return false;
        };
        if old.unloaded().map(|p| &p[..]) != Some(&self.path[..]) {
            return false;
        }
        let new = match shared.0.iter().find(|(o, _)| Arc::ptr_eq(o, &old)) {
            Some((_, n)) => Arc::clone(n),
            None => {
                let mut d = Node::clone(&old);
                if let Body::Dir { parent, .. } = d.body {
                    d.body = Body::Dir {
                        entries: self.entries.clone(),
                        parent,
                        lower: None,
                    };
                }
                d.meta.nlink = 2 + self.subdirs;
                let n = Arc::new(d);
                shared.0.push((old, Arc::clone(&n)));
                n
            }
        };
        for (_, child, node) in &self.children {
            t.insert_arc(*child, Arc::clone(node));
        }
        t.insert_arc(self.dir, new);
        true
    }
}

/// Bytes copied per step when a copy-up cannot reflink.
const COPY_CHUNK: usize = 1 << 20;

fn meta_of(st: &LowerStat) -> Meta {
    let kind = FileKind::from_mode(st.mode).unwrap_or(FileKind::RegularFile);
    let mut meta = Meta::new(kind, (st.mode & 0o7777) as u16, st.uid, st.gid);
    meta.nlink = match kind {
        // Hard links of the lower directory become separate files.
        FileKind::Directory => u32::try_from(st.nlink).unwrap_or(u32::MAX).max(2),
        _ => 1,
    };
    meta.size = st.size;
    meta.rdev = u32::try_from(st.rdev).unwrap_or(0);
    meta.atime = st.atime;
    meta.mtime = st.mtime;
    meta.ctime = st.ctime;
    meta.crtime = st.ctime;
    meta
}

impl FsCore {
    /// Make `lower` this core's lower directory. On a new store (nothing was
    /// ever created in it) the default branch's root becomes the lower root,
    /// its entries read on first use; on a store that has been used, the
    /// trees already say which nodes are the lower directory's, and this only
    /// lets them be read. Answers whether the root was made the lower root.
    pub fn attach_lower(&self, lower: Arc<Lower>) -> FsResult<bool> {
        let root_stat = lower.root_stat()?;
        if self.lower.set(lower).is_err() {
            return Err(FsError::Busy(
                "a lower directory is attached already".into(),
            ));
        }
        let fresh = {
            let reg = self.registry.read();
            reg.branches.len() == 1 && reg.snapshots.is_empty()
        } && self.next_node.load(std::sync::atomic::Ordering::Acquire)
            == NodeId::ROOT.0 + 1
            && self.lower_nodes.lock().is_empty();
        if !fresh {
            return Ok(false);
        }
        let branch = self.branch(self.default_branch)?;
        Self::commit_load(&branch, |t| {
            let Some(root) = t.get(NodeId::ROOT) else {
                return Ok(false);
            };
            if root.unloaded().is_some() {
                return Ok(true); // Attached before, and nothing read since.
            }
            if root.entries().is_some_and(|e| !e.is_empty()) {
                return Ok(false);
            }
            let mut meta = meta_of(&root_stat);
            meta.kind = FileKind::Directory;
            t.insert(
                NodeId::ROOT,
                Node {
                    meta,
                    body: Body::Dir {
                        entries: imbl::OrdMap::new(),
                        parent: NodeId::ROOT,
                        lower: Some(Arc::from(&b""[..])),
                    },
                    xattrs: None,
                },
            );
            Ok(true)
        })
    }

    /// The lower directory, for nodes that name one.
    fn lower_dir(&self) -> io::Result<&Arc<Lower>> {
        self.lower.get().ok_or_else(|| {
            tracing::error!(
                "a node names the lower directory, but none is attached (mount with --lower)"
            );
            io::Error::from_raw_os_error(libc::EIO)
        })
    }

    /// Commit a change that only reads lower entries into `branch`'s tree:
    /// as a tree change (journaled), but allowed on a read-only view.
    fn commit_load<R>(
        branch: &BranchState,
        f: impl FnOnce(&mut super::tree::Tree) -> FsResult<R>,
    ) -> FsResult<R> {
        let mut guard = branch.tree.write();
        let mut draft = guard.clone();
        if branch.journal.is_some() {
            draft.start_log();
        }
        let result = f(&mut draft)?;
        if let Some(j) = &branch.journal {
            let mut touched = draft.take_log();
            if let Some(rec) = super::record::tree(branch.id, &*guard, &draft, &mut touched) {
                j.append(&rec);
            }
        }
        let old = std::mem::replace(&mut *guard, draft);
        drop(guard);
        drop(old);
        Ok(result)
    }

    /// Read the entries of lower directory `id` into `branch`'s tree, unless
    /// they are read already, and into every other tree (branch, snapshot,
    /// snapshot view) where `id` is that same unread lower directory, with
    /// the same node ids and nodes: reading is not a change, so diff and
    /// merge see none. One journal record ([`record::load`]) says so for all
    /// of them. No lock is held while the lower directory is read; reads are
    /// serialised by `Lower::loading`, and every tree is changed under its
    /// own lock, all held at once (in checkpoint's order, under the
    /// journal's gate), so the journal replays exactly this.
    pub(super) fn load_dir(&self, branch: &Arc<BranchState>, id: NodeId) -> FsResult<()> {
        let lower = self.lower_dir()?;
        let _serial = lower.loading.lock();
        let path = {
            let t = branch.tree.read();
            match t.get(id).and_then(|n| n.unloaded()) {
                Some(p) => Arc::clone(p),
                None => return Ok(()),
            }
        };
        let listing = lower.list(&path)?;
        let mut loaded = Loaded {
            dir: id,
            path: Arc::clone(&path),
            entries: imbl::OrdMap::new(),
            children: Vec::with_capacity(listing.len()),
            subdirs: 0,
        };
        for e in listing {
            let child = self.new_lower_node_id(e.stat.ino);
            let name = Name::from(e.name.as_slice());
            let node = Arc::new(self.lower_node(&path, id, &name, e));
            loaded.subdirs += u32::from(node.meta.kind == FileKind::Directory);
            loaded.entries.insert(name.clone(), child);
            loaded.children.push((name, child, node));
        }

        let (mut branches, snapshots) = self.registered_trees();
        if !branches.iter().any(|b| Arc::ptr_eq(b, branch)) {
            branches.push(Arc::clone(branch)); // A deleted branch's open handle.
        }
        branches.sort_by_key(|b| b.id);
        let _gate = self.journal.get().map(|j| j.gate.read());
        let mut trees: Vec<_> = branches.iter().map(|b| b.tree.write()).collect();
        let mut frozen: Vec<_> = snapshots.iter().map(|s| s.tree.write()).collect();
        let mut shared = Shared::default();
        for t in trees.iter_mut() {
            loaded.apply(t, &mut shared);
        }
        for t in frozen.iter_mut() {
            loaded.apply(t, &mut shared);
        }
        if let Some(j) = self.journal.get() {
            j.append(&super::record::load(&loaded));
        }
        drop(frozen);
        drop(trees);
        drop(_gate);
        self.maybe_checkpoint();
        Ok(())
    }

    /// The node for lower entry `e` of the lower directory at `dir`, a child
    /// of node `parent`.
    fn lower_node(&self, dir: &[u8], parent: NodeId, name: &Name, e: LowerEntry) -> Node {
        let mut meta = meta_of(&e.stat);
        // Its name, for diff (`Meta::hint`): a lower file changed later
        // leaves this directory untouched.
        meta.hint = Some(super::tree::NameHint {
            parent,
            name: Name::clone(name),
        });
        let path: Arc<[u8]> = lower::join(dir, &e.name).into();
        let body = match meta.kind {
            FileKind::Directory => Body::Dir {
                entries: imbl::OrdMap::new(),
                parent,
                lower: Some(path),
            },
            FileKind::RegularFile => Body::File {
                content: (meta.size > 0)
                    .then(|| Content::lower(path, e.stat.allocated, &self.reaper)),
            },
            FileKind::Symlink => Body::Symlink(e.target.unwrap_or_default().into()),
            _ => Body::Special,
        };
        Node {
            meta,
            body,
            xattrs: None,
        }
    }

    /// Have the entries of every lower directory among `ids` read.
    pub(super) fn ensure_loaded(&self, branch: &Arc<BranchState>, ids: &[NodeId]) -> FsResult<()> {
        if self.lower.get().is_none() {
            return Ok(()); // Not an overlay: no tree names a lower directory.
        }
        for &id in ids {
            let unloaded = branch
                .tree
                .read()
                .get(id)
                .is_some_and(|n| n.unloaded().is_some());
            if unloaded {
                self.load_dir(branch, id)?;
            }
        }
        Ok(())
    }

    /// Have the entries of `parent`, and of its entry `name` if that is a
    /// lower directory, read (for operations that need a directory empty).
    pub(super) fn ensure_child_loaded(
        &self,
        branch: &Arc<BranchState>,
        parent: NodeId,
        name: &[u8],
    ) -> FsResult<()> {
        if self.lower.get().is_none() {
            return Ok(());
        }
        self.ensure_loaded(branch, &[parent])?;
        let child = branch
            .tree
            .read()
            .get(parent)
            .and_then(|p| p.entries())
            .and_then(|e| e.get(name).copied());
        match child {
            Some(c) => self.ensure_loaded(branch, &[c]),
            None => Ok(()),
        }
    }

    /// Read bytes of a content object, wherever it lives.
    pub(crate) fn content_read_at(
        &self,
        c: &Content,
        buf: &mut [u8],
        offset: u64,
    ) -> io::Result<usize> {
        match &c.lower {
            Some(path) => self.lower_dir()?.read_at(path, buf, offset),
            None => self.backstore.read_at(c.id, buf, offset),
        }
    }

    /// `SEEK_DATA`/`SEEK_HOLE` on a content object, wherever it lives.
    pub(super) fn content_seek(&self, c: &Content, offset: u64, whence: i32) -> io::Result<u64> {
        match &c.lower {
            Some(path) => self.lower_dir()?.seek(path, offset, whence),
            None => self.backstore.seek(c.id, offset, whence),
        }
    }

    /// A host file of a content object for the kernel to use directly: the
    /// backstore's, or the lower file (read-only) for a lower content.
    pub(super) fn content_file(&self, c: &Content) -> io::Result<Arc<File>> {
        match &c.lower {
            Some(path) => self.lower_dir()?.file(path),
            None => self.backstore.host_file(c.id),
        }
    }

    /// A new backstore object with the bytes of `c` (the first `size` of
    /// them for a lower file): a clone of a backstore object, or the copy-up
    /// of a lower file (reflink, else `copy_file_range`, else read and write).
    pub(super) fn copy_object(&self, c: &Content, size: u64) -> io::Result<ContentId> {
        let Some(path) = &c.lower else {
            return self.backstore.clone_object(c.id);
        };
        let src = self.lower_dir()?.file(path)?;
        let id = self.backstore.create()?;
        let copied = match self.backstore.host_file(id) {
            Ok(dst) => copy_host(&src, &dst, size),
            Err(_) => self.copy_through(&src, id, size),
        }
        .and_then(|()| self.backstore.set_len(id, size));
        if let Err(e) = copied {
            let _ = self.backstore.remove(id);
            return Err(e);
        }
        tracing::debug!(lower = %String::from_utf8_lossy(path), content = %id, "copied up");
        Ok(id)
    }

    /// Copy `size` bytes of `src` into object `id` through the backstore.
    fn copy_through(&self, src: &File, id: ContentId, size: u64) -> io::Result<()> {
        use std::os::unix::fs::FileExt;
        let mut buf = vec![0u8; COPY_CHUNK];
        let mut at = 0u64;
        while at < size {
            let want = (size - at).min(COPY_CHUNK as u64) as usize;
            let n = src.read_at(&mut buf[..want], at)?;
            if n == 0 {
                break;
            }
            self.backstore.write_at(id, &buf[..n], at)?;
            at += n as u64;
        }
        Ok(())
    }
}

/// Copy `size` bytes of `src` into the empty host file `dst`: a reflink
/// (FICLONE) where both are on one filesystem that can, else `copy_file_range`.
fn copy_host(src: &File, dst: &File, size: u64) -> io::Result<()> {
    // FICLONE = _IOW(0x94, 9, int)
    const FICLONE: libc::c_ulong = 0x4004_9409;
    // SAFETY: both descriptors are open for the call; FICLONE reads an int.
    let cloned = unsafe { libc::ioctl(dst.as_raw_fd(), FICLONE as _, src.as_raw_fd()) };
    if cloned == 0 {
        return Ok(());
    }
    let mut at: i64 = 0;
    while (at as u64) < size {
        let mut off_in = at;
        let mut off_out = at;
        let want = (size - at as u64).min(1 << 30) as usize;
        // SAFETY: both descriptors are open; the offsets are valid pointers
        // to locals the call updates.
        let n = unsafe {
            libc::copy_file_range(
                src.as_raw_fd(),
                &mut off_in,
                dst.as_raw_fd(),
                &mut off_out,
                want,
                0,
            )
        };
        if n < 0 {
            let e = io::Error::last_os_error();
            match e.raw_os_error() {
                Some(libc::EINTR) => continue,
                // Across filesystems, or not supported here: copy by hand.
                Some(libc::EXDEV | libc::EINVAL | libc::EOPNOTSUPP | libc::ENOSYS) => {
                    return copy_plain(src, dst, at as u64, size)
                }
                _ => return Err(e),
            }
        }
        if n == 0 {
            break;
        }
        at += n as i64;
    }
    Ok(())
}

/// Copy bytes `from..size` of `src` into `dst` with reads and writes.
fn copy_plain(src: &File, dst: &File, from: u64, size: u64) -> io::Result<()> {
    use std::os::unix::fs::FileExt;
    let mut buf = vec![0u8; COPY_CHUNK];
    let mut at = from;
    while at < size {
        let want = (size - at).min(COPY_CHUNK as u64) as usize;
        let n = src.read_at(&mut buf[..want], at)?;
        if n == 0 {
            break;
        }
        dst.write_all_at(&buf[..n], at)?;
        at += n as u64;
    }
    Ok(())
}

/// What [`FsCore::import_lower`] did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ImportReport {
    /// Lower directories read.
    pub dirs: u64,
    /// Lower files copied (or reflinked) into the backstore.
    pub files: u64,
    /// Bytes of those files.
    pub bytes: u64,
}

impl FsCore {
    /// `--lower-isolation copy`: read every lower directory of the default
    /// branch and copy every lower file into the backstore (a reflink where
    /// the filesystems allow), so that no tree names anything in the lower
    /// directory any more and every later snapshot and branch is
    /// point-in-time whatever happens to it. Meant for a new overlay (only
    /// the default branch, no snapshot): refused with `Busy` otherwise, since
    /// lower files already shared with snapshots could not be made
    /// point-in-time after the fact.
    pub fn import_lower(&self) -> FsResult<ImportReport> {
        {
            let reg = self.registry.read();
            if reg.branches.len() != 1 || !reg.snapshots.is_empty() {
                return Err(FsError::Busy(
                    "--lower-isolation copy needs a new overlay (no snapshot, no other branch)"
                        .into(),
                ));
            }
        }
        let branch = self.branch(self.default_branch)?;
        let mut report = ImportReport::default();
        let mut queue = vec![NodeId::ROOT];
        while let Some(dir) = queue.pop() {
            let unread = branch
                .tree
                .read()
                .get(dir)
                .is_some_and(|n| n.unloaded().is_some());
            if unread {
                self.load_dir(&branch, dir)?;
                report.dirs += 1;
            }
            let t = branch.tree.read();
            if let Some(entries) = t.get(dir).and_then(|n| n.entries()) {
                for child in entries.values() {
                    if t.get(*child).is_some_and(|c| c.entries().is_some()) {
                        queue.push(*child);
                    }
                }
            }
        }
        let lower_files: Vec<(NodeId, Arc<Content>, u64)> = {
            let t = branch.tree.read();
            t.iter()
                .filter_map(|(id, n)| {
                    let c = n.content().filter(|c| c.lower.is_some())?;
                    Some((id, Arc::clone(c), n.meta.size))
                })
                .collect()
        };
        let epoch = branch.epoch();
        let mut copies = Vec::with_capacity(lower_files.len());
        for (id, old, size) in lower_files {
            let copy = Content::new(self.copy_object(&old, size)?, epoch, &self.reaper);
            self.note_object_changed(&copy);
            report.files += 1;
            report.bytes += size;
            copies.push((id, old, copy));
        }
        Self::write_branch_tree(&branch, |t| {
            for (id, old, copy) in &copies {
                let Some(mut n) = t.edit(*id) else { continue };
                if let Body::File { content: Some(c) } = &mut n.body {
                    if Arc::ptr_eq(c, old) {
                        *c = Arc::clone(copy);
                        t.insert(*id, n);
                    }
                }
            }
            Ok(())
        })?;
        drop(copies);
        self.reap();
        self.make_durable(true)?;
        Ok(report)
    }

    /// The host path of the lower directory, if this is an overlay.
    pub fn lower_path(&self) -> Option<&std::path::Path> {
        self.lower.get().map(|l| l.path())
    }

    /// Make every tree stop naming what is about to change in the lower
    /// directory (`export --to` the lower directory): for each lower path in
    /// `paths` (relative to the lower root; it and everything below it is
    /// about to be renamed, replaced or deleted) and in `touched` (its
    /// attributes or entries are about to change, not what is below it),
    /// every lower directory at or above it (and, for `paths`, below it) is
    /// read into every tree where it is unread, and every lower file at or
    /// below a path of `paths` is copied up (reflinked where possible) into
    /// one backstore object, which every tree, branch and snapshot alike,
    /// then names instead: the bytes any tree shows do not change, and no
    /// tree names the lower path any more. The change is made durable by a
    /// checkpoint before this returns (all trees or none, whatever a crash
    /// interrupts), so the caller may then change the lower directory. A
    /// lower file or directory already gone from the lower directory is left
    /// as it is (it could not be read before either). Nothing in the lower
    /// directory is written. On a mount without a lower directory, nothing.
    pub fn detach_lower(&self, paths: &[Vec<u8>], touched: &[Vec<u8>]) -> FsResult<ImportReport> {
        let mut report = ImportReport::default();
        let Some(lower) = self.lower.get() else {
            return Ok(report);
        };
        let started = std::time::Instant::now();
        let trim = |p: &Vec<u8>| -> Vec<u8> {
            let mut p = &p[..];
            while let [b'/', rest @ ..] = p {
                p = rest;
            }
            while let [rest @ .., b'/'] = p {
                p = rest;
            }
            p.to_vec()
        };
        let paths: Vec<Vec<u8>> = paths.iter().map(trim).collect();
        let touched: Vec<Vec<u8>> = touched.iter().map(trim).collect();
        if paths.is_empty() && touched.is_empty() {
            return Ok(report);
        }
        // `q` is `p` or below it.
        fn below(q: &[u8], p: &[u8]) -> bool {
            p.is_empty() || q == p || (q.starts_with(p) && q.get(p.len()) == Some(&b'/'))
        }
        // Lower directories to read: above a path, or at or below one of `paths`.
        let read_wanted = |q: &[u8]| {
            paths.iter().any(|p| below(q, p) || below(p, q))
                || touched.iter().any(|p| below(p, q) && p[..] != *q)
        };
        let copy_wanted = |q: &[u8]| paths.iter().any(|p| below(q, p));

        // Every lower directory to read, in any tree: found by one pass over
        // every tree, then followed down from each one read.
        let mut queue: Vec<(Arc<BranchState>, NodeId)> = Vec::new();
        let mut seen = std::collections::HashSet::new();
        let copies_of_trees = self.tree_copies();
        let mut found: Vec<(usize, NodeId)> = Vec::new();
        each_node(&copies_of_trees, |i, id, n| {
            if n.unloaded().is_some_and(|p| read_wanted(p)) && seen.insert(id) {
                found.push((i, id));
            }
        });
        for (i, id) in found {
            let b = match &copies_of_trees[i].0 {
                TreeOwner::Branch(b) => Arc::clone(b),
                // Read through the snapshot's view: `load_dir` reads into
                // every tree, the snapshot's own included.
                TreeOwner::Snapshot(s) => self.branch(self.snapshot_browse(*s)?)?,
            };
            queue.push((b, id));
        }
        drop(copies_of_trees);
        while let Some((b, id)) = queue.pop() {
            match self.load_dir(&b, id) {
                Ok(()) => report.dirs += 1,
                Err(FsError::Io(e))
                    if matches!(e.raw_os_error(), Some(libc::ENOENT | libc::ENOTDIR)) =>
                {
                    tracing::warn!(node = %id, error = %e, "a lower directory to detach is gone");
                    continue;
                }
                Err(e) => return Err(e),
            }
            let t = b.tree.read();
            let Some(entries) = t.get(id).and_then(|n| n.entries()) else {
                continue;
            };
            for child in entries.values() {
                let unread = t
                    .get(*child)
                    .and_then(|n| n.unloaded())
                    .is_some_and(|p| read_wanted(p));
                if unread && seen.insert(*child) {
                    queue.push((Arc::clone(&b), *child));
                }
            }
        }

        let read_done = started.elapsed();
        // The lower files to copy up: one copy per lower path, whichever trees
        // name it (all of them read the same bytes). Each round finds the
        // nodes naming one in any tree, copies what is not copied yet, and
        // swaps the copies in. No lower directory above or below them is
        // unread any more, so only a copy of a node that names one can name
        // one later: a commit or a snapshot made between a round's finding
        // and its swap; the next round finds those, and the last finds none.
        let mut copies: std::collections::HashMap<Arc<[u8]>, Arc<Content>> =
            std::collections::HashMap::new();
        let mut gone: std::collections::HashSet<Arc<[u8]>> = std::collections::HashSet::new();
        let (mut copy_time, mut swap_time) = (std::time::Duration::ZERO, std::time::Duration::ZERO);
        let mut rounds = 0u32;
        loop {
            let mut wanted: std::collections::HashMap<Arc<[u8]>, (Arc<Content>, u64)> =
                std::collections::HashMap::new();
            let mut nodes: std::collections::BTreeSet<NodeId> = std::collections::BTreeSet::new();
            each_node(&self.tree_copies(), |_, id, n| {
                if let Some(c) = n.content() {
                    let p = c
                        .lower
                        .as_ref()
                        .filter(|p| copy_wanted(p) && !gone.contains(*p));
                    if let Some(p) = p {
                        let e = wanted
                            .entry(Arc::clone(p))
                            .or_insert_with(|| (Arc::clone(c), 0));
                        e.1 = e.1.max(n.meta.size);
                        nodes.insert(id);
                    }
                }
            });
            if nodes.is_empty() {
                break;
            }
            rounds += 1;
            if rounds > 8 {
                return Err(FsError::Busy(
                    "the trees kept copying lower files while they were detached; try again".into(),
                ));
            }
            let copying = std::time::Instant::now();
            for (path, (old, size)) in wanted {
                if copies.contains_key(&path) {
                    continue;
                }
                match self.copy_object(&old, size) {
                    Ok(id) => {
                        let copy = Content::new(id, super::FROZEN_EPOCH, &self.reaper);
                        // Its bytes durable before any tree (or a later
                        // journal record) names it.
                        self.backstore.sync(id, false)?;
                        self.note_object_changed(&copy);
                        report.files += 1;
                        report.bytes += size;
                        copies.insert(path, copy);
                    }
                    Err(e) if matches!(e.raw_os_error(), Some(libc::ENOENT | libc::ENOTDIR)) => {
                        tracing::warn!(
                            lower = %String::from_utf8_lossy(&path),
                            "a lower file to detach is gone"
                        );
                        gone.insert(path);
                    }
                    Err(e) => return Err(e.into()),
                }
            }
            copy_time += copying.elapsed();
            let swapping = std::time::Instant::now();
            self.swap_copies_in(lower, &nodes, &copies);
            swap_time += swapping.elapsed();
        }
        if copies.is_empty() {
            return Ok(report);
        }
        drop(copies);
        let swap_done = started.elapsed();
        // No journal record says this: a checkpoint writes every tree at
        // once, so a crash leaves all of them detached or none (and then the
        // lower directory is still as they name it: the caller changes it
        // only after this returns).
        self.checkpoint()?;
        self.reap();
        let ms = |d: std::time::Duration| d.as_secs_f64() * 1000.0;
        tracing::info!(
            dirs = report.dirs,
            files = report.files,
            bytes = report.bytes,
            read_ms = ms(read_done),
            copy_ms = ms(copy_time),
            swap_ms = ms(swap_time),
            rounds,
            checkpoint_ms = ms(started.elapsed() - swap_done),
            "lower paths detached"
        );
        Ok(report)
    }

    /// Every tree at once, as `load_dir` takes them, with no snapshot,
    /// branch, commit or directory read in between: each of `nodes` that
    /// names a lower file of `copies` now names its copy (one new node per
    /// old one, so trees that shared a node share its successor).
    fn swap_copies_in(
        &self,
        lower: &Lower,
        nodes: &std::collections::BTreeSet<NodeId>,
        copies: &std::collections::HashMap<Arc<[u8]>, Arc<Content>>,
    ) {
        let _serial = lower.loading.lock();
        let (mut branches, snapshots) = self.every_tree();
        branches.sort_by_key(|b| b.id);
        let _gate = self.journal.get().map(|j| j.gate.read());
        let mut trees: Vec<_> = branches.iter().map(|b| b.tree.write()).collect();
        let mut frozen: Vec<_> = snapshots.iter().map(|s| s.tree.write()).collect();
        // By the old node's address; the old node is kept alive with it, so
        // no new node can take its address meanwhile.
        let mut shared: std::collections::HashMap<*const Node, (Arc<Node>, Arc<Node>)> =
            std::collections::HashMap::new();
        let mut swap = |t: &mut super::tree::Tree| {
            for &id in nodes {
                let Some(old) = t.get(id) else { continue };
                let copy = old
                    .content()
                    .and_then(|c| c.lower.as_ref())
                    .and_then(|p| copies.get(p));
                let Some(copy) = copy.cloned() else {
                    continue; // Written (so copied up) since, or another node.
                };
                let old = Arc::clone(old);
                let new = match shared.get(&Arc::as_ptr(&old)) {
                    Some((_, n)) => Arc::clone(n),
                    None => {
                        let mut n = Node::clone(&old);
                        if let Body::File { content: Some(c) } = &mut n.body {
                            *c = copy;
                        }
                        let n = Arc::new(n);
                        shared.insert(Arc::as_ptr(&old), (Arc::clone(&old), Arc::clone(&n)));
                        n
                    }
                };
                t.insert_arc(id, new);
            }
        };
        for t in trees.iter_mut() {
            swap(t);
        }
        for t in frozen.iter_mut() {
            swap(t);
        }
    }

    /// O(1) copies of every tree [`FsCore::every_tree`] lists, each with
    /// whose it is, to read without holding their locks.
    fn tree_copies(&self) -> Vec<(TreeOwner, super::tree::Tree)> {
        let (branches, snapshots) = self.every_tree();
        let mut out = Vec::with_capacity(branches.len() + snapshots.len());
        for b in branches {
            let t = b.tree.read().clone();
            out.push((TreeOwner::Branch(b), t));
        }
        for s in snapshots {
            let t = s.tree.read().clone();
            out.push((TreeOwner::Snapshot(s.id), t));
        }
        out
    }

    /// The registered trees: branches and snapshots' views, and snapshots.
    fn registered_trees(&self) -> (Vec<Arc<BranchState>>, Vec<Arc<super::SnapshotState>>) {
        let reg = self.registry.read();
        let branches = reg
            .branches
            .values()
            .chain(reg.snapshot_views.values())
            .cloned()
            .collect();
        (branches, reg.snapshots.values().cloned().collect())
    }

    /// Every tree that may name lower paths: the branches, the snapshots'
    /// views, deleted branches still read through open handles; and the
    /// snapshots.
    fn every_tree(&self) -> (Vec<Arc<BranchState>>, Vec<Arc<super::SnapshotState>>) {
        let (mut branches, snapshots) = self.registered_trees();
        let deleted: Vec<Arc<BranchState>> = self
            .handles
            .read()
            .values()
            .map(|h| Arc::clone(&h.branch))
            .collect();
        for b in deleted {
            if !branches.iter().any(|x| Arc::ptr_eq(x, &b)) {
                branches.push(b);
            }
        }
        (branches, snapshots)
    }
}

/// Whose tree a copy of [`FsCore::tree_copies`] is.
enum TreeOwner {
    Branch(Arc<BranchState>),
    Snapshot(crate::ids::SnapshotId),
}

/// Call `f` with (index of the tree, id, node) for every node of every tree
/// in `trees`: the first tree's every node, then for each next tree only the
/// nodes that differ from the tree before it (a node two trees share is
/// visited once, and shared parts of the map are skipped unvisited).
fn each_node(
    trees: &[(TreeOwner, super::tree::Tree)],
    mut f: impl FnMut(usize, NodeId, &Arc<Node>),
) {
    for (i, (_, t)) in trees.iter().enumerate() {
        match i.checked_sub(1).map(|p| &trees[p].1) {
            None => t.iter().for_each(|(id, n)| f(i, id, n)),
            Some(before) => {
                for (id, _, n) in before.changed_nodes(t) {
                    if let Some(n) = n {
                        f(i, id, n);
                    }
                }
            }
        }
    }
}
