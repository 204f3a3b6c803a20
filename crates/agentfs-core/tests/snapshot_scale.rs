//! Snapshot and branch creation cost does not grow with the tree: timed at
//! 1,000 / 100,000 / 1,000,000 files (ignored by default: it builds big trees;
//! run with `cargo test --release -p agentfs-core --test snapshot_scale -- --ignored --nocapture`).
//! It prints numbers and asserts nothing about time.

mod common;

use agentfs_core::{NodeId, OpenFlags};
use common::*;
use std::time::Instant;

#[test]
#[ignore = "builds trees of up to 1,000,000 files; a benchmark, run by hand"]
fn snapshot_and_branch_creation_time_by_tree_size() {
    for files in [1_000u32, 100_000, 1_000_000] {
        let e = env();
        let m = e.main();
        let flags = OpenFlags {
            read: true,
            write: true,
            append: false,
            truncate: false,
        };
        let per_dir = 1000;
        for d in 0..files.div_ceil(per_dir) {
            let dir = e
                .core
                .mkdir(&e.root, m, NodeId::ROOT, name(&format!("d{d}")), 0o755, 0)
                .unwrap()
                .node;
            for f in 0..per_dir.min(files - d * per_dir) {
                let (_, fh) = e
                    .core
                    .create(
                        &e.root,
                        m,
                        dir,
                        name(&format!("f{f}")),
                        0o100644,
                        0,
                        flags,
                        true,
                    )
                    .unwrap();
                e.core.release(fh).unwrap();
            }
        }
        let mut snap_us = Vec::new();
        let mut branch_us = Vec::new();
        for _ in 0..10 {
            let t = Instant::now();
            let s = e.core.snapshot_create(m, None).unwrap();
            snap_us.push(t.elapsed().as_secs_f64() * 1e6);
            let t = Instant::now();
            e.core.branch_create(s.id, None).unwrap();
            branch_us.push(t.elapsed().as_secs_f64() * 1e6);
        }
        snap_us.sort_by(f64::total_cmp);
        branch_us.sort_by(f64::total_cmp);
        println!(
            "{files} files: snapshot-create median {:.1} us, branch-create median {:.1} us",
            snap_us[5], branch_us[5]
        );
    }
}
