//! Directory handles: opendir, readdir with `.` and `..`, releasedir.

use super::tree::Body;
use super::{node, AttrParts, FsCore, HandleKind};
use crate::attr::{DirEntry, DirEntryPlus, FileKind};
use crate::creds::Ctx;
use crate::error::{FsError, FsResult};
use crate::ids::{BranchId, HandleId, NodeId};
use parking_lot::Mutex;
use std::sync::Arc;

impl FsCore {
    pub fn opendir(&self, ctx: &Ctx, b: BranchId, id: NodeId) -> FsResult<HandleId> {
        let branch = self.branch(b)?;
        self.ensure_loaded(&branch, &[id])?;
        {
            let t = branch.tree.read();
            let n = node(&t, id)?;
            if n.entries().is_none() {
                return Err(FsError::NotDir);
            }
            Self::check_open(ctx, &n.meta, true, false)?;
        }
        Ok(self.add_handle(branch, id, HandleKind::Dir(Mutex::new(None))))
    }

    /// Entries after cookie `offset` (0 = start), including `.` and `..`, at most `max`.
    /// The listing is taken at the first call and kept for the handle's life.
    pub fn readdir(&self, fh: HandleId, offset: u64, max: usize) -> FsResult<Vec<DirEntry>> {
        let h = self.handle(fh)?;
        let HandleKind::Dir(cache) = &h.kind else {
            return Err(FsError::NotDir);
        };
        let listing = {
            let mut cache = cache.lock();
            match &*cache {
                Some(l) if offset != 0 => Arc::clone(l),
                _ => {
                    self.ensure_loaded(&h.branch, &[h.node])?;
                    let l = Arc::new(self.list(&h.branch.tree.read(), h.node)?);
                    *cache = Some(Arc::clone(&l));
                    l
                }
            }
        };
        let start = usize::try_from(offset).unwrap_or(usize::MAX);
        Ok(listing.iter().skip(start).take(max).cloned().collect())
    }

    /// [`FsCore::readdir`] with each entry's attributes (readdirplus), so the
    /// kernel need not look each name up again. An entry whose node is gone
    /// since the listing was taken is left out.
    ///
    /// The nodes are read under one tree lock and one lock of the open
    /// counts for the whole batch (a listing is answered entry by entry
    /// otherwise: three lock pairs and a map lookup each); what only the
    /// backstore knows is asked after both are dropped.
    pub fn readdir_plus(
        &self,
        fh: HandleId,
        offset: u64,
        max: usize,
    ) -> FsResult<Vec<DirEntryPlus>> {
        self.readdir_plus_in(fh, offset, max, false)
            .expect("a readdirplus that may wait always answers")
    }

    /// [`FsCore::readdir_plus`] if it can be answered without waiting on the
    /// storage; `None` when it would have to wait: the listing must first
    /// read a lower directory, or an entry's attributes are known only to
    /// the backstore (a file the kernel writes directly whose object is not
    /// open). Then nothing is handed out, and the caller asks
    /// [`FsCore::readdir_plus`] where waiting does no harm.
    pub fn readdir_plus_quick(
        &self,
        fh: HandleId,
        offset: u64,
        max: usize,
    ) -> Option<FsResult<Vec<DirEntryPlus>>> {
        self.readdir_plus_in(fh, offset, max, true)
    }

    fn readdir_plus_in(
        &self,
        fh: HandleId,
        offset: u64,
        max: usize,
        quick: bool,
    ) -> Option<FsResult<Vec<DirEntryPlus>>> {
        let found = self
            .handle(fh)
            .and_then(|h| Ok((self.branch(h.branch.id)?, h.node)));
        let (branch, dir) = match found {
            Ok(found) => found,
            Err(e) => return Some(Err(e)),
        };
        // A directory loaded once stays loaded, so a listing taken after this
        // never reads the lower layer.
        let unloaded = |t: &super::tree::Tree| t.get(dir).is_some_and(|n| n.unloaded().is_some());
        if quick && unloaded(&branch.tree.read()) {
            return None;
        }
        let entries = match self.readdir(fh, offset, max) {
            Ok(entries) => entries,
            Err(e) => return Some(Err(e)),
        };
        let mut parts = Vec::with_capacity(entries.len());
        {
            let t = branch.tree.read();
            let open = branch.open.lock();
            for e in entries {
                let n = match node(&t, e.node) {
                    Ok(n) => n,
                    Err(FsError::Stale) => continue,
                    Err(err) => return Some(Err(err)),
                };
                let direct_writers = open.get(&e.node).map_or(0, |c| c.passthrough_writers);
                let p = AttrParts {
                    attr: n.meta.attr(e.node, 0),
                    content: n.content().cloned(),
                    direct_writers,
                };
                if quick && !self.parts_are_quick(&p) {
                    return None;
                }
                parts.push((e, p));
            }
        }
        let plus = parts
            .into_iter()
            .map(|(entry, p)| {
                let (attr, attr_in_memory) = self.finish_parts_in_memory(p);
                DirEntryPlus {
                    entry,
                    attr,
                    attr_in_memory,
                }
            })
            .collect();
        Some(Ok(plus))
    }

    pub fn releasedir(&self, fh: HandleId) -> FsResult<()> {
        self.remove_handle(fh)
    }

    fn list(&self, t: &super::tree::Tree, id: NodeId) -> FsResult<Vec<DirEntry>> {
        let n = node(t, id)?;
        let Body::Dir {
            entries,
            parent,
            lower,
        } = &n.body
        else {
            return Err(FsError::NotDir);
        };
        if lower.is_some() {
            // Read by the caller (`ensure_loaded`) unless it went in between.
            return Err(FsError::Io(std::io::Error::from_raw_os_error(libc::EIO)));
        }
        let mut out = Vec::with_capacity(entries.len() + 2);
        out.push(DirEntry {
            name: b".".to_vec(),
            node: id,
            kind: FileKind::Directory,
            offset: 1,
        });
        out.push(DirEntry {
            name: b"..".to_vec(),
            node: *parent,
            kind: FileKind::Directory,
            offset: 2,
        });
        for (name, child) in entries.iter() {
            let kind = t.get(*child).map_or(FileKind::RegularFile, |c| c.meta.kind);
            let offset = out.len() as u64 + 1;
            out.push(DirEntry {
                name: name.to_vec(),
                node: *child,
                kind,
                offset,
            });
        }
        Ok(out)
    }
}
