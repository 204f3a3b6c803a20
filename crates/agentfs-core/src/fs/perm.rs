//! Permission checks: owner/group/other bits, supplementary groups, the sticky
//! bit, and what only an owner or root may do.
//!
//! The kernel also checks these when the mount uses `default_permissions`;
//! FsCore checks them itself so that it is correct with no kernel in front of
//! it (tests, other adapters).

use super::tree::Meta;
use crate::attr::FileKind;
use crate::creds::Ctx;
use crate::error::{FsError, FsResult};

pub(crate) const R: u16 = 4;
pub(crate) const W: u16 = 2;
pub(crate) const X: u16 = 1;

pub(crate) const S_ISUID: u16 = 0o4000;
pub(crate) const S_ISGID: u16 = 0o2000;
pub(crate) const S_ISVTX: u16 = 0o1000;
pub(crate) const S_IXGRP: u16 = 0o010;

/// Whether `ctx` may access a node with `mask` (a combination of R, W, X).
pub(crate) fn check(ctx: &Ctx, meta: &Meta, mask: u16) -> FsResult<()> {
    if ctx.is_root() {
        // Root passes every check except executing a file with no x bit at all.
        let exec_denied =
            mask & X != 0 && meta.kind != FileKind::Directory && meta.perm & 0o111 == 0;
        return if exec_denied {
            Err(FsError::Access)
        } else {
            Ok(())
        };
    }
    let bits = if ctx.uid == meta.uid {
        meta.perm >> 6
    } else if ctx.in_group(meta.gid) {
        meta.perm >> 3
    } else {
        meta.perm
    } & 7;
    if bits & mask == mask {
        Ok(())
    } else {
        Err(FsError::Access)
    }
}

/// Owner or root, else EPERM (chmod, utimes to a given time, ...).
pub(crate) fn owner(ctx: &Ctx, meta: &Meta) -> FsResult<()> {
    if ctx.is_root() || ctx.uid == meta.uid {
        Ok(())
    } else {
        Err(FsError::Perm)
    }
}

/// `chmod` of `meta` to `mode` (its low 12 bits) by `ctx`: the owner or
/// root only; setting setgid on a file of a group the caller is not in is
/// silently dropped.
pub(crate) fn chmod(ctx: &Ctx, meta: &mut Meta, mode: u32) -> FsResult<()> {
    owner(ctx, meta)?;
    let mut p = (mode & 0o7777) as u16;
    if !ctx.is_root() && meta.kind != FileKind::Directory && !ctx.in_group(meta.gid) {
        p &= !S_ISGID;
    }
    meta.perm = p;
    Ok(())
}

/// In a sticky directory only the owner of the entry, the owner of the
/// directory or root may remove or rename the entry.
pub(crate) fn sticky(ctx: &Ctx, dir: &Meta, victim: &Meta) -> FsResult<()> {
    if dir.perm & S_ISVTX == 0 || ctx.is_root() || ctx.uid == dir.uid || ctx.uid == victim.uid {
        Ok(())
    } else {
        Err(FsError::Perm)
    }
}

/// The mode bits a write by `ctx` leaves: a non-root writer clears setuid, and
/// setgid where group-execute makes it a privilege (not a locking marker).
pub(crate) fn after_write(ctx: &Ctx, perm: u16) -> u16 {
    if ctx.is_root() {
        return perm;
    }
    kill_suid(perm)
}

/// Clear setuid, and setgid when group-execute is set (chown and writes).
pub(crate) fn kill_suid(perm: u16) -> u16 {
    let mut perm = perm & !S_ISUID;
    if perm & S_IXGRP != 0 {
        perm &= !S_ISGID;
    }
    perm
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(perm: u16, uid: u32, gid: u32) -> Meta {
        Meta::new(FileKind::RegularFile, perm, uid, gid)
    }

    #[test]
    fn owner_group_other_bits() {
        let m = meta(0o640, 10, 20);
        assert!(check(&Ctx::with_groups(10, 99, vec![]), &m, R | W).is_ok());
        assert!(check(&Ctx::with_groups(11, 20, vec![]), &m, R).is_ok());
        assert!(check(&Ctx::with_groups(11, 20, vec![]), &m, W).is_err());
        assert!(
            check(&Ctx::with_groups(11, 5, vec![20]), &m, R).is_ok(),
            "supplementary group"
        );
        assert!(check(&Ctx::with_groups(11, 5, vec![]), &m, R).is_err());
        // The owner class decides even when it grants less than group would.
        let m = meta(0o070, 10, 20);
        assert!(check(&Ctx::with_groups(10, 20, vec![]), &m, R).is_err());
    }

    #[test]
    fn root_needs_some_exec_bit() {
        let m = meta(0o600, 10, 20);
        assert!(check(&Ctx::root(), &m, R | W).is_ok());
        assert!(check(&Ctx::root(), &m, X).is_err());
        assert!(check(&Ctx::root(), &meta(0o601, 10, 20), X).is_ok());
    }

    #[test]
    fn sticky_rules() {
        let mut dir = meta(0o1777, 1, 1);
        dir.kind = FileKind::Directory;
        let victim = meta(0o644, 2, 2);
        assert!(sticky(&Ctx::with_groups(3, 3, vec![]), &dir, &victim).is_err());
        assert!(sticky(&Ctx::with_groups(2, 3, vec![]), &dir, &victim).is_ok());
        assert!(sticky(&Ctx::with_groups(1, 3, vec![]), &dir, &victim).is_ok());
    }

    #[test]
    fn write_clears_setid() {
        let ctx = Ctx::with_groups(5, 5, vec![]);
        assert_eq!(after_write(&ctx, 0o6755), 0o0755);
        assert_eq!(
            after_write(&ctx, 0o6745),
            0o2745,
            "setgid without group exec stays"
        );
        assert_eq!(after_write(&Ctx::root(), 0o6755), 0o6755);
    }
}
