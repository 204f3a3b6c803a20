//! Conversions between FsCore's attribute types and fuser's.

use agentfs_core::{Attr, FileKind, SetTime};
use fuser::{FileAttr, FileType, INodeNo, TimeOrNow};

/// Block size reported by `stat`.
pub const BLKSIZE: u32 = 4096;

/// fuser's file type for a core file kind.
pub fn file_type(kind: FileKind) -> FileType {
    match kind {
        FileKind::RegularFile => FileType::RegularFile,
        FileKind::Directory => FileType::Directory,
        FileKind::Symlink => FileType::Symlink,
        FileKind::NamedPipe => FileType::NamedPipe,
        FileKind::CharDevice => FileType::CharDevice,
        FileKind::BlockDevice => FileType::BlockDevice,
        FileKind::Socket => FileType::Socket,
    }
}

/// The kernel's view of a core node, under inode number `ino`.
pub fn file_attr(ino: u64, attr: &Attr) -> FileAttr {
    FileAttr {
        ino: INodeNo(ino),
        size: attr.size,
        blocks: attr.blocks,
        atime: attr.atime,
        mtime: attr.mtime,
        ctime: attr.ctime,
        crtime: attr.crtime,
        kind: file_type(attr.kind),
        perm: attr.perm,
        nlink: attr.nlink,
        uid: attr.uid,
        gid: attr.gid,
        rdev: attr.rdev,
        blksize: BLKSIZE,
        flags: 0,
    }
}

/// A `setattr` time as FsCore takes it.
pub fn set_time(t: TimeOrNow) -> SetTime {
    match t {
        TimeOrNow::SpecificTime(at) => SetTime::At(at),
        TimeOrNow::Now => SetTime::Now,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use agentfs_core::NodeId;
    use std::time::{Duration, SystemTime};

    #[test]
    fn attr_fields_carry_over() {
        let t = SystemTime::UNIX_EPOCH + Duration::from_secs(1000);
        let attr = Attr {
            node: NodeId(9),
            kind: FileKind::CharDevice,
            perm: 0o4755,
            nlink: 3,
            uid: 10,
            gid: 20,
            size: 12345,
            blocks: 24,
            rdev: 0x0501,
            atime: t,
            mtime: t + Duration::from_secs(1),
            ctime: t + Duration::from_secs(2),
            crtime: t,
        };
        let fa = file_attr(77, &attr);
        assert_eq!(fa.ino, INodeNo(77));
        assert_eq!(fa.kind, FileType::CharDevice);
        assert_eq!(fa.perm, 0o4755);
        assert_eq!((fa.nlink, fa.uid, fa.gid, fa.rdev), (3, 10, 20, 0x0501));
        assert_eq!((fa.size, fa.blocks, fa.blksize), (12345, 24, BLKSIZE));
        assert_eq!(fa.mtime, t + Duration::from_secs(1));
        assert_eq!(fa.ctime, t + Duration::from_secs(2));
    }

    #[test]
    fn every_kind_maps_to_its_fuse_type() {
        let kinds = [
            (FileKind::RegularFile, FileType::RegularFile),
            (FileKind::Directory, FileType::Directory),
            (FileKind::Symlink, FileType::Symlink),
            (FileKind::NamedPipe, FileType::NamedPipe),
            (FileKind::CharDevice, FileType::CharDevice),
            (FileKind::BlockDevice, FileType::BlockDevice),
            (FileKind::Socket, FileType::Socket),
        ];
        for (k, t) in kinds {
            assert_eq!(file_type(k), t);
        }
        assert_eq!(set_time(TimeOrNow::Now), SetTime::Now);
    }
}
