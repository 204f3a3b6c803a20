//! The lower directory of an overlay mount: an existing host directory (a git
//! checkout, say) that the default branch starts as, read in place and never
//! written.
//!
//! FsCore names lower files and directories by their path relative to the
//! lower root (raw bytes, `/`-separated, empty for the root). Every open is
//! made relative to a descriptor of the root with `openat2(RESOLVE_BENEATH |
//! RESOLVE_NO_SYMLINKS)`, so a symlink or `..` inside the lower tree can never
//! lead a read outside it (a kernel without `openat2` gets `openat` with
//! `O_NOFOLLOW`, which guards the last component only). Nothing here opens
//! for writing: the only write-capable descriptors of an overlay mount are
//! backstore objects.
//!
//! Files are read through a small cache of read-only descriptors (cleared
//! when full: the process may hold only 20,000 descriptors in all).

use parking_lot::Mutex;
use std::collections::HashMap;
use std::ffi::CString;
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Most lower files kept open for reads at once.
const OPEN_CACHE: usize = 256;

/// What FsCore needs of one lower entry's `lstat`.
#[derive(Clone, Debug)]
pub struct LowerStat {
    /// The lower file's inode number: the node's id keeps its low 32 bits
    /// ([`crate::NodeId::lower`]).
    pub ino: u64,
    pub mode: u32,
    pub nlink: u64,
    pub uid: u32,
    pub gid: u32,
    pub size: u64,
    /// Bytes allocated (`st_blocks * 512`).
    pub allocated: u64,
    pub rdev: u64,
    pub atime: SystemTime,
    pub mtime: SystemTime,
    pub ctime: SystemTime,
}

impl LowerStat {
    fn from_metadata(m: &std::fs::Metadata) -> LowerStat {
        LowerStat {
            ino: m.ino(),
            mode: m.mode(),
            nlink: m.nlink(),
            uid: m.uid(),
            gid: m.gid(),
            size: m.size(),
            allocated: m.blocks().saturating_mul(512),
            rdev: m.rdev(),
            atime: time(m.atime(), m.atime_nsec()),
            mtime: time(m.mtime(), m.mtime_nsec()),
            ctime: time(m.ctime(), m.ctime_nsec()),
        }
    }
}

fn time(secs: i64, nsec: i64) -> SystemTime {
    let nsec = u32::try_from(nsec.clamp(0, 999_999_999)).unwrap_or(0);
    if secs >= 0 {
        UNIX_EPOCH + Duration::new(secs as u64, nsec)
    } else {
        UNIX_EPOCH - Duration::from_secs(secs.unsigned_abs()) + Duration::from_nanos(nsec.into())
    }
}

/// One entry of a lower directory.
#[derive(Clone, Debug)]
pub struct LowerEntry {
    pub name: Vec<u8>,
    pub stat: LowerStat,
    /// The target, for a symlink.
    pub target: Option<Vec<u8>>,
}

/// A lower directory, opened once at mount.
pub struct Lower {
    root: OwnedFd,
    path: PathBuf,
    /// Read-only descriptors of lower files, by relative path. Leaf lock.
    files: Mutex<HashMap<Vec<u8>, Arc<File>>>,
    /// Held while FsCore reads a lower directory into its trees, and while a
    /// snapshot, a branch or a commit is made (so no tree misses a read):
    /// taken before every other lock of FsCore.
    pub(crate) loading: Mutex<()>,
}

impl std::fmt::Debug for Lower {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Lower({})", self.path.display())
    }
}

/// `parent/name` as a lower path (`name` alone under the root).
pub(crate) fn join(parent: &[u8], name: &[u8]) -> Vec<u8> {
    if parent.is_empty() {
        return name.to_vec();
    }
    let mut p = Vec::with_capacity(parent.len() + 1 + name.len());
    p.extend_from_slice(parent);
    p.push(b'/');
    p.extend_from_slice(name);
    p
}

impl Lower {
    /// Open the lower directory `path`.
    pub fn open(path: &Path) -> io::Result<Lower> {
        let c = CString::new(path.as_os_str().as_bytes())
            .map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
        // SAFETY: `c` is a valid NUL-terminated path; the returned descriptor
        // is checked and then owned by the OwnedFd alone.
        let fd = unsafe {
            libc::open(
                c.as_ptr(),
                libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC,
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` was just opened and is owned by nothing else.
        let root = unsafe { OwnedFd::from_raw_fd(fd) };
        Ok(Lower {
            root,
            path: path.to_path_buf(),
            files: Mutex::new(HashMap::new()),
            loading: Mutex::new(()),
        })
    }

    /// The host path the lower directory was opened at.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Open `rel` (read-only) beneath the root, following no symlink.
    fn open_beneath(&self, rel: &[u8], flags: i32) -> io::Result<OwnedFd> {
        let rel = if rel.is_empty() { &b"."[..] } else { rel };
        let c = CString::new(rel).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
        let flags = flags | libc::O_RDONLY | libc::O_CLOEXEC | libc::O_NOFOLLOW;
        // SAFETY: open_how is plain integers; all zeros is a valid value.
        let mut how: libc::open_how = unsafe { std::mem::zeroed() };
        how.flags = flags as u64;
        how.resolve = libc::RESOLVE_BENEATH | libc::RESOLVE_NO_SYMLINKS;
        // SAFETY: `how` is a valid open_how of the size passed; `c` is a valid
        // path; the result is checked before it is owned.
        let fd = unsafe {
            libc::syscall(
                libc::SYS_openat2,
                self.root.as_raw_fd(),
                c.as_ptr(),
                &how as *const libc::open_how,
                std::mem::size_of::<libc::open_how>(),
            )
        };
        let fd = if fd < 0 && io::Error::last_os_error().raw_os_error() == Some(libc::ENOSYS) {
            // SAFETY: as above, with plain openat.
            unsafe { libc::openat(self.root.as_raw_fd(), c.as_ptr(), flags) as libc::c_long }
        } else {
            fd
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` was just opened and is owned by nothing else.
        Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
    }

    /// `lstat` of the lower root.
    pub fn root_stat(&self) -> io::Result<LowerStat> {
        let f = File::from(self.root.try_clone()?);
        Ok(LowerStat::from_metadata(&f.metadata()?))
    }

    /// Every entry of lower directory `rel` with its `lstat` (and a symlink's
    /// target). Entries that vanish while listed are left out.
    pub fn list(&self, rel: &[u8]) -> io::Result<Vec<LowerEntry>> {
        let dir = self.open_beneath(rel, libc::O_DIRECTORY)?;
        let dirfd = dir.as_raw_fd();
        // std reads the entries of the directory the descriptor names and
        // stats each relative to the stream's own descriptor.
        let proc = format!("/proc/self/fd/{dirfd}");
        let mut out = Vec::new();
        for e in std::fs::read_dir(&proc)? {
            let e = e?;
            let meta = match e.metadata() {
                Ok(m) => m,
                Err(err) if err.kind() == io::ErrorKind::NotFound => continue,
                Err(err) => return Err(err),
            };
            let name = e.file_name().as_bytes().to_vec();
            let stat = LowerStat::from_metadata(&meta);
            let target = if meta.file_type().is_symlink() {
                match readlinkat(dirfd, &name) {
                    Ok(t) => Some(t),
                    Err(err) if err.raw_os_error() == Some(libc::ENOENT) => continue,
                    Err(err) => return Err(err),
                }
            } else {
                None
            };
            out.push(LowerEntry { name, stat, target });
        }
        drop(dir);
        Ok(out)
    }

    /// A read-only descriptor of lower file `rel` (cached).
    pub fn file(&self, rel: &[u8]) -> io::Result<Arc<File>> {
        if let Some(f) = self.files.lock().get(rel) {
            return Ok(Arc::clone(f));
        }
        let f = Arc::new(File::from(self.open_beneath(rel, 0)?));
        let mut files = self.files.lock();
        if files.len() >= OPEN_CACHE {
            files.clear();
        }
        files.insert(rel.to_vec(), Arc::clone(&f));
        Ok(f)
    }

    /// Read up to `buf.len()` bytes of lower file `rel` at `offset`.
    pub fn read_at(&self, rel: &[u8], buf: &mut [u8], offset: u64) -> io::Result<usize> {
        let f = self.file(rel)?;
        let mut done = 0;
        while done < buf.len() {
            match f.read_at(&mut buf[done..], offset + done as u64) {
                Ok(0) => break,
                Ok(n) => done += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(done)
    }

    /// `lseek(SEEK_DATA/SEEK_HOLE)` on lower file `rel`.
    pub fn seek(&self, rel: &[u8], offset: u64, whence: i32) -> io::Result<u64> {
        let f = self.file(rel)?;
        let off =
            libc::off_t::try_from(offset).map_err(|_| io::Error::from_raw_os_error(libc::ENXIO))?;
        // SAFETY: lseek on a descriptor we own; the result is checked. The
        // descriptor's own offset is never used for reads (pread only).
        let r = unsafe { libc::lseek(f.as_raw_fd(), off, whence) };
        if r < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(r as u64)
    }
}

fn readlinkat(dirfd: i32, name: &[u8]) -> io::Result<Vec<u8>> {
    let c = CString::new(name).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    let mut buf = vec![0u8; 4096];
    // SAFETY: `buf` is writable for its length; `c` is a valid name.
    let n = unsafe { libc::readlinkat(dirfd, c.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    buf.truncate(n as usize);
    Ok(buf)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_and_reads_without_leaving_the_root() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("d")).unwrap();
        std::fs::write(dir.path().join("d/f"), b"hello").unwrap();
        std::os::unix::fs::symlink("/etc", dir.path().join("escape")).unwrap();
        let lower = Lower::open(dir.path()).unwrap();
        let mut names: Vec<_> = lower
            .list(b"")
            .unwrap()
            .into_iter()
            .map(|e| e.name)
            .collect();
        names.sort();
        assert_eq!(names, vec![b"d".to_vec(), b"escape".to_vec()]);
        let mut buf = [0u8; 16];
        assert_eq!(lower.read_at(b"d/f", &mut buf, 1).unwrap(), 4);
        assert_eq!(&buf[..4], b"ello");
        // A symlink is never followed, as a directory or as a file.
        assert!(lower.list(b"escape").is_err());
        assert!(lower.file(b"escape/passwd").is_err());
        assert!(lower.file(b"../x").is_err());
    }
}
