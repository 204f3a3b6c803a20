//! Extended attributes: the `user.`, `trusted.` and `security.` namespaces,
//! with XATTR_CREATE / XATTR_REPLACE and Linux's size limits; and POSIX
//! ACLs only as far as the mode bits express them (as ext4 keeps an ACL
//! that says no more than the mode: as the mode, storing nothing).

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
/// The access ACL's attribute (`acl(5)`).
const ACL_ACCESS: &[u8] = b"system.posix_acl_access";
/// A directory's default ACL's attribute.
const ACL_DEFAULT: &[u8] = b"system.posix_acl_default";
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

/// The permission bits of an access ACL in the `system.posix_acl_access`
/// format (a little-endian version 2 header, then entries of tag, perm
/// and id) that names only the owner, the owning group and others, each
/// once; `NotSupported` for one that names more (users, groups, a mask),
/// `Invalid` for a malformed one.
fn acl_mode(value: &[u8]) -> FsResult<u16> {
    const VERSION: u32 = 2;
    const USER_OBJ: u16 = 0x01;
    const USER: u16 = 0x02;
    const GROUP_OBJ: u16 = 0x04;
    const GROUP: u16 = 0x08;
    const MASK: u16 = 0x10;
    const OTHER: u16 = 0x20;
    let (header, entries) = value.split_first_chunk::<4>().ok_or(FsError::Invalid)?;
    if u32::from_le_bytes(*header) != VERSION || entries.len() % 8 != 0 {
        return Err(FsError::Invalid);
    }
    let (mut user, mut group, mut other) = (None, None, None);
    let mut extended = false;
    for entry in entries.chunks_exact(8) {
        let tag = u16::from_le_bytes([entry[0], entry[1]]);
        let bits = u16::from_le_bytes([entry[2], entry[3]]);
        if bits & !0o7 != 0 {
            return Err(FsError::Invalid);
        }
        let slot = match tag {
            USER_OBJ => &mut user,
            GROUP_OBJ => &mut group,
            OTHER => &mut other,
            USER | GROUP | MASK => {
                extended = true;
                continue;
            }
            _ => return Err(FsError::Invalid),
        };
        if slot.replace(bits).is_some() {
            return Err(FsError::Invalid);
        }
    }
    match (user, group, other) {
        (Some(u), Some(g), Some(o)) if !extended => Ok(u << 6 | g << 3 | o),
        (Some(_), Some(_), Some(_)) => Err(FsError::NotSupported),
        _ => Err(FsError::Invalid),
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
        if name == ACL_ACCESS {
            return self.set_access_acl(ctx, b, id, value);
        }
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

    /// `setxattr` of `system.posix_acl_access`. AgentFS keeps no ACLs, but
    /// one that names only the owner, the owning group and others (what
    /// `cp -a` copies for an ordinary file, before it falls back to
    /// `fchmod`) says no more than the mode, and is set as ext4 sets it: as
    /// a chmod of the permission bits ([`perm::chmod`]), keeping the set-id
    /// and sticky bits, storing no attribute. An ACL that names users or
    /// groups, or has a mask, is not supported, nor is a default ACL (which
    /// would change the modes of new files: the umask does not apply under
    /// one).
    fn set_access_acl(&self, ctx: &Ctx, b: BranchId, id: NodeId, value: &[u8]) -> FsResult<()> {
        let bits = acl_mode(value)?;
        self.write_tree(b, |t| {
            let mut n = t.edit(id).ok_or(FsError::NotFound)?;
            let mode = u32::from((n.meta.perm & 0o7000) | bits);
            perm::chmod(ctx, &mut n.meta, mode)?;
            n.meta.ctime = SystemTime::now();
            t.insert(id, n);
            Ok(())
        })
    }

    /// No stored attribute, and for the ACLs none either: the mode is the
    /// whole access ACL, and there is no default ACL.
    pub fn getxattr(&self, ctx: &Ctx, b: BranchId, id: NodeId, name: &OsStr) -> FsResult<Vec<u8>> {
        let name = name.as_bytes();
        if name == ACL_ACCESS || name == ACL_DEFAULT {
            return self.read_tree(b, |t| node(t, id).and(Err(FsError::NoXattr)));
        }
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

    /// Removing an ACL (`setfacl -b`, or `cp -a` clearing a copied
    /// directory's default ACL) leaves the mode, as on ext4, and succeeds for
    /// the owner or root: there is nothing stored to remove.
    pub fn removexattr(&self, ctx: &Ctx, b: BranchId, id: NodeId, name: &OsStr) -> FsResult<()> {
        let name = name.as_bytes();
        if name == ACL_ACCESS || name == ACL_DEFAULT {
            return self.read_tree(b, |t| perm::owner(ctx, &node(t, id)?.meta));
        }
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
