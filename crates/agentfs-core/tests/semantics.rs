//! FsCore behaviour through its public API, on an in-memory backstore.

mod common;

use agentfs_core::{Ctx, FsError, NodeId, OpenFlags, RenameFlags, SetAttr, XattrSet};
use common::*;

#[test]
fn snapshot_and_branch_see_the_past_while_main_moves_on() {
    let e = env();
    let main = e.main();
    e.mkdir(main, "src");
    e.write_file(main, "src/a.txt", b"one");
    let snap = e.core.snapshot_create(main, Some("base".into())).unwrap();
    e.write_file(main, "src/a.txt", b"two");
    e.write_file(main, "src/new.txt", b"new");
    let br = e
        .core
        .branch_create(snap.id, Some("feature".into()))
        .unwrap()
        .id;
    assert_eq!(e.read_file(br, "src/a.txt").unwrap(), b"one");
    assert!(matches!(
        e.resolve(br, "src/new.txt"),
        Err(FsError::NotFound)
    ));
    assert_eq!(e.read_file(main, "src/a.txt").unwrap(), b"two");

    // Writing in the branch touches neither main nor the snapshot.
    e.write_file(br, "src/a.txt", b"branch");
    e.write_file(br, "src/only-here", b"x");
    assert_eq!(e.read_file(main, "src/a.txt").unwrap(), b"two");
    let again = e
        .core
        .branch_create(snap.id, Some("again".into()))
        .unwrap()
        .id;
    assert_eq!(e.read_file(again, "src/a.txt").unwrap(), b"one");
    assert!(e.resolve(again, "src/only-here").is_err());
    assert_eq!(e.read_file(br, "src/a.txt").unwrap(), b"branch");
}

#[test]
fn snapshot_of_a_file_open_for_writing_stays_point_in_time() {
    let e = env();
    let main = e.main();
    e.write_file(main, "log", b"");
    let fh = e.open(main, "log", RW);
    e.core.write(&e.root, fh, 0, b"AAAA").unwrap();
    let snap = e.core.snapshot_create(main, None).unwrap();
    // The same handle keeps writing after the snapshot.
    e.core.write(&e.root, fh, 4, b"BBBB").unwrap();
    e.core.write(&e.root, fh, 0, b"C").unwrap();
    e.core.release(fh).unwrap();
    let br = e.core.branch_create(snap.id, None).unwrap().id;
    assert_eq!(e.read_file(br, "log").unwrap(), b"AAAA");
    assert_eq!(e.read_file(main, "log").unwrap(), b"CAAABBBB");
    // A second snapshot while the first branch writes: each sees its own instant.
    let fh = e.open(br, "log", RW);
    e.core.write(&e.root, fh, 0, b"X").unwrap();
    let snap2 = e.core.snapshot_create(br, None).unwrap();
    e.core.write(&e.root, fh, 1, b"Y").unwrap();
    e.core.release(fh).unwrap();
    let br2 = e.core.branch_create(snap2.id, None).unwrap().id;
    assert_eq!(e.read_file(br2, "log").unwrap(), b"XAAA");
    assert_eq!(e.read_file(br, "log").unwrap(), b"XYAA");
}

#[test]
fn first_open_for_writing_clones_shared_content_and_reads_do_not() {
    let e = env();
    let main = e.main();
    e.write_file(main, "f", &vec![7u8; 10_000]);
    let snap = e.core.snapshot_create(main, None).unwrap();
    let br = e.core.branch_create(snap.id, None).unwrap().id;
    let before = e.store.clone_count();
    let fh = e.open(br, "f", RO);
    e.core.release(fh).unwrap();
    assert_eq!(e.store.clone_count(), before, "reading shares");
    let fh = e.open(br, "f", RW);
    assert_eq!(
        e.store.clone_count(),
        before + 1,
        "open for writing clones before it returns"
    );
    e.core.write(&e.root, fh, 0, b"z").unwrap();
    e.core.write(&e.root, fh, 1, b"z").unwrap();
    e.core.release(fh).unwrap();
    assert_eq!(
        e.store.clone_count(),
        before + 1,
        "one clone per sharing, not per write"
    );
    // O_TRUNC of shared content lets go of it instead of copying.
    let fh = e.open(
        main,
        "f",
        OpenFlags {
            truncate: true,
            ..RW
        },
    );
    e.core.release(fh).unwrap();
    assert_eq!(e.store.clone_count(), before + 1);
    assert_eq!(e.read_file(main, "f").unwrap(), b"");
}

#[test]
fn deleting_branches_and_snapshots_frees_what_nothing_else_holds() {
    let e = env();
    let main = e.main();
    e.write_file(main, "shared", &vec![1u8; 4096]);
    let snap = e.core.snapshot_create(main, None).unwrap();
    let br = e.core.branch_create(snap.id, None).unwrap().id;
    e.write_file(br, "big", &vec![2u8; 1 << 20]);
    let with_branch = e.core.usage();
    e.core.branch_delete(br, false).unwrap();
    let after = e.core.usage();
    assert_eq!(with_branch.objects - 1, after.objects);
    assert!(with_branch.bytes - after.bytes >= 1 << 20);

    // A snapshot with a live child branch can go; its content stays for the child.
    let br = e.core.branch_create(snap.id, None).unwrap().id;
    e.write_file(main, "shared", b"changed in main");
    e.core.snapshot_delete(snap.id).unwrap();
    assert_eq!(e.read_file(br, "shared").unwrap(), vec![1u8; 4096]);
    let objects = e.core.usage().objects;
    e.core.branch_delete(br, false).unwrap();
    assert_eq!(
        e.core.usage().objects,
        objects - 1,
        "the old shared object goes with its last holder"
    );
}

#[test]
fn branch_delete_is_refused_while_busy_unless_forced() {
    let e = env();
    let br = e.branch_from_main(Some("busy"));
    e.write_file(br, "f", b"x");
    let fh = e.open(br, "f", RO);
    assert!(matches!(
        e.core.branch_delete(br, false),
        Err(FsError::Busy(_))
    ));
    e.core.branch_delete(br, true).unwrap();
    // An open handle keeps working on the deleted tree until closed.
    assert_eq!(e.core.read(fh, 0, 10).unwrap(), b"x");
    e.core.release(fh).unwrap();
    assert!(matches!(
        e.core.getattr(br, NodeId::ROOT),
        Err(FsError::Stale)
    ));
    assert!(matches!(
        e.core.branch_delete(e.main(), true),
        Err(FsError::Busy(_))
    ));
}

/// close(2) returns before the kernel's RELEASE reaches the daemon: a
/// delete right after a branch's last process exited waits for a handle
/// being closed instead of refusing (a handle that stays open still refuses).
#[test]
fn branch_delete_waits_for_a_handle_being_closed() {
    let e = env();
    let br = e.branch_from_main(Some("closing"));
    e.write_file(br, "f", b"x");
    let fh = e.open(br, "f", RO);
    std::thread::scope(|s| {
        s.spawn(|| {
            std::thread::sleep(std::time::Duration::from_millis(50));
            e.core.release(fh).unwrap();
        });
        e.core.branch_delete(br, false).unwrap();
    });
    assert!(matches!(
        e.core.getattr(br, NodeId::ROOT),
        Err(FsError::Stale)
    ));
}

#[test]
fn names_are_unique_and_addressable_by_id() {
    let e = env();
    let s = e
        .core
        .snapshot_create(e.main(), Some("base".into()))
        .unwrap();
    assert!(matches!(
        e.core.snapshot_create(e.main(), Some("base".into())),
        Err(FsError::NameTaken(_))
    ));
    assert_eq!(e.core.find_snapshot("base").unwrap(), s.id);
    assert_eq!(e.core.find_snapshot(&s.id.to_string()).unwrap(), s.id);
    let b = e.core.branch_create(s.id, Some("feat".into())).unwrap();
    assert!(matches!(
        e.core.branch_create(s.id, Some("feat".into())),
        Err(FsError::NameTaken(_))
    ));
    assert_eq!(e.core.find_branch("feat").unwrap(), b.id);
    assert_eq!(e.core.find_branch(&b.id.to_string()).unwrap(), b.id);
    assert_eq!(e.core.find_branch("main").unwrap(), e.main());
    assert!(matches!(
        e.core.find_branch("nope"),
        Err(FsError::UnknownView(_))
    ));
    assert!(matches!(
        e.core.branch_create(s.id, Some("b7".into())),
        Err(FsError::Invalid)
    ));
    assert_eq!(e.core.snapshot_list()[0].children, vec![b.id]);
}

#[test]
fn unlinked_open_file_lives_until_last_close() {
    let e = env();
    let main = e.main();
    e.write_file(main, "tmp", b"still here");
    let fh = e.open(main, "tmp", RW);
    let objects = e.core.usage().objects;
    e.core
        .unlink(&e.root, main, NodeId::ROOT, name("tmp"))
        .unwrap();
    assert!(e.resolve(main, "tmp").is_err());
    assert_eq!(e.core.read(fh, 0, 100).unwrap(), b"still here");
    e.core.write(&e.root, fh, 0, b"S").unwrap();
    assert_eq!(e.core.usage().objects, objects);
    // A snapshot does not capture the orphan.
    let snap = e.core.snapshot_create(main, None).unwrap();
    e.core.release(fh).unwrap();
    assert_eq!(e.core.usage().objects, objects - 1);
    let br = e.core.branch_create(snap.id, None).unwrap().id;
    assert_eq!(e.names(br, ""), vec![".", ".."]);
}

#[test]
fn rename_follows_posix() {
    let e = env();
    let m = e.main();
    let r = NodeId::ROOT;
    e.mkdir(m, "d");
    e.mkdir(m, "d/sub");
    e.write_file(m, "a", b"a");
    e.write_file(m, "b", b"b");
    let flags = RenameFlags::default();
    let noreplace = RenameFlags {
        noreplace: true,
        ..flags
    };
    let exchange = RenameFlags {
        exchange: true,
        ..flags
    };
    assert!(matches!(
        e.core
            .rename(&e.root, m, r, name("a"), r, name("b"), noreplace),
        Err(FsError::Exists)
    ));
    e.core
        .rename(&e.root, m, r, name("a"), r, name("b"), exchange)
        .unwrap();
    assert_eq!(e.read_file(m, "a").unwrap(), b"b");
    assert_eq!(e.read_file(m, "b").unwrap(), b"a");
    e.core
        .rename(&e.root, m, r, name("a"), r, name("b"), flags)
        .unwrap();
    assert_eq!(e.read_file(m, "b").unwrap(), b"b");
    assert!(e.resolve(m, "a").is_err());
    let d = e.resolve(m, "d").unwrap().node;
    let sub = e.resolve(m, "d/sub").unwrap().node;
    assert!(matches!(
        e.core
            .rename(&e.root, m, r, name("d"), sub, name("x"), flags),
        Err(FsError::Invalid)
    ));
    assert!(matches!(
        e.core.rename(&e.root, m, r, name("b"), r, name("d"), flags),
        Err(FsError::IsDir)
    ));
    e.mkdir(m, "e");
    assert!(matches!(
        e.core.rename(&e.root, m, r, name("e"), r, name("d"), flags),
        Err(FsError::NotEmpty)
    ));
    assert!(matches!(
        e.core.rename(&e.root, m, r, name("e"), r, name("b"), flags),
        Err(FsError::NotDir)
    ));
    // Moving a directory moves its `..` and the parents' link counts.
    let root_links = e.core.getattr(m, r).unwrap().nlink;
    e.core
        .rename(&e.root, m, d, name("sub"), r, name("top"), flags)
        .unwrap();
    assert_eq!(e.core.getattr(m, r).unwrap().nlink, root_links + 1);
    assert_eq!(e.core.getattr(m, d).unwrap().nlink, 2);
    assert_eq!(e.resolve(m, "top/..").unwrap().node, r);
    // Replacing an empty directory.
    e.core
        .rename(&e.root, m, r, name("e"), r, name("top"), flags)
        .unwrap();
    assert_eq!(e.core.getattr(m, r).unwrap().nlink, root_links);
}

#[test]
fn hard_links_count_and_share() {
    let e = env();
    let m = e.main();
    let id = e.write_file(m, "one", b"data");
    let attr = e
        .core
        .link(&e.root, m, id, NodeId::ROOT, name("two"))
        .unwrap();
    assert_eq!(attr.nlink, 2);
    e.write_file(m, "two", b"DATA");
    assert_eq!(e.read_file(m, "one").unwrap(), b"DATA");
    e.core
        .unlink(&e.root, m, NodeId::ROOT, name("one"))
        .unwrap();
    assert_eq!(e.core.getattr(m, id).unwrap().nlink, 1);
    let dir = e.mkdir(m, "d");
    assert!(matches!(
        e.core.link(&e.root, m, dir, NodeId::ROOT, name("dl")),
        Err(FsError::Perm)
    ));
}

#[test]
fn permissions_sticky_and_setid_rules() {
    let e = env();
    let m = e.main();
    let r = NodeId::ROOT;
    e.core
        .setattr(
            &e.root,
            m,
            r,
            &SetAttr {
                mode: Some(0o1777),
                ..Default::default()
            },
        )
        .unwrap();
    let alice = Ctx::with_groups(1000, 1000, vec![]);
    let bob = Ctx::with_groups(1001, 1001, vec![]);
    let (attr, fh) = e
        .core
        .create(&alice, m, r, name("a"), 0o100644, 0, RW, true)
        .unwrap();
    e.core.release(fh).unwrap();
    assert_eq!((attr.uid, attr.gid), (1000, 1000));
    assert!(matches!(
        e.core.open(&bob, m, attr.node, RW),
        Err(FsError::Access)
    ));
    assert!(
        matches!(e.core.unlink(&bob, m, r, name("a")), Err(FsError::Perm)),
        "sticky"
    );
    assert!(matches!(
        e.core.setattr(
            &bob,
            m,
            attr.node,
            &SetAttr {
                mode: Some(0o777),
                ..Default::default()
            }
        ),
        Err(FsError::Perm)
    ));
    // A write by a non-root user clears setuid.
    e.core
        .setattr(
            &alice,
            m,
            attr.node,
            &SetAttr {
                mode: Some(0o4755),
                ..Default::default()
            },
        )
        .unwrap();
    let fh = e.core.open(&alice, m, attr.node, RW).unwrap();
    e.core.write(&alice, fh, 0, b"x").unwrap();
    e.core.release(fh).unwrap();
    assert_eq!(e.core.getattr(m, attr.node).unwrap().perm, 0o755);
    // chgrp only to a group one is in; chown never for non-root.
    let set_gid = |g| SetAttr {
        gid: Some(g),
        ..Default::default()
    };
    assert!(matches!(
        e.core.setattr(&alice, m, attr.node, &set_gid(5)),
        Err(FsError::Perm)
    ));
    let member = Ctx::with_groups(1000, 1000, vec![5]);
    assert_eq!(
        e.core
            .setattr(&member, m, attr.node, &set_gid(5))
            .unwrap()
            .gid,
        5
    );
    let set_uid = SetAttr {
        uid: Some(1001),
        ..Default::default()
    };
    assert!(matches!(
        e.core.setattr(&alice, m, attr.node, &set_uid),
        Err(FsError::Perm)
    ));
    e.core.unlink(&alice, m, r, name("a")).unwrap();
    // setgid directories hand their group down.
    let d = e.core.mkdir(&e.root, m, r, name("g"), 0o2777, 0).unwrap();
    e.core
        .setattr(
            &e.root,
            m,
            d.node,
            &SetAttr {
                gid: Some(77),
                ..Default::default()
            },
        )
        .unwrap();
    let sub = e
        .core
        .mkdir(&alice, m, d.node, name("s"), 0o755, 0)
        .unwrap();
    assert_eq!(sub.gid, 77);
    assert_ne!(sub.perm & 0o2000, 0);
}

#[test]
fn xattrs_create_replace_list_remove() {
    let e = env();
    let m = e.main();
    let id = e.write_file(m, "f", b"");
    let n = |s| name(s);
    assert!(matches!(
        e.core.getxattr(&e.root, m, id, n("user.a")),
        Err(FsError::NoXattr)
    ));
    assert!(matches!(
        e.core
            .setxattr(&e.root, m, id, n("user.a"), b"1", XattrSet::Replace),
        Err(FsError::NoXattr)
    ));
    e.core
        .setxattr(&e.root, m, id, n("user.a"), b"1", XattrSet::Create)
        .unwrap();
    assert!(matches!(
        e.core
            .setxattr(&e.root, m, id, n("user.a"), b"2", XattrSet::Create),
        Err(FsError::Exists)
    ));
    e.core
        .setxattr(&e.root, m, id, n("user.a"), b"2", XattrSet::Replace)
        .unwrap();
    e.core
        .setxattr(&e.root, m, id, n("trusted.t"), b"t", XattrSet::Any)
        .unwrap();
    e.core
        .setxattr(&e.root, m, id, n("security.s"), b"s", XattrSet::Any)
        .unwrap();
    assert_eq!(e.core.getxattr(&e.root, m, id, n("user.a")).unwrap(), b"2");
    assert_eq!(
        e.core.listxattr(&e.root, m, id).unwrap(),
        b"security.s\0trusted.t\0user.a\0"
    );
    let alice = Ctx::with_groups(1000, 1000, vec![]);
    assert_eq!(
        e.core.listxattr(&alice, m, id).unwrap(),
        b"security.s\0user.a\0"
    );
    assert!(matches!(
        e.core
            .setxattr(&e.root, m, id, n("system.x"), b"", XattrSet::Any),
        Err(FsError::NotSupported)
    ));
    assert!(matches!(
        e.core.setxattr(
            &e.root,
            m,
            id,
            n("user.big"),
            &vec![0; 70_000],
            XattrSet::Any
        ),
        Err(FsError::TooBig)
    ));
    e.core.removexattr(&e.root, m, id, n("user.a")).unwrap();
    assert!(matches!(
        e.core.removexattr(&e.root, m, id, n("user.a")),
        Err(FsError::NoXattr)
    ));
    // Snapshots keep their xattrs.
    let s = e.core.snapshot_create(m, None).unwrap();
    e.core.removexattr(&e.root, m, id, n("trusted.t")).unwrap();
    let b = e.core.branch_create(s.id, None).unwrap().id;
    assert_eq!(
        e.core.getxattr(&e.root, b, id, n("trusted.t")).unwrap(),
        b"t"
    );
}

#[test]
fn truncate_and_fallocate_punch_and_zero() {
    let e = env();
    let m = e.main();
    let id = e.write_file(m, "f", &[9u8; 8192]);
    let fh = e.open(m, "f", RW);
    let punch = libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE;
    e.core.fallocate(&e.root, fh, punch, 100, 50).unwrap();
    let data = e.core.read(fh, 0, 8192).unwrap();
    assert_eq!(data.len(), 8192);
    assert!(data[100..150].iter().all(|&b| b == 0) && data[99] == 9 && data[150] == 9);
    e.core
        .fallocate(&e.root, fh, libc::FALLOC_FL_ZERO_RANGE, 8000, 1000)
        .unwrap();
    assert_eq!(e.core.getattr(m, id).unwrap().size, 9000);
    assert!(matches!(
        e.core
            .fallocate(&e.root, fh, libc::FALLOC_FL_PUNCH_HOLE, 0, 1),
        Err(FsError::NotSupported)
    ));
    e.core
        .setattr(
            &e.root,
            m,
            id,
            &SetAttr {
                size: Some(10),
                ..Default::default()
            },
        )
        .unwrap();
    e.core
        .setattr(
            &e.root,
            m,
            id,
            &SetAttr {
                size: Some(20),
                ..Default::default()
            },
        )
        .unwrap();
    assert_eq!(
        e.core.read(fh, 0, 100).unwrap(),
        [&[9u8; 10][..], &[0u8; 10][..]].concat()
    );
    e.core.release(fh).unwrap();
}

#[test]
fn append_writes_at_the_end() {
    let e = env();
    let m = e.main();
    e.write_file(m, "log", b"abc");
    let fh = e.open(m, "log", OpenFlags { append: true, ..RW });
    e.core.write(&e.root, fh, 0, b"def").unwrap();
    e.core.release(fh).unwrap();
    assert_eq!(e.read_file(m, "log").unwrap(), b"abcdef");
}

#[test]
fn readdir_lists_dot_dotdot_and_names_in_order() {
    let e = env();
    let m = e.main();
    e.mkdir(m, "d");
    for n in ["b", "a", "c"] {
        e.write_file(m, &format!("d/{n}"), b"");
    }
    assert_eq!(e.names(m, "d"), vec![".", "..", "a", "b", "c"]);
    // Resuming from a cookie continues after that entry.
    let d = e.resolve(m, "d").unwrap().node;
    let fh = e.core.opendir(&e.root, m, d).unwrap();
    let first = e.core.readdir(fh, 0, 3).unwrap();
    let rest = e
        .core
        .readdir(fh, first.last().unwrap().offset, 10)
        .unwrap();
    assert_eq!(
        rest.iter().map(|e| e.name.clone()).collect::<Vec<_>>(),
        vec![b"b".to_vec(), b"c".to_vec()]
    );
    e.core.releasedir(fh).unwrap();
}

/// readdirplus answers, for every entry, what getattr answers for its node
/// (blocks included), read for the whole batch at once.
#[test]
fn readdir_plus_answers_what_getattr_answers() {
    let e = env();
    let m = e.main();
    e.mkdir(m, "d");
    e.mkdir(m, "d/sub");
    e.write_file(m, "d/empty", b"");
    e.write_file(m, "d/data", &[7u8; 10_000]);
    let d = e.resolve(m, "d").unwrap().node;
    let fh = e.core.opendir(&e.root, m, d).unwrap();
    let plus = e.core.readdir_plus(fh, 0, 100).unwrap();
    let names: Vec<_> = plus.iter().map(|p| p.entry.name.clone()).collect();
    assert_eq!(names, [&b"."[..], b"..", b"data", b"empty", b"sub"]);
    for p in &plus {
        assert_eq!(p.attr, e.core.getattr(m, p.entry.node).unwrap());
        assert!(p.attr_in_memory, "{:?}", p.entry.name);
    }
    let data = plus.iter().find(|p| p.entry.name == b"data").unwrap();
    assert_eq!(data.attr.size, 10_000);
    assert!(data.attr.blocks > 0);
    // Resuming after a cookie continues after that entry.
    let rest = e.core.readdir_plus(fh, plus[2].entry.offset, 100).unwrap();
    assert_eq!(rest.len(), 2);
    assert_eq!(rest[0].entry.name, b"empty");
    e.core.releasedir(fh).unwrap();
}

#[test]
fn name_limits_and_errors() {
    let e = env();
    let m = e.main();
    let long = "x".repeat(256);
    let ok = "y".repeat(255);
    assert!(matches!(
        e.core
            .mkdir(&e.root, m, NodeId::ROOT, name(&long), 0o755, 0),
        Err(FsError::NameTooLong)
    ));
    e.core
        .mkdir(&e.root, m, NodeId::ROOT, name(&ok), 0o755, 0)
        .unwrap();
    assert!(matches!(
        e.core.mkdir(&e.root, m, NodeId::ROOT, name(&ok), 0o755, 0),
        Err(FsError::Exists)
    ));
    assert!(matches!(
        e.core.rmdir(&e.root, m, NodeId::ROOT, name("missing")),
        Err(FsError::NotFound)
    ));
}

#[test]
fn bindings_inherit_and_ignore_reused_pids() {
    let e = env();
    e.procs.spawn(1, 0, 1, 0);
    e.procs.spawn(100, 1, 50, 1000);
    e.procs.spawn(101, 100, 60, 1000);
    let b = e.branch_from_main(None);
    assert_eq!(e.core.branch_of(101), e.main());
    e.core.bind(100, b).unwrap();
    assert_eq!(e.core.branch_of(101), b);
    assert_eq!(e.core.branch_info(b).unwrap().bound_processes, 1);
    e.procs.exit(100);
    e.procs.spawn(100, 1, 999, 1000);
    assert_eq!(
        e.core.branch_of(100),
        e.main(),
        "a new process with an old pid is not bound"
    );
    e.core.bind(100, b).unwrap();
    assert!(e.core.unbind(100).unwrap());
    assert_eq!(e.core.branch_of(100), e.main());
    // Deleting a branch drops its bindings.
    e.core.bind(101, b).unwrap();
    e.core.branch_delete(b, true).unwrap();
    assert_eq!(e.core.branch_of(101), e.main());
}

#[test]
fn only_bindings_through_the_shared_root_make_it_caller_dependent() {
    let e = env();
    e.procs.spawn(1, 0, 1, 0);
    e.procs.spawn(300, 1, 10, 0);
    e.procs.spawn(301, 1, 11, 0);
    let b = e.branch_from_main(None);
    assert!(
        !e.core.root_is_shared(),
        "nobody bound: everyone sees main at the root"
    );
    e.core.bind_view(300, b, false).unwrap();
    assert!(
        !e.core.root_is_shared(),
        "a private view never looks in the shared root"
    );
    assert_eq!(
        e.core.branch_of(300),
        b,
        "but the daemon still knows its branch"
    );
    e.core.bind(301, b).unwrap();
    assert!(e.core.root_is_shared());
    e.core.unbind(301).unwrap();
    assert!(!e.core.root_is_shared());
    e.write_file(e.main(), "top", b"");
    e.mkdir(e.main(), "dir");
    let mut names = e.core.root_names(e.main()).unwrap();
    names.sort();
    assert_eq!(names, vec![b"dir".to_vec(), b"top".to_vec()]);
}

/// A `system.posix_acl_access` value: version 2, then (tag, perm, id).
fn acl(entries: &[(u16, u16, u32)]) -> Vec<u8> {
    let mut v = 2u32.to_le_bytes().to_vec();
    for &(tag, perm, id) in entries {
        v.extend_from_slice(&tag.to_le_bytes());
        v.extend_from_slice(&perm.to_le_bytes());
        v.extend_from_slice(&id.to_le_bytes());
    }
    v
}

#[test]
fn an_access_acl_the_mode_can_express_sets_the_mode() {
    const UNDEFINED: u32 = u32::MAX;
    let e = env();
    let m = e.main();
    let id = e.write_file(m, "f", b"");
    let set = |ctx: &Ctx, value: &[u8]| {
        e.core.setxattr(
            ctx,
            m,
            id,
            name("system.posix_acl_access"),
            value,
            XattrSet::Any,
        )
    };
    let alice = Ctx::with_groups(1000, 1000, vec![]);
    let owned_by_alice = SetAttr {
        uid: Some(1000),
        gid: Some(2000),
        ..SetAttr::default()
    };
    e.core.setattr(&e.root, m, id, &owned_by_alice).unwrap();
    let setid = SetAttr {
        mode: Some(0o6600),
        ..SetAttr::default()
    };
    e.core.setattr(&e.root, m, id, &setid).unwrap();
    // Owner rw-, group r--, others r-- (what `cp -a` sends for a 0644 file).
    let trivial = acl(&[
        (0x01, 6, UNDEFINED),
        (0x04, 4, UNDEFINED),
        (0x20, 4, UNDEFINED),
    ]);
    set(&alice, &trivial).unwrap();
    let attr = e.core.getattr(m, id).unwrap();
    // setuid kept; setgid dropped (alice is not in group 2000).
    assert_eq!(attr.perm, 0o4644);
    // Nothing stored: no ACL beyond the mode, and no default ACL.
    for acl_name in ["system.posix_acl_access", "system.posix_acl_default"] {
        assert!(matches!(
            e.core.getxattr(&e.root, m, id, name(acl_name)),
            Err(FsError::NoXattr)
        ));
    }
    assert_eq!(e.core.listxattr(&e.root, m, id).unwrap(), b"");
    // Only the owner or root.
    let bob = Ctx::with_groups(1001, 1001, vec![]);
    assert!(matches!(set(&bob, &trivial), Err(FsError::Perm)));
    // Removing an ACL leaves the mode (and only the owner or root may).
    for acl_name in ["system.posix_acl_access", "system.posix_acl_default"] {
        e.core.removexattr(&alice, m, id, name(acl_name)).unwrap();
        assert!(matches!(
            e.core.removexattr(&bob, m, id, name(acl_name)),
            Err(FsError::Perm)
        ));
    }
    assert_eq!(e.core.getattr(m, id).unwrap().perm, 0o4644);
    // A default ACL would change new files' modes: not supported.
    assert!(matches!(
        e.core.setxattr(
            &alice,
            m,
            id,
            name("system.posix_acl_default"),
            &trivial,
            XattrSet::Any
        ),
        Err(FsError::NotSupported)
    ));
    let mode_700 = acl(&[
        (0x01, 7, UNDEFINED),
        (0x04, 0, UNDEFINED),
        (0x20, 0, UNDEFINED),
    ]);
    set(&e.root, &mode_700).unwrap();
    assert_eq!(e.core.getattr(m, id).unwrap().perm, 0o4700);
    // A named user, or a mask: more than the mode says.
    let named = acl(&[
        (0x01, 6, UNDEFINED),
        (0x02, 6, 1001),
        (0x04, 4, UNDEFINED),
        (0x10, 6, UNDEFINED),
        (0x20, 4, UNDEFINED),
    ]);
    assert!(matches!(set(&alice, &named), Err(FsError::NotSupported)));
    // Malformed: no other entry, a duplicate, bad bits, a bad version, a
    // truncated entry.
    for bad in [
        acl(&[(0x01, 6, UNDEFINED), (0x04, 4, UNDEFINED)]),
        acl(&[
            (0x01, 6, UNDEFINED),
            (0x01, 6, UNDEFINED),
            (0x04, 4, UNDEFINED),
            (0x20, 4, UNDEFINED),
        ]),
        acl(&[
            (0x01, 0o10, UNDEFINED),
            (0x04, 4, UNDEFINED),
            (0x20, 4, UNDEFINED),
        ]),
        {
            let mut v = trivial.clone();
            v[0] = 1;
            v
        },
        trivial[..trivial.len() - 1].to_vec(),
    ] {
        assert!(
            matches!(set(&alice, &bad), Err(FsError::Invalid)),
            "{bad:?}"
        );
    }
    assert_eq!(
        e.core.getattr(m, id).unwrap().perm,
        0o4700,
        "a refused ACL changed the mode"
    );
}
