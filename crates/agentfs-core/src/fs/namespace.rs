//! Names and attributes: lookup, getattr/setattr, creating, linking, renaming
//! and removing nodes, with POSIX rules for permissions, link counts and times.

use super::perm::{self, R, S_ISGID, W, X};
use super::tree::{Body, Meta, Name, Node, Tree};
use super::{check_name, node, AttrParts, BranchState, FsCore, RenameFlags};
use crate::attr::{Attr, FileKind, SetAttr, SetTime};
use crate::creds::Ctx;
use crate::error::{FsError, FsResult};
use crate::ids::{BranchId, NodeId};
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::sync::Arc;
use std::time::SystemTime;

/// Most hard links one node may have.
const LINK_MAX: u32 = 65_000;

/// The directory `id` of tree `t`, checked to be one.
fn dir(t: &Tree, id: NodeId) -> FsResult<&Arc<Node>> {
    let n = node(t, id)?;
    match n.body {
        Body::Dir { .. } => Ok(n),
        _ => Err(FsError::NotDir),
    }
}

pub(super) fn entry(t: &Tree, parent: NodeId, name: &[u8]) -> FsResult<Option<NodeId>> {
    let d = dir(t, parent)?;
    unread_lower(d)?;
    Ok(d.entries().and_then(|e| e.get(name).copied()))
}

/// EIO for a lower directory whose entries are not read yet: every
/// operation reads them first (`FsCore::ensure_loaded`), so this is a missed
/// case, and answering from its empty entry map would be wrong.
fn unread_lower(d: &Node) -> FsResult<()> {
    if d.unloaded().is_some() {
        tracing::error!("a lower directory's entries were needed before they were read");
        return Err(FsError::Io(std::io::Error::from_raw_os_error(libc::EIO)));
    }
    Ok(())
}

/// Write permission and search permission on a directory whose entries change.
fn may_modify_dir(ctx: &Ctx, t: &Tree, parent: NodeId) -> FsResult<()> {
    perm::check(ctx, &dir(t, parent)?.meta, W | X)
}

/// One change to a directory's entries.
enum DirEdit<'a> {
    /// Name `.0` now names node `.1` (added, or replacing what it named).
    Put(&'a [u8], NodeId),
    Remove(&'a [u8]),
}

/// Change the entries of directory `id`; `nlink_delta` counts subdirectories
/// gained or lost. A name put becomes its node's hint (for diff, see
/// `Meta::hint`) unless it is that already.
fn edit_dir(t: &mut Tree, id: NodeId, nlink_delta: i32, edit: DirEdit) -> FsResult<()> {
    let mut d = t.edit(id).ok_or(FsError::NotFound)?;
    unread_lower(&d)?;
    let put = match (&mut d.body, edit) {
        (Body::Dir { entries, .. }, DirEdit::Put(name, child)) => {
            let name = Name::from(name);
            let before = entries.insert(Name::clone(&name), child);
            (before != Some(child)).then_some((name, child))
        }
        (Body::Dir { entries, .. }, DirEdit::Remove(name)) => {
            entries.remove(name);
            None
        }
        _ => return Err(FsError::NotDir),
    };
    d.meta.nlink = d.meta.nlink.saturating_add_signed(nlink_delta);
    d.meta.touch_mc();
    t.insert(id, d);
    let Some((name, child)) = put else {
        return Ok(());
    };
    let hint = super::tree::NameHint { parent: id, name };
    let stale = t
        .get(child)
        .is_some_and(|c| c.meta.hint.as_ref() != Some(&hint));
    if stale {
        if let Some(mut c) = t.edit(child) {
            c.meta.hint = Some(hint);
            t.insert(child, c);
        }
    }
    Ok(())
}

fn set_time(t: SetTime) -> SystemTime {
    match t {
        SetTime::At(t) => t,
        SetTime::Now => SystemTime::now(),
    }
}

impl FsCore {
    pub fn lookup(&self, ctx: &Ctx, b: BranchId, parent: NodeId, name: &OsStr) -> FsResult<Attr> {
        self.lookup_inner(ctx, b, parent, name, false)
    }

    fn lookup_inner(
        &self,
        ctx: &Ctx,
        b: BranchId,
        parent: NodeId,
        name: &OsStr,
        remember: bool,
    ) -> FsResult<Attr> {
        let name = name.as_bytes();
        if name.len() > super::NAME_MAX {
            return Err(FsError::NameTooLong);
        }
        let branch = self.branch(b)?;
        self.ensure_loaded(&branch, &[parent])?;
        let parts = {
            // The name and its node in one view of the tree.
            let t = branch.tree.read();
            let (id, parts) = Self::resolve_parts(&branch, &t, ctx, parent, name)?;
            if remember && id != NodeId::ROOT {
                *branch.kernel_refs.lock().entry(id).or_default() += 1;
            }
            parts
        };
        Ok(self.finish_parts(parts))
    }

    /// The node `name` of directory `parent` names (`.` and `..` included),
    /// if `ctx` may search `parent`, and its attributes as the tree holds
    /// them.
    fn resolve_parts(
        branch: &BranchState,
        t: &Tree,
        ctx: &Ctx,
        parent: NodeId,
        name: &[u8],
    ) -> FsResult<(NodeId, AttrParts)> {
        let d = dir(t, parent)?;
        perm::check(ctx, &d.meta, X)?;
        let id = match name {
            b"." => parent,
            b".." => match d.body {
                Body::Dir { parent: up, .. } => up,
                _ => return Err(FsError::NotDir),
            },
            _ => entry(t, parent, name)?.ok_or(FsError::NotFound)?,
        };
        Ok((id, Self::attr_parts(branch, t, id)?))
    }

    /// [`FsCore::lookup_for_kernel`] when it can answer without waiting on
    /// the storage, with whether the attributes came from memory alone (see
    /// [`FsCore::attr_in_memory`]). `None`, with nothing done, when it would
    /// have to wait: a lower directory to read first, or attributes only the
    /// backstore knows (an object the kernel writes directly, whose file the
    /// backstore does not hold open). One pass, where asking whether the
    /// lookup would wait and then looking up took two.
    pub fn lookup_for_kernel_quick(
        &self,
        ctx: &Ctx,
        b: BranchId,
        parent: NodeId,
        name: &OsStr,
    ) -> Option<FsResult<(Attr, bool)>> {
        let name = name.as_bytes();
        if name.len() > super::NAME_MAX {
            return Some(Err(FsError::NameTooLong));
        }
        let branch = match self.branch(b) {
            Ok(branch) => branch,
            Err(e) => return Some(Err(e)),
        };
        let parts = {
            let t = branch.tree.read();
            if t.get(parent).is_some_and(|p| p.unloaded().is_some()) {
                return None;
            }
            let (id, parts) = match Self::resolve_parts(&branch, &t, ctx, parent, name) {
                Ok(found) => found,
                Err(e) => return Some(Err(e)),
            };
            if !self.parts_are_quick(&parts) {
                return None;
            }
            if id != NodeId::ROOT {
                *branch.kernel_refs.lock().entry(id).or_default() += 1;
            }
            parts
        };
        Some(Ok(self.finish_parts_in_memory(parts)))
    }

    /// [`FsCore::lookup`] for the kernel: the node found is remembered as held
    /// by the kernel ([`FsCore::remember`]) in the same view of the tree, so
    /// no unlink can come between finding it and pinning it.
    pub fn lookup_for_kernel(
        &self,
        ctx: &Ctx,
        b: BranchId,
        parent: NodeId,
        name: &OsStr,
    ) -> FsResult<Attr> {
        self.lookup_inner(ctx, b, parent, name, true)
    }

    /// The kernel now holds one more lookup of node `id` of branch `b` (a
    /// reply handed it the node: an entry, a create, a readdirplus entry).
    pub fn remember(&self, b: BranchId, id: NodeId) {
        if id == NodeId::ROOT {
            return;
        }
        if let Ok(branch) = self.branch(b) {
            *branch.kernel_refs.lock().entry(id).or_default() += 1;
        }
    }

    /// [`FsCore::remember`] for each of `ids` (a readdirplus reply), under
    /// one lock.
    pub fn remember_all(&self, b: BranchId, ids: &[NodeId]) {
        let Ok(branch) = self.branch(b) else {
            return;
        };
        let mut refs = branch.kernel_refs.lock();
        for &id in ids.iter().filter(|&&id| id != NodeId::ROOT) {
            *refs.entry(id).or_default() += 1;
        }
    }

    /// The kernel forgot `n` lookups of node `id` of branch `b` (FUSE FORGET).
    /// An orphan nothing else holds goes with the last.
    pub fn forget(&self, b: BranchId, id: NodeId, n: u64) {
        let Ok(branch) = self.branch(b) else {
            return;
        };
        let last = {
            let mut refs = branch.kernel_refs.lock();
            match refs.get_mut(&id) {
                Some(count) if *count > n => {
                    *count -= n;
                    false
                }
                Some(_) => {
                    refs.remove(&id);
                    true
                }
                None => false,
            }
        };
        // Only an orphan (no name left) goes with its last lookup; that is
        // rare, so read first. The refs entry is gone already, so an unlink
        // from here on frees the node itself, and one before it committed
        // under the tree lock this read waits for.
        let orphan = |t: &Tree| t.get(id).is_some_and(|n| n.meta.nlink == 0);
        if last && orphan(&branch.tree.read()) {
            let _ = Self::write_branch_tree(&branch, |t| {
                if orphan(t) && !branch.pinned(id) {
                    t.remove(id);
                    branch.orphans.lock().remove(&id);
                }
                Ok(())
            });
            self.reap();
        }
    }

    pub fn getattr(&self, b: BranchId, id: NodeId) -> FsResult<Attr> {
        self.attr(b, id)
    }

    pub fn readlink(&self, b: BranchId, id: NodeId) -> FsResult<Vec<u8>> {
        self.read_tree(b, |t| match &node(t, id)?.body {
            Body::Symlink(target) => Ok(target.to_vec()),
            _ => Err(FsError::Invalid),
        })
    }

    pub fn access(&self, ctx: &Ctx, b: BranchId, id: NodeId, mask: i32) -> FsResult<()> {
        let read_only = self.is_read_only(b);
        self.read_tree(b, |t| {
            let n = node(t, id)?;
            let mask = (mask & 7) as u16;
            if mask == 0 {
                return Ok(());
            }
            // As on a read-only mount: no write access to files, directories
            // and symlinks (special files are not the filesystem's to write).
            let stored = matches!(
                n.meta.kind,
                FileKind::RegularFile | FileKind::Directory | FileKind::Symlink
            );
            if read_only && mask & W != 0 && stored {
                return Err(FsError::ReadOnly);
            }
            perm::check(ctx, &n.meta, mask)
        })
    }

    pub fn setattr(&self, ctx: &Ctx, b: BranchId, id: NodeId, set: &SetAttr) -> FsResult<Attr> {
        if let Some(size) = set.size {
            self.truncate(ctx, b, id, size)?;
        }
        self.write_tree(b, |t| {
            let mut n = t.edit(id).ok_or(FsError::NotFound)?;
            let before = n.meta.clone();
            let m = &mut n.meta;
            let mut changed = set.size.is_some();
            if let Some(mode) = set.mode {
                perm::chmod(ctx, m, mode)?;
                changed = true;
            }
            if set.uid.is_some() || set.gid.is_some() {
                let new_uid = set.uid.unwrap_or(m.uid);
                let new_gid = set.gid.unwrap_or(m.gid);
                if !ctx.is_root() {
                    let uid_ok = new_uid == before.uid && ctx.uid == before.uid;
                    let gid_ok = new_gid == before.gid || ctx.in_group(new_gid);
                    if !(uid_ok && gid_ok) {
                        return Err(FsError::Perm);
                    }
                }
                m.uid = new_uid;
                m.gid = new_gid;
                if m.kind != FileKind::Directory {
                    m.perm = perm::kill_suid(m.perm);
                }
                // Linux drops capabilities on any chown (the kernel leaves it
                // to FsCore: FUSE_HANDLE_KILLPRIV_V2).
                super::file::drop_capabilities(&mut n.xattrs);
                changed = true;
            }
            for (want, slot) in [(set.atime, &mut m.atime), (set.mtime, &mut m.mtime)] {
                if let Some(t) = want {
                    match t {
                        SetTime::Now if ctx.uid != before.uid => perm::check(ctx, &before, W)?,
                        SetTime::At(_) => perm::owner(ctx, &before)?,
                        SetTime::Now => {}
                    }
                    *slot = set_time(t);
                    changed = true;
                }
            }
            if let Some(ctime) = set.ctime {
                m.ctime = ctime;
            } else if changed {
                m.ctime = SystemTime::now();
            }
            t.insert(id, n);
            Ok(())
        })?;
        if set.mtime.is_some() {
            self.keep_direct_mtime(b, id)?;
        }
        self.attr(b, id)
    }

    /// Create a node of any kind in `parent`; the shared part of mknod, mkdir,
    /// symlink and create.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn make_node(
        &self,
        ctx: &Ctx,
        t: &mut Tree,
        parent: NodeId,
        name: &[u8],
        kind: FileKind,
        perm_bits: u16,
        rdev: u32,
        body: Body,
    ) -> FsResult<NodeId> {
        check_name(name)?;
        may_modify_dir(ctx, t, parent)?;
        if entry(t, parent, name)?.is_some() || name == b"." || name == b".." {
            return Err(FsError::Exists);
        }
        let pmeta = &dir(t, parent)?.meta;
        let inherit = pmeta.perm & S_ISGID != 0;
        let gid = if inherit { pmeta.gid } else { ctx.gid };
        let mut p = perm_bits & 0o7777;
        if kind == FileKind::Directory && inherit {
            p |= S_ISGID;
        } else if kind != FileKind::Directory
            && p & S_ISGID != 0
            && !ctx.is_root()
            && !ctx.in_group(gid)
        {
            p &= !S_ISGID;
        }
        let mut meta = Meta::new(kind, p, ctx.uid, gid);
        meta.rdev = rdev;
        if kind == FileKind::Directory {
            meta.nlink = 2;
            meta.size = 4096;
        }
        if let Body::Symlink(target) = &body {
            meta.size = target.len() as u64;
        }
        let id = self.new_node_id();
        t.insert(
            id,
            Node {
                meta,
                body,
                xattrs: None,
            },
        );
        let subdir = i32::from(kind == FileKind::Directory);
        edit_dir(t, parent, subdir, DirEdit::Put(name, id))?;
        Ok(id)
    }

    #[allow(clippy::too_many_arguments)]
    pub fn mknod(
        &self,
        ctx: &Ctx,
        b: BranchId,
        parent: NodeId,
        name: &OsStr,
        mode: u32,
        umask: u32,
        rdev: u32,
    ) -> FsResult<Attr> {
        let kind = FileKind::from_mode(mode).unwrap_or(FileKind::RegularFile);
        let body = match kind {
            FileKind::RegularFile => Body::File { content: None },
            FileKind::Directory | FileKind::Symlink => return Err(FsError::Invalid),
            _ => Body::Special,
        };
        let p = (mode & !umask & 0o7777) as u16;
        let rdev = if matches!(kind, FileKind::CharDevice | FileKind::BlockDevice) {
            rdev
        } else {
            0
        };
        self.ensure_loaded(&self.branch(b)?, &[parent])?;
        let id = self.write_tree(b, |t| {
            self.make_node(ctx, t, parent, name.as_bytes(), kind, p, rdev, body)
        })?;
        self.attr(b, id)
    }

    pub fn mkdir(
        &self,
        ctx: &Ctx,
        b: BranchId,
        parent: NodeId,
        name: &OsStr,
        mode: u32,
        umask: u32,
    ) -> FsResult<Attr> {
        let p = (mode & !umask & 0o7777) as u16;
        self.ensure_loaded(&self.branch(b)?, &[parent])?;
        let id = self.write_tree(b, |t| {
            let body = Body::Dir {
                entries: imbl::OrdMap::new(),
                parent,
                lower: None,
            };
            self.make_node(
                ctx,
                t,
                parent,
                name.as_bytes(),
                FileKind::Directory,
                p,
                0,
                body,
            )
        })?;
        self.attr(b, id)
    }

    pub fn symlink(
        &self,
        ctx: &Ctx,
        b: BranchId,
        parent: NodeId,
        name: &OsStr,
        target: &[u8],
    ) -> FsResult<Attr> {
        if target.is_empty() {
            return Err(FsError::NotFound);
        }
        if target.len() > 4095 {
            return Err(FsError::NameTooLong);
        }
        self.ensure_loaded(&self.branch(b)?, &[parent])?;
        let id = self.write_tree(b, |t| {
            let body = Body::Symlink(Arc::from(target));
            self.make_node(
                ctx,
                t,
                parent,
                name.as_bytes(),
                FileKind::Symlink,
                0o777,
                0,
                body,
            )
        })?;
        self.attr(b, id)
    }

    pub fn link(
        &self,
        ctx: &Ctx,
        b: BranchId,
        id: NodeId,
        new_parent: NodeId,
        new_name: &OsStr,
    ) -> FsResult<Attr> {
        let name = new_name.as_bytes();
        self.ensure_loaded(&self.branch(b)?, &[new_parent])?;
        self.write_tree(b, |t| {
            check_name(name)?;
            let n = node(t, id)?;
            if n.meta.kind == FileKind::Directory {
                return Err(FsError::Perm);
            }
            if n.meta.nlink == 0 {
                return Err(FsError::NotFound);
            }
            if n.meta.nlink >= LINK_MAX {
                return Err(FsError::TooManyLinks);
            }
            may_modify_dir(ctx, t, new_parent)?;
            if entry(t, new_parent, name)?.is_some() {
                return Err(FsError::Exists);
            }
            let mut n = t.edit(id).ok_or(FsError::NotFound)?;
            n.meta.nlink += 1;
            n.meta.ctime = SystemTime::now();
            t.insert(id, n);
            edit_dir(t, new_parent, 0, DirEdit::Put(name, id))
        })?;
        self.attr(b, id)
    }

    pub fn unlink(&self, ctx: &Ctx, b: BranchId, parent: NodeId, name: &OsStr) -> FsResult<()> {
        self.unlink_node(ctx, b, parent, name).map(drop)
    }

    /// [`FsCore::unlink`], answering the node whose name went.
    pub fn unlink_node(
        &self,
        ctx: &Ctx,
        b: BranchId,
        parent: NodeId,
        name: &OsStr,
    ) -> FsResult<NodeId> {
        let branch = self.branch(b)?;
        let name = name.as_bytes();
        self.ensure_loaded(&branch, &[parent])?;
        let victim = Self::write_branch_tree(&branch, |t| {
            may_modify_dir(ctx, t, parent)?;
            let victim = entry(t, parent, name)?.ok_or(FsError::NotFound)?;
            let vmeta = &node(t, victim)?.meta;
            if vmeta.kind == FileKind::Directory {
                return Err(FsError::IsDir);
            }
            perm::sticky(ctx, &dir(t, parent)?.meta, vmeta)?;
            edit_dir(t, parent, 0, DirEdit::Remove(name))?;
            self.drop_link(&branch, t, victim)?;
            Ok(victim)
        })?;
        self.reap();
        Ok(victim)
    }

    /// One name of `id` is gone: count it down, and free the node with its
    /// last name unless handles keep it open (then the last release frees it).
    fn drop_link(&self, branch: &super::BranchState, t: &mut Tree, id: NodeId) -> FsResult<()> {
        let mut n = t.edit(id).ok_or(FsError::NotFound)?;
        n.meta.nlink = n.meta.nlink.saturating_sub(1);
        n.meta.ctime = SystemTime::now();
        if n.meta.nlink == 0 && !branch.pinned(id) {
            t.remove(id);
        } else {
            if n.meta.nlink == 0 && branch.kernel_refs.lock().contains_key(&id) {
                branch.orphans.lock().insert(id);
            }
            t.insert(id, n);
        }
        Ok(())
    }

    pub fn rmdir(&self, ctx: &Ctx, b: BranchId, parent: NodeId, name: &OsStr) -> FsResult<()> {
        let name = name.as_bytes();
        match name {
            b"." => return Err(FsError::Invalid),
            b".." => return Err(FsError::NotEmpty),
            _ => {}
        }
        self.ensure_child_loaded(&self.branch(b)?, parent, name)?;
        self.write_tree(b, |t| {
            may_modify_dir(ctx, t, parent)?;
            let victim = entry(t, parent, name)?.ok_or(FsError::NotFound)?;
            let v = node(t, victim)?;
            unread_lower(v)?;
            let entries = v.entries().ok_or(FsError::NotDir)?;
            if !entries.is_empty() {
                return Err(FsError::NotEmpty);
            }
            perm::sticky(ctx, &dir(t, parent)?.meta, &v.meta)?;
            edit_dir(t, parent, -1, DirEdit::Remove(name))?;
            t.remove(victim);
            Ok(())
        })
    }

    /// Whether `ancestor` is `id` or one of its ancestors.
    fn is_ancestor(t: &Tree, ancestor: NodeId, mut id: NodeId) -> FsResult<bool> {
        for _ in 0..=t.len() {
            if id == ancestor {
                return Ok(true);
            }
            if id == NodeId::ROOT {
                return Ok(false);
            }
            id = match node(t, id)?.body {
                Body::Dir { parent, .. } => parent,
                _ => return Err(FsError::NotDir),
            };
        }
        Err(FsError::Loop)
    }

    #[allow(clippy::too_many_arguments)]
    pub fn rename(
        &self,
        ctx: &Ctx,
        b: BranchId,
        parent: NodeId,
        name: &OsStr,
        new_parent: NodeId,
        new_name: &OsStr,
        flags: RenameFlags,
    ) -> FsResult<()> {
        if flags.exchange && flags.noreplace {
            return Err(FsError::Invalid);
        }
        let (name, new_name) = (name.as_bytes(), new_name.as_bytes());
        for n in [name, new_name] {
            if n == b"." || n == b".." {
                return Err(FsError::Invalid);
            }
        }
        check_name(new_name)?;
        let branch = self.branch(b)?;
        self.ensure_loaded(&branch, &[parent])?;
        self.ensure_child_loaded(&branch, new_parent, new_name)?;
        Self::write_branch_tree(&branch, |t| {
            may_modify_dir(ctx, t, parent)?;
            may_modify_dir(ctx, t, new_parent)?;
            let src = entry(t, parent, name)?.ok_or(FsError::NotFound)?;
            let dst = entry(t, new_parent, new_name)?;
            let smeta = node(t, src)?.meta.clone();
            perm::sticky(ctx, &dir(t, parent)?.meta, &smeta)?;
            let src_dir = smeta.kind == FileKind::Directory;
            if src_dir {
                if Self::is_ancestor(t, src, new_parent)? {
                    return Err(FsError::Invalid);
                }
                if parent != new_parent {
                    perm::check(ctx, &smeta, W)?;
                }
            }
            if flags.exchange {
                let dst = dst.ok_or(FsError::NotFound)?;
                return self.exchange(ctx, t, (parent, name, src), (new_parent, new_name, dst));
            }
            if let Some(dst) = dst {
                if flags.noreplace {
                    return Err(FsError::Exists);
                }
                if dst == src {
                    // Two names of one file: POSIX says do nothing.
                    return Ok(());
                }
                let d = node(t, dst)?;
                unread_lower(d)?;
                perm::sticky(ctx, &dir(t, new_parent)?.meta, &d.meta)?;
                match (src_dir, d.entries()) {
                    (true, None) => return Err(FsError::NotDir),
                    (false, Some(_)) => return Err(FsError::IsDir),
                    (true, Some(e)) if !e.is_empty() => return Err(FsError::NotEmpty),
                    _ => {}
                }
                if src_dir && Self::is_ancestor(t, dst, new_parent)? {
                    return Err(FsError::NotEmpty);
                }
                if src_dir {
                    edit_dir(t, new_parent, -1, DirEdit::Remove(new_name))?;
                    t.remove(dst);
                } else {
                    edit_dir(t, new_parent, 0, DirEdit::Remove(new_name))?;
                    self.drop_link(&branch, t, dst)?;
                }
            }
            let moved_dir = i32::from(src_dir && parent != new_parent);
            edit_dir(t, parent, -moved_dir, DirEdit::Remove(name))?;
            edit_dir(t, new_parent, moved_dir, DirEdit::Put(new_name, src))?;
            Self::reparent(t, src, new_parent)
        })?;
        self.reap();
        Ok(())
    }

    /// RENAME_EXCHANGE: swap two entries atomically.
    fn exchange(
        &self,
        ctx: &Ctx,
        t: &mut Tree,
        (p1, n1, a): (NodeId, &[u8], NodeId),
        (p2, n2, bnode): (NodeId, &[u8], NodeId),
    ) -> FsResult<()> {
        let bmeta = node(t, bnode)?.meta.clone();
        perm::sticky(ctx, &dir(t, p2)?.meta, &bmeta)?;
        let a_dir = node(t, a)?.meta.kind == FileKind::Directory;
        let b_dir = bmeta.kind == FileKind::Directory;
        if b_dir && Self::is_ancestor(t, bnode, p1)? {
            return Err(FsError::Invalid);
        }
        if b_dir && p1 != p2 && !ctx.is_root() {
            perm::check(ctx, &bmeta, W)?;
        }
        if a == bnode {
            return Ok(());
        }
        // Directory counts move with directories that change parent.
        let delta = if p1 == p2 {
            0
        } else {
            i32::from(b_dir) - i32::from(a_dir)
        };
        edit_dir(t, p1, delta, DirEdit::Put(n1, bnode))?;
        edit_dir(t, p2, -delta, DirEdit::Put(n2, a))?;
        Self::reparent(t, a, p2)?;
        Self::reparent(t, bnode, p1)
    }

    /// After a move: a directory's `..` follows it; every moved node's ctime changes.
    fn reparent(t: &mut Tree, id: NodeId, new_parent: NodeId) -> FsResult<()> {
        let mut n = t.edit(id).ok_or(FsError::NotFound)?;
        if let Body::Dir { parent, .. } = &mut n.body {
            *parent = new_parent;
        }
        n.meta.ctime = SystemTime::now();
        t.insert(id, n);
        Ok(())
    }

    /// Read permission check used by opendir and open.
    pub(super) fn check_open(ctx: &Ctx, meta: &Meta, read: bool, write: bool) -> FsResult<()> {
        let mask = if read { R } else { 0 } | if write { W } else { 0 };
        if mask == 0 {
            return Ok(());
        }
        perm::check(ctx, meta, mask)
    }
}
