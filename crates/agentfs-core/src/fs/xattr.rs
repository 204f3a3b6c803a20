//! Extended attributes: the `user.`, `trusted.` and `security.` namespaces,
//! with XATTR_CREATE / XATTR_REPLACE and Linux's size limits.

use super::perm::{self, R, W};
use super::{node, FsCore, XattrSet};
use crate::attr::FileKind;
use crate::creds::Ctx;
use crate::error::{FsError, FsResult};
use crate::ids::{BranchId, NodeId};
use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::sync::Arc;
use std::time::SystemTime;

const XATTR_NAME_MAX: usize = 255;
const XATTR_SIZE_MAX: usize = 65_536;

#[derive(Clone, Copy, PartialEq, Eq)]
enum Namespace {
    User,
    Trusted,
    Security,
}

fn namespace(name: &[u8]) -> FsResult<Namespace> {
    if name.len() > XATTR_NAME_MAX {
        return Err(FsError::Range);
    }
    let ns = if name.starts_with(b"user.") {
        Namespace::User
    } else if name.starts_with(b"trusted.") {
        Namespace::Trusted
    } else if name.starts_with(b"security.") {
        Namespace::Security
    } else {
        // system.* (POSIX ACLs) and unknown prefixes are not supported.
        return Err(FsError::NotSupported);
    };
    let prefix = match ns {
        Namespace::User => 5,
        Namespace::Trusted => 8,
        Namespace::Security => 9,
    };
    if name.len() == prefix {
        return Err(FsError::Invalid);
    }
    Ok(ns)
}

/// Whether `ctx` may see or change attribute `ns` of a node, per xattr(7).
fn allowed(ctx: &Ctx, ns: Namespace, meta: &super::tree::Meta, write: bool) -> FsResult<()> {
    match ns {
        Namespace::Trusted if !ctx.is_root() => Err(FsError::Perm),
        Namespace::Trusted | Namespace::Security => Ok(()),
        Namespace::User => {
            if !matches!(meta.kind, FileKind::RegularFile | FileKind::Directory) {
                return Err(if write {
                    FsError::Perm
                } else {
                    FsError::NoXattr
                });
            }
            perm::check(ctx, meta, if write { W } else { R })
        }
    }
}

impl FsCore {
    pub fn setxattr(
        &self,
        ctx: &Ctx,
        b: BranchId,
        id: NodeId,
        name: &OsStr,
        value: &[u8],
        how: XattrSet,
    ) -> FsResult<()> {
        let name = name.as_bytes();
        let ns = namespace(name)?;
        if value.len() > XATTR_SIZE_MAX {
            return Err(FsError::TooBig);
        }
        self.write_tree(b, |t| {
            let mut n = t.edit(id).ok_or(FsError::NotFound)?;
            allowed(ctx, ns, &n.meta, true)?;
            let mut map = n.xattrs.as_deref().cloned().unwrap_or_default();
            match (how, map.contains_key(name)) {
                (XattrSet::Create, true) => return Err(FsError::Exists),
                (XattrSet::Replace, false) => return Err(FsError::NoXattr),
                _ => {}
            }
            map.insert(name.to_vec(), value.to_vec());
            n.xattrs = Some(Arc::new(map));
            n.meta.ctime = SystemTime::now();
            t.insert(id, n);
            Ok(())
        })
    }

    pub fn getxattr(&self, ctx: &Ctx, b: BranchId, id: NodeId, name: &OsStr) -> FsResult<Vec<u8>> {
        let name = name.as_bytes();
        let ns = namespace(name)?;
        self.read_tree(b, |t| {
            let n = node(t, id)?;
            allowed(ctx, ns, &n.meta, false)?;
            n.xattrs
                .as_ref()
                .and_then(|m| m.get(name))
                .cloned()
                .ok_or(FsError::NoXattr)
        })
    }

    /// Names, each NUL-terminated, concatenated (the `listxattr(2)` format).
    /// `trusted.` names are listed only to root.
    pub fn listxattr(&self, ctx: &Ctx, b: BranchId, id: NodeId) -> FsResult<Vec<u8>> {
        self.read_tree(b, |t| {
            let n = node(t, id)?;
            let mut out = Vec::new();
            let empty = BTreeMap::new();
            for key in n.xattrs.as_deref().unwrap_or(&empty).keys() {
                if key.starts_with(b"trusted.") && !ctx.is_root() {
                    continue;
                }
                out.extend_from_slice(key);
                out.push(0);
            }
            Ok(out)
        })
    }

    pub fn removexattr(&self, ctx: &Ctx, b: BranchId, id: NodeId, name: &OsStr) -> FsResult<()> {
        let name = name.as_bytes();
        let ns = namespace(name)?;
        self.write_tree(b, |t| {
            let mut n = t.edit(id).ok_or(FsError::NotFound)?;
            allowed(ctx, ns, &n.meta, true)?;
            let mut map = n.xattrs.as_deref().cloned().unwrap_or_default();
            if map.remove(name).is_none() {
                return Err(FsError::NoXattr);
            }
            n.xattrs = if map.is_empty() {
                None
            } else {
                Some(Arc::new(map))
            };
            n.meta.ctime = SystemTime::now();
            t.insert(id, n);
            Ok(())
        })
    }
}
