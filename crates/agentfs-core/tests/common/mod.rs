//! Shared setup for FsCore's integration tests: a core on an in-memory backstore.
#![allow(dead_code)]

use agentfs_core::backstore::mem::MemBackstore;
use agentfs_core::{
    Attr, BranchId, CoreConfig, Ctx, FsCore, HandleId, NodeId, OpenFlags, ProcessInfo, ProcessTable,
};
use std::collections::HashMap;
use std::ffi::OsStr;
use std::sync::{Arc, Mutex};

/// A process table written by the test.
#[derive(Clone, Default)]
pub struct Procs(pub Arc<Mutex<HashMap<u32, ProcessInfo>>>);

impl Procs {
    pub fn spawn(&self, pid: u32, ppid: u32, start_time: u64, uid: u32) {
        self.0.lock().unwrap().insert(
            pid,
            ProcessInfo {
                tgid: pid,
                ppid,
                start_time,
                uid,
            },
        );
    }
    pub fn exit(&self, pid: u32) {
        self.0.lock().unwrap().remove(&pid);
    }
}

impl ProcessTable for Procs {
    fn info(&self, pid: u32) -> Option<ProcessInfo> {
        self.0.lock().unwrap().get(&pid).copied()
    }
}

pub struct Env {
    pub core: FsCore,
    pub store: Arc<MemBackstore>,
    pub procs: Procs,
    pub root: Ctx,
}

pub fn env() -> Env {
    let store = Arc::new(MemBackstore::new());
    let procs = Procs::default();
    let core = FsCore::new(
        store.clone(),
        CoreConfig {
            process_table: Box::new(procs.clone()),
            default_branch_name: "main".into(),
        },
    );
    Env {
        core,
        store,
        procs,
        root: Ctx::root(),
    }
}

pub fn name(s: &str) -> &OsStr {
    OsStr::new(s)
}

pub const RW: OpenFlags = OpenFlags {
    read: true,
    write: true,
    append: false,
    truncate: false,
};
pub const RO: OpenFlags = OpenFlags {
    read: true,
    write: false,
    append: false,
    truncate: false,
};

impl Env {
    pub fn main(&self) -> BranchId {
        self.core.default_branch()
    }

    /// A new branch (named `name`, if given) made from a snapshot of the
    /// default branch taken now.
    pub fn branch_from_main(&self, name: Option<&str>) -> BranchId {
        let snap = self.core.snapshot_create(self.main(), None).unwrap();
        self.core
            .branch_create(snap.id, name.map(String::from))
            .unwrap()
            .id
    }

    /// Resolve a slash-separated path from the root of branch `b`.
    pub fn resolve(&self, b: BranchId, path: &str) -> agentfs_core::FsResult<Attr> {
        let mut attr = self.core.getattr(b, NodeId::ROOT)?;
        for part in path.split('/').filter(|p| !p.is_empty()) {
            attr = self.core.lookup(&self.root, b, attr.node, name(part))?;
        }
        Ok(attr)
    }

    fn parent_and_name<'a>(&self, b: BranchId, path: &'a str) -> (NodeId, &'a str) {
        let (dir, base) = path.rsplit_once('/').unwrap_or(("", path));
        (self.resolve(b, dir).expect("parent exists").node, base)
    }

    pub fn write_file(&self, b: BranchId, path: &str, data: &[u8]) -> NodeId {
        let (parent, base) = self.parent_and_name(b, path);
        let (attr, fh) = self
            .core
            .create(
                &self.root,
                b,
                parent,
                name(base),
                0o100644,
                0,
                OpenFlags {
                    truncate: true,
                    ..RW
                },
                false,
            )
            .expect("create");
        self.core.write(&self.root, fh, 0, data).expect("write");
        self.core.release(fh).expect("release");
        attr.node
    }

    pub fn read_file(&self, b: BranchId, path: &str) -> agentfs_core::FsResult<Vec<u8>> {
        let attr = self.resolve(b, path)?;
        let fh = self.core.open(&self.root, b, attr.node, RO)?;
        let data = self.core.read(fh, 0, u32::MAX);
        self.core.release(fh)?;
        data
    }

    pub fn open(&self, b: BranchId, path: &str, flags: OpenFlags) -> HandleId {
        let attr = self.resolve(b, path).expect("exists");
        self.core
            .open(&self.root, b, attr.node, flags)
            .expect("open")
    }

    pub fn mkdir(&self, b: BranchId, path: &str) -> NodeId {
        let (parent, base) = self.parent_and_name(b, path);
        self.core
            .mkdir(&self.root, b, parent, name(base), 0o755, 0)
            .expect("mkdir")
            .node
    }

    pub fn names(&self, b: BranchId, path: &str) -> Vec<String> {
        let dir = self.resolve(b, path).expect("dir");
        let fh = self.core.opendir(&self.root, b, dir.node).expect("opendir");
        let entries = self.core.readdir(fh, 0, usize::MAX).expect("readdir");
        self.core.releasedir(fh).expect("releasedir");
        entries
            .into_iter()
            .map(|e| String::from_utf8(e.name).unwrap())
            .collect()
    }
}
