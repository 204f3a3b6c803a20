//! Taking possession of a backstore root at open.
//!
//! In order: make sure the root is a directory we can write (creating it, mode
//! 0700, if missing), take the exclusive `flock` on `<root>/lock` that keeps a
//! second mount off it, make sure `objects/` and `meta/` exist, and delete in a
//! background thread every `trash-*` that a build from before persistence left
//! (it moved the previous mount's objects aside there). Objects of earlier
//! mounts stay: FsCore's journal and checkpoint name them, and recovery
//! removes the ones nothing names.

use crate::error::HostFsError;
use crate::sys;
use std::fs::{self, DirBuilder, File, OpenOptions};
use std::io;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread::JoinHandle;

pub(crate) const LOCK_FILE: &str = "lock";
pub(crate) const OBJECTS_DIR: &str = "objects";
pub(crate) const META_DIR: &str = "meta";
const TRASH_PREFIX: &str = "trash-";

/// A root we own for as long as `lock` stays open.
pub(crate) struct Root {
    /// Absolute, symlinks resolved (the daemon may change directory later).
    pub path: PathBuf,
    pub objects: PathBuf,
    /// An fd of the root directory, for `syncfs` and `fstatvfs`.
    pub dir: File,
    /// Holds the exclusive `flock`; closing it releases the root.
    pub lock: File,
    /// The thread deleting old `trash-*` directories, if one was needed.
    pub trash: Option<JoinHandle<()>>,
}

fn io_err<'a>(path: &'a Path, op: &'static str) -> impl FnOnce(io::Error) -> HostFsError + 'a {
    move |source| HostFsError::Io {
        path: path.to_path_buf(),
        op,
        source,
    }
}

/// Permission and read-only errors become `NotWritable`; others `Io`.
fn access_err<'a>(path: &'a Path, op: &'static str) -> impl FnOnce(io::Error) -> HostFsError + 'a {
    move |source| match sys::errno(&source) {
        libc::EACCES | libc::EPERM | libc::EROFS => HostFsError::NotWritable {
            path: path.to_path_buf(),
            uid: sys::getuid(),
            source,
        },
        _ => HostFsError::Io {
            path: path.to_path_buf(),
            op,
            source,
        },
    }
}

/// Claim `root`: see the module header for the steps.
pub(crate) fn claim(root: &Path) -> Result<Root, HostFsError> {
    match fs::metadata(root) {
        Ok(meta) if !meta.is_dir() => {
            return Err(HostFsError::NotADirectory {
                path: root.to_path_buf(),
            })
        }
        Ok(_) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(root)
            .map_err(access_err(root, "create it"))?,
        Err(e) => return Err(io_err(root, "inspect it")(e)),
    }
    let path = fs::canonicalize(root).map_err(io_err(root, "resolve its absolute path"))?;
    probe_writable(&path)?;

    let lock_path = path.join(LOCK_FILE);
    let lock = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(&lock_path)
        .map_err(access_err(&path, "open its lock file"))?;
    if let Err(e) = sys::try_lock_exclusive(&lock) {
        return Err(if sys::errno(&e) == libc::EWOULDBLOCK {
            HostFsError::InUse {
                path,
                lock: lock_path,
            }
        } else {
            io_err(&path, "lock it")(e)
        });
    }
    let dir = File::open(&path).map_err(io_err(&path, "open it"))?;

    let objects = path.join(OBJECTS_DIR);
    for dir in [&objects, &path.join(META_DIR)] {
        match DirBuilder::new().mode(0o700).create(dir) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists && dir.is_dir() => {}
            Err(e) => return Err(io_err(&path, "create its objects and meta directories")(e)),
        }
    }
    let trash = start_trash_cleaner(&path)?;
    Ok(Root {
        path,
        objects,
        dir,
        lock,
        trash,
    })
}

/// Create and remove a file in `root`: the one test that sees ACLs, read-only
/// mounts and root squash the same way the real work will.
fn probe_writable(root: &Path) -> Result<(), HostFsError> {
    static PROBES: AtomicU64 = AtomicU64::new(0);
    let probe = root.join(format!(
        ".probe-{}-{}",
        std::process::id(),
        PROBES.fetch_add(1, Ordering::Relaxed)
    ));
    OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&probe)
        .map_err(access_err(root, "create a probe file in it"))?;
    fs::remove_file(&probe).map_err(access_err(root, "remove a probe file from it"))
}

/// Delete every `trash-*` under `root` on a named background thread.
fn start_trash_cleaner(root: &Path) -> Result<Option<JoinHandle<()>>, HostFsError> {
    let mut trash = Vec::new();
    for entry in fs::read_dir(root).map_err(io_err(root, "list it"))? {
        let entry = entry.map_err(io_err(root, "list it"))?;
        if entry
            .file_name()
            .to_string_lossy()
            .starts_with(TRASH_PREFIX)
        {
            trash.push(entry.path());
        }
    }
    if trash.is_empty() {
        return Ok(None);
    }
    let spawned = std::thread::Builder::new()
        .name("agentfs-hostfs-trash".into())
        .spawn(move || {
            for dir in trash {
                match fs::remove_dir_all(&dir) {
                    Ok(()) => {
                        tracing::debug!(dir = %dir.display(), "deleted old backstore objects")
                    }
                    // Another open of the same root may be deleting it too.
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                    Err(e) => tracing::warn!(dir = %dir.display(), error = %e,
                        "cannot delete old backstore objects; the next mount retries"),
                }
            }
        });
    match spawned {
        Ok(handle) => Ok(Some(handle)),
        Err(e) => {
            tracing::warn!(error = %e, "cannot start the trash cleaner; the next mount retries");
            Ok(None)
        }
    }
}
