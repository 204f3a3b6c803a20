//! Reads served by FsCore for a file the kernel writes directly (FUSE
//! passthrough) must see the whole file the kernel sees.
//!
//! The kernel still sends FUSE_READ for such a file: readahead of its own page
//! cache (posix_fadvise WILLNEED) goes to the daemon. A short answer makes the
//! kernel believe the file ends there and cut its size, so `lseek(SEEK_END)`
//! disagreed with `stat` under fsx. FsCore must bound those reads, and
//! SEEK_DATA/SEEK_HOLE, by the object's length, as `getattr` does.

use agentfs_core::{CoreConfig, Ctx, FsCore, NodeId, OpenFlags, ProcFs};
use agentfs_hostfs::{HostFs, HostFsOptions};
use std::ffi::OsStr;
use std::os::unix::fs::FileExt;
use std::sync::Arc;

const RW: OpenFlags = OpenFlags {
    read: true,
    write: true,
    append: false,
    truncate: false,
};
const RO: OpenFlags = OpenFlags {
    read: true,
    write: false,
    append: false,
    truncate: false,
};

#[test]
fn reads_and_seeks_see_bytes_the_kernel_wrote_directly() {
    let dir = tempfile::tempdir().unwrap();
    let store = HostFs::open(dir.path(), HostFsOptions::default()).expect("backstore");
    let config = CoreConfig {
        process_table: Box::new(ProcFs),
        default_branch_name: "main".into(),
    };
    let core = FsCore::new(Arc::new(store), config);
    let root = Ctx::root();
    let main = core.default_branch();
    let (attr, fh) = core
        .create(
            &root,
            main,
            NodeId::ROOT,
            OsStr::new("f"),
            0o100644,
            0,
            RW,
            true,
        )
        .unwrap();
    let file = core
        .open_passthrough(fh)
        .unwrap()
        .expect("a writer gets the object");
    let data: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
    file.write_all_at(&data, 0).unwrap();
    assert_eq!(core.getattr(main, attr.node).unwrap().size, 100_000);

    // Readahead through the writer's handle and through a second handle.
    let reader = core.open(&root, main, attr.node, RO).unwrap();
    for h in [fh, reader] {
        let got = core.read(h, 50_000, 4096).unwrap();
        assert_eq!(got.len(), 4096, "a read inside the file came back short");
        assert_eq!(got, &data[50_000..54_096]);
        let tail = core.read(h, 99_000, 4096).unwrap();
        assert_eq!(
            tail,
            &data[99_000..],
            "a read up to the end stops at the object's end"
        );
        assert_eq!(core.lseek(h, 60_000, libc::SEEK_DATA).unwrap(), 60_000);
        assert_eq!(core.lseek(h, 60_000, libc::SEEK_HOLE).unwrap(), 100_000);
    }
    core.release(reader).unwrap();
    core.release(fh).unwrap();

    // After the last direct writer closed, the node holds the size itself.
    assert_eq!(core.getattr(main, attr.node).unwrap().size, 100_000);
    let reader = core.open(&root, main, attr.node, RO).unwrap();
    assert_eq!(core.read(reader, 0, u32::MAX).unwrap(), data);
    core.release(reader).unwrap();
}
