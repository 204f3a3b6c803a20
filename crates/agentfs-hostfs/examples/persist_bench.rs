//! Persistence costs, measured on a real HostFs in a temp dir (no mount):
//! creating FILES files (in 100 directories, one in DATA_EVERY with 4 KiB of
//! data; 0: none)
//! without and with the journal, unlinking them all again (on fresh
//! backstores, without and with the journal), then the clean checkpoint, a
//! clean reopen, and a reopen after a "crash" (the core dropped without a
//! checkpoint: the whole creation replayed from the journal). Prints
//! milliseconds and sizes; asserts nothing about time.
//!
//! Run: cargo run --release -p agentfs-hostfs --example persist_bench -- [FILES] [SNAPSHOTS] [DATA_EVERY]

use agentfs_core::{Backstore, CoreConfig, Ctx, FsCore, MetaStore, NodeId, OpenFlags, ProcFs};
use agentfs_hostfs::{HostFs, HostFsOptions};
use std::ffi::OsStr;
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

fn config() -> CoreConfig {
    CoreConfig {
        process_table: Box::new(ProcFs),
        default_branch_name: "main".into(),
    }
}

fn populate(core: &FsCore, files: usize, data_every: usize) {
    let ctx = Ctx::root();
    let main = core.default_branch();
    let rw = OpenFlags {
        read: true,
        write: true,
        append: false,
        truncate: false,
    };
    let dirs: Vec<NodeId> = (0..100)
        .map(|d| {
            core.mkdir(
                &ctx,
                main,
                NodeId::ROOT,
                OsStr::new(&format!("d{d}")),
                0o755,
                0,
            )
            .unwrap()
            .node
        })
        .collect();
    let data = vec![7u8; 4096];
    for i in 0..files {
        let (_, fh) = core
            .create(
                &ctx,
                main,
                dirs[i % 100],
                OsStr::new(&format!("f{i}")),
                0o644,
                0,
                rw,
                false,
            )
            .unwrap();
        if data_every > 0 && i % data_every == 0 {
            core.write(&ctx, fh, 0, &data).unwrap();
        }
        core.release(fh).unwrap();
    }
}

/// Unlink the `files` files [`populate`] made, by name, in creation order.
fn unlink_all(core: &FsCore, files: usize) {
    let ctx = Ctx::root();
    let main = core.default_branch();
    let dirs: Vec<NodeId> = (0..100)
        .map(|d| {
            core.lookup(&ctx, main, NodeId::ROOT, OsStr::new(&format!("d{d}")))
                .unwrap()
                .node
        })
        .collect();
    for i in 0..files {
        core.unlink(&ctx, main, dirs[i % 100], OsStr::new(&format!("f{i}")))
            .unwrap();
    }
}

fn open_persisted(root: &Path) -> (FsCore, agentfs_core::RecoveryReport) {
    let store = Arc::new(HostFs::open(root, HostFsOptions::default()).unwrap());
    FsCore::open_persisted(
        Arc::clone(&store) as Arc<dyn Backstore>,
        store as Arc<dyn MetaStore>,
        config(),
    )
    .unwrap()
}

fn size(p: &Path) -> u64 {
    std::fs::metadata(p).map(|m| m.len()).unwrap_or(0)
}

fn main() {
    let mut args = std::env::args().skip(1);
    let files: usize = args.next().map_or(100_000, |a| a.parse().unwrap());
    let snapshots: usize = args.next().map_or(10, |a| a.parse().unwrap());
    let data_every: usize = args.next().map_or(10, |a| a.parse().unwrap());
    let dir = tempfile::tempdir().unwrap();

    // Alternate the two, twice, so cache warm-up and a busy machine hit both.
    let mut plain = Vec::new();
    let mut journaled = Vec::new();
    let (mut plain_unlink, mut journaled_unlink) = (Vec::new(), Vec::new());
    for round in 0..2 {
        let plain_root = dir.path().join(format!("plain{round}"));
        let t = Instant::now();
        {
            let store = Arc::new(HostFs::open(&plain_root, HostFsOptions::default()).unwrap());
            let core = FsCore::new(store, config());
            populate(&core, files, data_every);
        }
        plain.push(t.elapsed().as_millis());
        let root = dir.path().join(format!("persisted{round}"));
        let t = Instant::now();
        {
            let (core, _) = open_persisted(&root);
            populate(&core, files, data_every);
            core.sync_all().unwrap();
            // Dropped without a checkpoint: a crash as far as metadata goes.
            drop(core);
        }
        journaled.push(t.elapsed().as_millis());
        {
            let root = dir.path().join(format!("plain-unlink{round}"));
            let store = Arc::new(HostFs::open(&root, HostFsOptions::default()).unwrap());
            let core = FsCore::new(store, config());
            populate(&core, files, data_every);
            let t = Instant::now();
            unlink_all(&core, files);
            plain_unlink.push(t.elapsed().as_millis());
        }
        {
            let (core, _) = open_persisted(&dir.path().join(format!("persisted-unlink{round}")));
            populate(&core, files, data_every);
            core.sync_all().unwrap();
            let t = Instant::now();
            unlink_all(&core, files);
            core.sync_all().unwrap();
            journaled_unlink.push(t.elapsed().as_millis());
        }
    }
    let root = dir.path().join("persisted1");
    let journal_bytes = size(&root.join("meta/journal"));
    let _ = std::fs::remove_dir_all(dir.path().join("persisted0"));
    // Recovery after the crash replays the whole creation.
    let t = Instant::now();
    let (core, report) = open_persisted(&root);
    let crash_open = t.elapsed();
    let ctx = Ctx::root();
    for s in 0..snapshots {
        core.snapshot_create(core.default_branch(), Some(format!("snap{s}")))
            .unwrap();
        // Each snapshot differs from the next by one new file.
        let (_, fh) = core
            .create(
                &ctx,
                core.default_branch(),
                NodeId::ROOT,
                OsStr::new(&format!("between{s}")),
                0o644,
                0,
                OpenFlags::from_raw(libc::O_RDWR),
                false,
            )
            .unwrap();
        core.release(fh).unwrap();
    }
    let t = Instant::now();
    core.close_clean().unwrap();
    let checkpoint = t.elapsed();
    let checkpoint_bytes = size(&root.join("meta/checkpoint"));
    drop(core);
    let t = Instant::now();
    let (_core, clean) = open_persisted(&root);
    let clean_open = t.elapsed();

    println!("files: {files} (+100 dirs; 4 KiB of data in 1 of every {data_every}, 0 = none), snapshots: {snapshots}");
    println!("create without journal: {plain:?} ms; with journal (and one sync): {journaled:?} ms");
    println!("unlink them all without journal: {plain_unlink:?} ms; with journal (and one sync): {journaled_unlink:?} ms");
    println!(
        "journal after creation: {journal_bytes} bytes ({:.0} bytes per file)",
        journal_bytes as f64 / files as f64
    );
    println!(
        "recovery after a crash (replay {} records, open incl. writing the next checkpoint): {} ms",
        report.replayed,
        crash_open.as_millis()
    );
    println!(
        "checkpoint (clean unmount): {} ms, {checkpoint_bytes} bytes",
        checkpoint.as_millis()
    );
    println!(
        "clean reopen (replayed {}): {} ms",
        clean.replayed,
        clean_open.as_millis()
    );
}
