//! Thin, safe wrappers over the Linux calls HostFs needs and `std` lacks.
//!
//! Every `unsafe` block of the crate lives here, so the rest reads as plain
//! Rust. Each wrapper turns a `-1` return into `io::Error::last_os_error()`, so
//! the host's errno travels unchanged up to FsCore, which hands it to the kernel
//! (ENOSPC must arrive as ENOSPC).

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;

/// `-1` → the current errno, anything else → the value.
fn check(ret: i64) -> io::Result<i64> {
    if ret == -1 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

/// The raw errno of an error, or 0 for errors that did not come from the OS.
pub(crate) fn errno(err: &io::Error) -> i32 {
    err.raw_os_error().unwrap_or(0)
}

/// An offset or length as `off_t`; values past `i64::MAX` get `overflow` as errno.
pub(crate) fn off_t(value: u64, overflow: i32) -> io::Result<libc::off_t> {
    libc::off_t::try_from(value).map_err(|_| io::Error::from_raw_os_error(overflow))
}

/// `ioctl(dst, FICLONE, src)`: make `dst` share all of `src`'s extents.
pub(crate) fn ficlone(dst: &File, src: &File) -> io::Result<()> {
    // SAFETY: FICLONE takes the source fd as its integer argument and reads no
    // memory of ours; both fds are open for the duration of the call because
    // we hold borrows of the owning `File`s.
    let ret = unsafe { libc::ioctl(dst.as_raw_fd(), libc::FICLONE, src.as_raw_fd()) };
    check(ret.into()).map(|_| ())
}

/// `copy_file_range(2)` of up to `len` bytes from `src@*off_in` to
/// `dst@*off_out`; advances both offsets by the count copied (0 at end of `src`).
pub(crate) fn copy_file_range(
    src: &File,
    off_in: &mut i64,
    dst: &File,
    off_out: &mut i64,
    len: usize,
) -> io::Result<usize> {
    // SAFETY: both offset pointers come from live `&mut i64`s that the kernel
    // writes back (off64_t is i64 on every Linux target this builds for); the
    // fds are borrowed from open `File`s.
    let ret =
        unsafe { libc::copy_file_range(src.as_raw_fd(), off_in, dst.as_raw_fd(), off_out, len, 0) };
    check(ret as i64).map(|n| n as usize)
}

/// `lseek(2)`. Used with `SEEK_DATA`/`SEEK_HOLE` only; HostFs never relies on
/// the file position (all I/O is positional), so moving it is harmless.
/// `openat2(path, O_RDWR | O_CLOEXEC)` with `RESOLVE_CACHED`: opens the file
/// only if every component of `path` is in the kernel's dentry cache, so the
/// call never waits on the disk; `EAGAIN` (or `EINVAL`/`ENOSYS` before Linux
/// 5.12) when it would have to.
pub(crate) fn open_cached_rw(path: &std::path::Path) -> io::Result<File> {
    use std::os::fd::FromRawFd;
    use std::os::unix::ffi::OsStrExt;
    let path = std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    /// `struct open_how` of openat2(2) (libc's is not constructible).
    #[repr(C)]
    struct OpenHow {
        flags: u64,
        mode: u64,
        resolve: u64,
    }
    let how = OpenHow {
        flags: (libc::O_RDWR | libc::O_CLOEXEC) as u64,
        mode: 0,
        resolve: libc::RESOLVE_CACHED,
    };
    // SAFETY: a NUL-terminated path and an `open_how` of the size passed,
    // both alive for the call; the returned descriptor is owned by the File.
    let fd = check(unsafe {
        libc::syscall(
            libc::SYS_openat2,
            libc::AT_FDCWD,
            path.as_ptr(),
            &how as *const OpenHow,
            std::mem::size_of::<OpenHow>(),
        )
    })?;
    // SAFETY: a descriptor just opened and owned by nobody else.
    Ok(unsafe { File::from_raw_fd(fd as i32) })
}

pub(crate) fn lseek(file: &File, offset: libc::off_t, whence: i32) -> io::Result<u64> {
    // SAFETY: lseek touches no memory of ours; the fd is borrowed from an open `File`.
    let ret = unsafe { libc::lseek(file.as_raw_fd(), offset, whence) };
    check(ret).map(|pos| pos as u64)
}

/// `fallocate(2)` with the caller's `FALLOC_FL_*` mode passed through untouched.
pub(crate) fn fallocate(
    file: &File,
    mode: i32,
    offset: libc::off_t,
    len: libc::off_t,
) -> io::Result<()> {
    // SAFETY: fallocate touches no memory of ours; the fd is borrowed from an open `File`.
    let ret = unsafe { libc::fallocate(file.as_raw_fd(), mode, offset, len) };
    check(ret.into()).map(|_| ())
}

/// A non-blocking exclusive `flock(2)`. `EWOULDBLOCK` means someone else holds it.
pub(crate) fn try_lock_exclusive(file: &File) -> io::Result<()> {
    // SAFETY: flock touches no memory of ours; the fd is borrowed from an open `File`.
    let ret = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    check(ret.into()).map(|_| ())
}

/// `syncfs(2)` of the filesystem that holds `file`.
pub(crate) fn syncfs(file: &File) -> io::Result<()> {
    // SAFETY: syncfs touches no memory of ours; the fd is borrowed from an open `File`.
    let ret = unsafe { libc::syncfs(file.as_raw_fd()) };
    check(ret.into()).map(|_| ())
}

/// `fstatvfs(3)` of the filesystem that holds `file`.
pub(crate) fn fstatvfs(file: &File) -> io::Result<libc::statvfs> {
    let mut out = std::mem::MaybeUninit::<libc::statvfs>::uninit();
    // SAFETY: `out` is a valid, writable `statvfs` buffer for the kernel to fill;
    // the fd is borrowed from an open `File`.
    let ret = unsafe { libc::fstatvfs(file.as_raw_fd(), out.as_mut_ptr()) };
    check(ret.into())?;
    // SAFETY: fstatvfs returned 0, so it initialised the whole struct.
    Ok(unsafe { out.assume_init() })
}

/// The real uid of this process.
pub(crate) fn getuid() -> u32 {
    // SAFETY: getuid cannot fail and touches no memory.
    unsafe { libc::getuid() }
}

/// The home directory of the current user from the password database, for when
/// `$HOME` is unset.
pub(crate) fn passwd_home() -> Option<std::path::PathBuf> {
    use std::ffi::CStr;
    use std::os::unix::ffi::OsStrExt;

    let mut buf = vec![0 as libc::c_char; 16 * 1024];
    let mut pwd = std::mem::MaybeUninit::<libc::passwd>::uninit();
    let mut result: *mut libc::passwd = std::ptr::null_mut();
    let uid = getuid();
    // SAFETY: `pwd`, `buf` and `result` are valid for writes of the sizes given;
    // getpwuid_r stores strings only inside `buf`, which outlives their use below.
    let ret = unsafe {
        libc::getpwuid_r(
            uid,
            pwd.as_mut_ptr(),
            buf.as_mut_ptr(),
            buf.len(),
            &mut result,
        )
    };
    if ret != 0 || result.is_null() {
        return None;
    }
    // SAFETY: `result` is non-null, so it points at `pwd`, which getpwuid_r filled.
    let dir = unsafe { (*result).pw_dir };
    if dir.is_null() {
        return None;
    }
    // SAFETY: `pw_dir` is a NUL-terminated string inside `buf`, still alive here.
    let bytes = unsafe { CStr::from_ptr(dir) }.to_bytes();
    if bytes.is_empty() {
        return None;
    }
    Some(std::path::PathBuf::from(std::ffi::OsStr::from_bytes(bytes)))
}
