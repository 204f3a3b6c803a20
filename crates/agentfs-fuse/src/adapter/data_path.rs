//! Which data path each open inode uses: FUSE passthrough (the kernel reads
//! and writes the backstore object itself) or the transport (every read and
//! write is a FUSE request served by FsCore).
//!
//! The kernel's rules shape this: an inode has at most one backing file at a
//! time, shared by all its passthrough opens, and passthrough and cached opens
//! may not be mixed on one inode. So the first open of an inode decides its
//! path until its last release: passthrough when FsCore says the content is
//! the branch's own (`FsCore::open_passthrough`), else the transport, and
//! every later open of that inode follows. Backing ids live here until the
//! inode's last release, then close (their `Drop` tells the kernel).

use crate::wire::BackingId;
use agentfs_core::{FsCore, HandleId};
use parking_lot::Mutex;
use std::collections::HashMap;
use std::fs::File;
use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// How an open was answered.
pub(crate) enum Route {
    /// Reply with `opened_passthrough` and this backing id.
    Direct(Arc<BackingId>),
    /// Reply with a plain open: reads and writes come to FsCore.
    Transport,
}

enum InodeIo {
    Direct {
        backing: Arc<BackingId>,
        opens: usize,
    },
    Transport {
        opens: usize,
    },
}

/// One open inode's path: `None` until its first open decides it.
#[derive(Default)]
struct InodeEntry {
    io: Option<InodeIo>,
    /// Set by the last release; a route that finds it takes a fresh entry.
    gone: bool,
}

/// The data path of every open inode of one mount.
pub(crate) struct DataPaths {
    /// Passthrough negotiated at init and not since refused by the kernel
    /// (shared with the control handler, which reports it in `status`).
    enabled: Arc<AtomicBool>,
    /// Leaf lock, held only to find or drop an inode's entry. Each entry has
    /// its own lock, held while the inode's first open decides its path:
    /// that asks the backstore for the object's file, which a stalled disk
    /// can make slow, so opens of other inodes must not wait on it. The two
    /// locks are never held together.
    inodes: Mutex<HashMap<u64, Arc<Mutex<InodeEntry>>>>,
}

impl DataPaths {
    pub(crate) fn new(enabled: Arc<AtomicBool>) -> DataPaths {
        enabled.store(false, Ordering::Release);
        DataPaths {
            enabled,
            inodes: Mutex::new(HashMap::new()),
        }
    }

    pub(crate) fn set_enabled(&self, on: bool) {
        self.enabled.store(on, Ordering::Release);
    }

    pub(crate) fn enabled(&self) -> bool {
        self.enabled.load(Ordering::Acquire)
    }

    /// Whether an open of `ino` is deciding its path right now (its entry's
    /// lock is held, maybe across a copy-on-write): a read-only open must
    /// then not run on a FUSE thread, which would wait for it.
    pub(crate) fn deciding(&self, ino: u64) -> bool {
        let entry = self.inodes.lock().get(&ino).cloned();
        entry.is_some_and(|e| e.try_lock().is_none())
    }

    /// Decide the path of a new open `fh` of inode `ino`. `open_backing` asks
    /// the kernel for a backing id (the reply object's method). With
    /// `direct_ok` false, an inode whose path is not decided yet takes the
    /// transport (an inode already open keeps its path).
    pub(crate) fn route(
        &self,
        core: &FsCore,
        ino: u64,
        fh: HandleId,
        direct_ok: bool,
        open_backing: impl FnOnce(&File) -> io::Result<BackingId>,
    ) -> Route {
        loop {
            let entry = Arc::clone(self.inodes.lock().entry(ino).or_default());
            let mut e = entry.lock();
            if e.gone {
                // Its last release is removing it: help, then start again.
                drop(e);
                self.remove_if_same(ino, &entry);
                continue;
            }
            return match &mut e.io {
                Some(InodeIo::Transport { opens }) => {
                    *opens += 1;
                    Route::Transport
                }
                Some(InodeIo::Direct { backing, opens }) => {
                    *opens += 1;
                    // Same inode, same private object: FsCore must agree, and count the handle.
                    if let Ok(Some(_)) = core.open_passthrough(fh) {
                        Route::Direct(Arc::clone(backing))
                    } else {
                        tracing::error!(ino, "inode has a backing file but FsCore refused passthrough; serving without cache");
                        Route::Transport
                    }
                }
                None if !direct_ok => {
                    e.io = Some(InodeIo::Transport { opens: 1 });
                    Route::Transport
                }
                None => {
                    let (io, route) = self.decide(core, ino, fh, open_backing);
                    e.io = Some(io);
                    route
                }
            };
        }
    }

    /// The first open of `ino`: passthrough if FsCore hands over the object
    /// and the kernel takes it, else the transport.
    fn decide(
        &self,
        core: &FsCore,
        ino: u64,
        fh: HandleId,
        open_backing: impl FnOnce(&File) -> io::Result<BackingId>,
    ) -> (InodeIo, Route) {
        let transport = (InodeIo::Transport { opens: 1 }, Route::Transport);
        if !self.enabled() {
            return transport;
        }
        let file = match core.open_passthrough(fh) {
            Ok(Some(file)) => file,
            Ok(None) => return transport,
            Err(e) => {
                tracing::warn!(ino, error = %e, "no passthrough for this open");
                return transport;
            }
        };
        match open_backing(&file) {
            Ok(id) => {
                let backing = Arc::new(id);
                let io = InodeIo::Direct {
                    backing: Arc::clone(&backing),
                    opens: 1,
                };
                (io, Route::Direct(backing))
            }
            Err(e) => {
                let _ = core.close_passthrough(fh);
                // EPERM (no CAP_SYS_ADMIN) or a kernel without backing files:
                // every later open would fail the same way.
                if matches!(
                    e.raw_os_error(),
                    Some(libc::EPERM) | Some(libc::ENOTTY) | Some(libc::EOPNOTSUPP)
                ) {
                    tracing::warn!(error = %e, "the kernel refused a backing file: passthrough off for this mount");
                    self.set_enabled(false);
                } else {
                    tracing::warn!(ino, error = %e, "backing file refused; this inode uses the transport");
                }
                transport
            }
        }
    }

    /// The release of one open of `ino`; the last one closes its backing id.
    pub(crate) fn release(&self, ino: u64) {
        let Some(entry) = self.inodes.lock().get(&ino).cloned() else {
            return;
        };
        let mut e = entry.lock();
        let last = match &mut e.io {
            Some(InodeIo::Direct { opens, .. } | InodeIo::Transport { opens }) => {
                *opens = opens.saturating_sub(1);
                *opens == 0
            }
            None => false,
        };
        if !last {
            return;
        }
        e.gone = true;
        // Dropping the backing id tells the kernel.
        e.io = None;
        drop(e);
        self.remove_if_same(ino, &entry);
    }

    /// Drop `ino`'s entry from the map if it is still `entry`.
    fn remove_if_same(&self, ino: u64, entry: &Arc<Mutex<InodeEntry>>) {
        let mut inodes = self.inodes.lock();
        if inodes.get(&ino).is_some_and(|e| Arc::ptr_eq(e, entry)) {
            inodes.remove(&ino);
        }
    }
}
