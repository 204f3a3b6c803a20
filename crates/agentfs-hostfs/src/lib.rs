//! HostFs: the AgentFS backstore that keeps content objects as plain files in
//! a directory of the host, the real implementation of
//! [`agentfs_core::Backstore`].
//!
//! # Layout
//!
//! ```text
//! <root>/lock                      flock(LOCK_EX) held while a HostFs is open
//! <root>/objects/<fff>/<id>        one file per content object; <id> is 16 hex
//!                                  digits, <fff> bits 8-19 of it in 3, so that
//!                                  256 consecutive ids share a directory
//!                                  (made on first use; `objects.rs` has the
//!                                  older layout, <ff> = its low byte)
//! <root>/meta/checkpoint          FsCore's last checkpoint (see `meta.rs`)
//! <root>/meta/journal             FsCore's journal since that checkpoint
//! <root>/trash-<nanos>/            objects moved aside by a build from before
//!                                  persistence, deleted in the background
//! ```
//!
//! Up to 64 empty objects are made ahead of time by a filler thread, so that
//! `create` does not wait for the host to allocate an inode (see `pool.rs`).
//! The filler starts at the first `create`, after FsCore's recovery has swept
//! unreferenced objects; pooled objects are deleted at close, not counted by
//! `usage` and not listed by `list_objects` (a crash leaves them to the next
//! recovery's sweep).
//!
//! # Objects survive a reopen
//!
//! FsCore persists its trees (journal and checkpoint, kept here through
//! [`agentfs_core::MetaStore`]), and they name objects by id, so objects of
//! earlier mounts stay. At open, the objects directory is scanned once and
//! new ids continue above the highest one found; FsCore's recovery removes
//! the objects no tree names ([`Backstore::list_objects`]).
//!
//! # Why descriptors are cached, with a bound
//!
//! Every read, write and passthrough open needs an fd of the object. Opening by
//! path per call costs a path walk each time; keeping every object open would
//! exhaust the process's descriptors (20,000 here, not raisable), since a tree
//! may hold millions of objects. So [`HostFs`] keeps at most
//! [`HostFsOptions::max_open_files`] files open in an approximately
//! least-recently-used cache (see `cache.rs`), as `Arc<File>`: an evicted file
//! closes once its last user drops it.
//!
//! Host errors keep their raw errno (`io::Error::from_raw_os_error`), because
//! FsCore hands them to the kernel as they are: a full disk is ENOSPC.

#![deny(clippy::undocumented_unsafe_blocks)]

mod cache;
mod clone;
mod error;
mod meta;
mod objects;
mod pool;
mod root;
mod sys;

#[cfg(test)]
mod tests;

pub use error::HostFsError;

use agentfs_core::{Backstore, BackstoreUsage, ContentId, StatFs};
use cache::FdCache;
use clone::CopyMode;
use objects::{object_id, ObjectDir};
use parking_lot::Mutex;
use std::ffi::OsString;
use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

/// How a [`HostFs`] is run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostFsOptions {
    /// Most object files held open at once (at least 1 is used). Default 1024.
    pub max_open_files: usize,
}

impl Default for HostFsOptions {
    fn default() -> Self {
        Self {
            max_open_files: 1024,
        }
    }
}

/// The backstore root used when none is given: `$XDG_DATA_HOME/agentfs/default`,
/// else `$HOME/.local/share/agentfs/default`.
pub fn default_root() -> PathBuf {
    root_from(std::env::var_os("XDG_DATA_HOME"), std::env::var_os("HOME"))
}

fn root_from(xdg_data_home: Option<OsString>, home: Option<OsString>) -> PathBuf {
    // The XDG spec says relative values are invalid and must be ignored.
    let data = match xdg_data_home.map(PathBuf::from) {
        Some(dir) if dir.is_absolute() => dir,
        _ => {
            let home = match home.filter(|h| !h.is_empty()) {
                Some(h) => PathBuf::from(h),
                None => sys::passwd_home().unwrap_or_else(|| PathBuf::from("/")),
            };
            home.join(".local").join("share")
        }
    };
    data.join("agentfs").join("default")
}

/// Content objects as files under a host directory. See the crate header.
pub struct HostFs {
    root: PathBuf,
    objects: ObjectDir,
    /// An fd of the root directory, for `syncfs` and `fstatvfs`.
    root_dir: File,
    /// Holds the root's `flock` until drop.
    _lock: File,
    next_id: Arc<AtomicU64>,
    cache: FdCache,
    /// Empty objects made ahead of time, and the thread making them.
    pool: Arc<pool::ObjectPool>,
    filler: Mutex<Option<JoinHandle<()>>>,
    filler_started: std::sync::atomic::AtomicBool,
    reflinks: AtomicU64,
    copies: AtomicU64,
    /// The thread deleting a previous mount's objects (tests wait on it).
    #[cfg_attr(not(test), allow(dead_code))]
    trash: Mutex<Option<JoinHandle<()>>>,
    meta: meta::MetaFiles,
}

impl HostFs {
    /// Open (creating if missing) the backstore at `root` for this process
    /// alone. Objects left by an earlier open stay; new ids continue above them.
    pub fn open(root: &Path, opts: HostFsOptions) -> Result<HostFs, HostFsError> {
        let claimed = root::claim(root)?;
        let io_err = |op: &'static str| {
            let path = claimed.path.clone();
            move |source| HostFsError::Io { path, op, source }
        };
        let (objects, ids) =
            ObjectDir::open(claimed.objects).map_err(io_err("list its objects"))?;
        let highest = ids.into_iter().max().unwrap_or(0);
        let meta = meta::MetaFiles::open(&claimed.path.join(root::META_DIR), &claimed.dir)
            .map_err(io_err("open its metadata journal"))?;
        Ok(HostFs {
            root: claimed.path,
            objects,
            root_dir: claimed.dir,
            _lock: claimed.lock,
            next_id: Arc::new(AtomicU64::new(highest + 1)),
            cache: FdCache::new(opts.max_open_files),
            pool: Arc::default(),
            filler: Mutex::new(None),
            filler_started: std::sync::atomic::AtomicBool::new(false),
            reflinks: AtomicU64::new(0),
            copies: AtomicU64::new(0),
            trash: Mutex::new(claimed.trash),
            meta,
        })
    }

    /// The backstore root, absolute with symlinks resolved.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// `(reflinks, copies)` made by `clone_object` since open.
    pub fn clone_stats(&self) -> (u64, u64) {
        (
            self.reflinks.load(Ordering::Relaxed),
            self.copies.load(Ordering::Relaxed),
        )
    }

    fn object_path(&self, id: ContentId) -> PathBuf {
        self.objects.file_of(id)
    }

    /// The open file of `id`, from the cache or opened now.
    fn file(&self, id: ContentId) -> io::Result<Arc<File>> {
        self.cache.get_or_open(id, || self.open_object(id))
    }

    fn open_object(&self, id: ContentId) -> io::Result<File> {
        // std opens with O_CLOEXEC.
        OpenOptions::new()
            .read(true)
            .write(true)
            .open(self.object_path(id))
    }

    /// Open `id`'s file now, into the descriptor cache, if the kernel can do
    /// that without reading the disk (its path is in the dentry cache: an
    /// object written or read a moment ago); whether it is open now. A
    /// stalled disk never holds this call.
    fn open_if_cached(&self, id: ContentId) -> bool {
        match sys::open_cached_rw(&self.object_path(id)) {
            Ok(file) => {
                self.cache.insert(id, file);
                true
            }
            Err(_) => false,
        }
    }

    /// Create the file of a fresh id (and its fanout directory if needed).
    fn create_file(&self, id: ContentId) -> io::Result<File> {
        self.objects.create(id)
    }

    /// Start the thread that keeps empty objects ready.
    fn start_filler(&self) {
        let (objects, counter) = (self.objects.clone(), Arc::clone(&self.next_id));
        let filler = self.pool.spawn(
            move || ContentId(counter.fetch_add(1, Ordering::Relaxed)),
            move |id| objects.create(id).map(drop),
        );
        match filler {
            Ok(thread) => *self.filler.lock() = Some(thread),
            Err(e) => tracing::warn!(error = %e, "no object pool: creates make their own"),
        }
    }

    fn fresh_id(&self) -> ContentId {
        ContentId(self.next_id.fetch_add(1, Ordering::Relaxed))
    }

    /// `clone_object`, with the reflink attempt optional so tests reach the
    /// copy path on any filesystem.
    fn clone_with(&self, src: ContentId, try_reflink: bool) -> io::Result<ContentId> {
        let source = self.file(src)?;
        let id = self.fresh_id();
        let dest = self.create_file(id)?;
        let reflinked = if try_reflink {
            match sys::ficlone(&dest, &source) {
                Ok(()) => true,
                Err(e) if clone::reflink_unsupported(&e) => false,
                Err(e) => return Err(self.discard(id, e)),
            }
        } else {
            false
        };
        if reflinked {
            self.reflinks.fetch_add(1, Ordering::Relaxed);
        } else {
            if let Err(e) = clone::copy_sparse(&source, &dest, CopyMode::CopyFileRange) {
                return Err(self.discard(id, e));
            }
            self.copies.fetch_add(1, Ordering::Relaxed);
        }
        self.cache.insert(id, dest);
        Ok(id)
    }

    /// Unlink a half-made object after `err`, which is returned.
    fn discard(&self, id: ContentId, err: io::Error) -> io::Error {
        if let Err(e) = fs::remove_file(self.object_path(id)) {
            tracing::warn!(object = %id, error = %e, "cannot remove a failed clone");
        }
        err
    }

    /// Wait for the thread deleting the previous mount's objects.
    #[cfg(test)]
    fn wait_for_trash(&self) {
        if let Some(handle) = self.trash.lock().take() {
            handle.join().expect("trash thread panicked");
        }
    }
}

impl Backstore for HostFs {
    fn create(&self) -> io::Result<ContentId> {
        if !self.filler_started.swap(true, Ordering::AcqRel) {
            self.start_filler();
        }
        let (id, file) = match self.pool.take() {
            Some(id) => {
                let file = self.open_object(id)?;
                // Made a while ago: a file the kernel writes directly reports
                // its object's mtime, which must not predate the file.
                file.set_modified(std::time::SystemTime::now())?;
                (id, file)
            }
            None => {
                let id = self.fresh_id();
                (id, self.create_file(id)?)
            }
        };
        self.cache.insert(id, file);
        Ok(id)
    }

    fn clone_object(&self, src: ContentId) -> io::Result<ContentId> {
        self.clone_with(src, true)
    }

    fn read_at(&self, id: ContentId, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        let file = self.file(id)?;
        if libc::off_t::try_from(offset).is_err() {
            // Past the largest possible file: end of object, as for any offset past EOF.
            return Ok(0);
        }
        let mut done = 0;
        while done < buf.len() {
            let Some(at) = offset.checked_add(done as u64) else {
                break;
            };
            match file.read_at(&mut buf[done..], at) {
                Ok(0) => break,
                Ok(n) => done += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(done)
    }

    fn write_at(&self, id: ContentId, data: &[u8], offset: u64) -> io::Result<()> {
        self.file(id)?.write_all_at(data, offset)
    }

    fn set_len(&self, id: ContentId, len: u64) -> io::Result<()> {
        self.file(id)?.set_len(len)
    }

    fn fallocate(&self, id: ContentId, mode: i32, offset: u64, len: u64) -> io::Result<()> {
        let offset = sys::off_t(offset, libc::EFBIG)?;
        let len = sys::off_t(len, libc::EFBIG)?;
        sys::fallocate(&*self.file(id)?, mode, offset, len)
    }

    fn sync(&self, id: ContentId, data_only: bool) -> io::Result<()> {
        let file = self.file(id)?;
        if data_only {
            file.sync_data()
        } else {
            file.sync_all()
        }
    }

    fn remove(&self, id: ContentId) -> io::Result<()> {
        let unlinked = fs::remove_file(self.object_path(id));
        self.cache.evict(id);
        unlinked
    }

    fn allocated_bytes(&self, id: ContentId) -> io::Result<u64> {
        Ok(self.file(id)?.metadata()?.blocks() * 512)
    }

    fn set_mtime(&self, id: ContentId, mtime: std::time::SystemTime) -> io::Result<()> {
        self.file(id)?.set_modified(mtime)
    }

    fn len_and_mtime(&self, id: ContentId) -> io::Result<(u64, std::time::SystemTime)> {
        let meta = self.file(id)?.metadata()?;
        Ok((meta.len(), meta.modified()?))
    }

    fn seek(&self, id: ContentId, offset: u64, whence: i32) -> io::Result<u64> {
        let file = self.file(id)?;
        // Past i64::MAX is past the end of any file.
        let offset = sys::off_t(offset, libc::ENXIO)?;
        sys::lseek(&file, offset, whence)
    }

    fn statfs(&self) -> io::Result<StatFs> {
        let st = sys::fstatvfs(&self.root_dir)?;
        Ok(StatFs {
            blocks: st.f_blocks,
            bfree: st.f_bfree,
            bavail: st.f_bavail,
            files: st.f_files,
            ffree: st.f_ffree,
            bsize: u32::try_from(st.f_bsize).unwrap_or(u32::MAX),
            namelen: u32::try_from(st.f_namemax).unwrap_or(u32::MAX),
            frsize: u32::try_from(st.f_frsize).unwrap_or(u32::MAX),
        })
    }

    fn usage(&self) -> BackstoreUsage {
        let (mut usage, mut seen) = (BackstoreUsage::default(), Vec::new());
        let fanouts = match fs::read_dir(self.objects.path()) {
            Ok(dir) => dir,
            Err(e) => {
                tracing::warn!(dir = %self.objects.path().display(), error = %e, "cannot list backstore objects");
                return usage;
            }
        };
        for fanout in fanouts.flatten() {
            let Ok(objects) = fs::read_dir(fanout.path()) else {
                continue;
            };
            // Entries removed while we walk are simply not counted.
            for object in objects.flatten() {
                if let (Some(id), Ok(meta)) = (object_id(&object.file_name()), object.metadata()) {
                    seen.push((id, meta.blocks() * 512));
                }
            }
        }
        // The pool's objects (asked after the walk, so one taken by `create`
        // meanwhile counts) belong to no file.
        let pooled = self.pool.ids();
        for (id, bytes) in seen {
            if !pooled.contains(&ContentId(id)) {
                usage.objects += 1;
                usage.bytes += bytes;
            }
        }
        usage
    }

    fn sync_all(&self) -> io::Result<()> {
        sys::syncfs(&self.root_dir)
    }

    fn host_file(&self, id: ContentId) -> io::Result<Arc<File>> {
        self.file(id)
    }

    fn makes_objects_ahead(&self) -> bool {
        self.filler_started.load(Ordering::Acquire)
    }

    fn create_is_quick(&self) -> bool {
        self.pool.len() > 0
    }

    fn host_file_is_quick(&self, id: ContentId) -> bool {
        self.cache.contains(id) || self.open_if_cached(id)
    }

    fn list_objects(&self) -> io::Result<Vec<ContentId>> {
        let pooled = self.pool.ids();
        Ok(self
            .objects
            .list_ids()?
            .into_iter()
            .map(ContentId)
            .filter(|id| !pooled.contains(id))
            .collect())
    }
}

impl Drop for HostFs {
    fn drop(&mut self) {
        self.pool.stop();
        if let Some(filler) = self.filler.get_mut().take() {
            let _ = filler.join();
        }
        for id in self.pool.drain() {
            let _ = fs::remove_file(self.object_path(id));
        }
    }
}
