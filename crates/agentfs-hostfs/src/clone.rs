//! Cloning one content object into another: reflink first, sparse copy after.
//!
//! A reflink (`FICLONE`) shares extents and costs the same for any size, so it
//! is tried first. Filesystems without it (ext4, tmpfs) refuse with one of a
//! handful of errnos; then the data is copied, range by range as `SEEK_DATA` /
//! `SEEK_HOLE` report them, so holes stay holes (a 64 MiB sparse file with one
//! written block clones into one written block, not 64 MiB). Each range moves
//! with `copy_file_range` (in-kernel, and itself a reflink on some
//! filesystems), or with `pread`/`pwrite` where that is unsupported.

use crate::sys;
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;

/// Chunk of one `copy_file_range` call or one `pread`/`pwrite` round.
const CHUNK: usize = 1 << 20;

/// How the data of a range is moved.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum CopyMode {
    /// `copy_file_range`, falling back to `ReadWrite` if the kernel refuses it.
    CopyFileRange,
    /// `pread` + `pwrite` through a buffer.
    ReadWrite,
}

/// Whether a `FICLONE` failure means "not supported here", so copying is right.
pub(crate) fn reflink_unsupported(err: &io::Error) -> bool {
    matches!(
        sys::errno(err),
        libc::EOPNOTSUPP | libc::EXDEV | libc::EINVAL | libc::ENOTTY | libc::EPERM
    )
}

/// Whether a `copy_file_range` failure means "use read/write instead".
fn copy_range_unsupported(err: &io::Error) -> bool {
    matches!(
        sys::errno(err),
        libc::ENOSYS | libc::EOPNOTSUPP | libc::EXDEV | libc::EINVAL
    )
}

/// Copy `src` into the empty file `dst`, keeping holes, and give `dst` the
/// length of `src`.
pub(crate) fn copy_sparse(src: &File, dst: &File, mut mode: CopyMode) -> io::Result<()> {
    let len = src.metadata()?.len();
    let mut pos = 0u64;
    while pos < len {
        let (start, end) = match data_range(src, pos, len)? {
            Some(range) => range,
            None => break,
        };
        copy_range(src, dst, start, end, &mut mode)?;
        pos = end;
    }
    dst.set_len(len)
}

/// The next data range at or after `pos`, clipped to `len`; `None` past the last.
fn data_range(src: &File, pos: u64, len: u64) -> io::Result<Option<(u64, u64)>> {
    let off = sys::off_t(pos, libc::EFBIG)?;
    let start = match sys::lseek(src, off, libc::SEEK_DATA) {
        Ok(start) => start,
        Err(e) if sys::errno(&e) == libc::ENXIO => return Ok(None),
        // No SEEK_DATA on this filesystem: treat the rest as data.
        Err(e) if sys::errno(&e) == libc::EINVAL => return Ok(Some((pos, len))),
        Err(e) => return Err(e),
    };
    if start >= len {
        return Ok(None);
    }
    let end = match sys::lseek(src, sys::off_t(start, libc::EFBIG)?, libc::SEEK_HOLE) {
        Ok(end) => end.min(len),
        // The file shrank under us: copy to our recorded length; set_len pads.
        Err(e) if sys::errno(&e) == libc::ENXIO => len,
        Err(e) => return Err(e),
    };
    Ok(Some((start, end)))
}

/// Copy bytes `[start, end)` of `src` to the same offsets of `dst`.
fn copy_range(src: &File, dst: &File, start: u64, end: u64, mode: &mut CopyMode) -> io::Result<()> {
    let mut pos = start;
    while pos < end {
        let want = usize::try_from(end - pos).unwrap_or(usize::MAX).min(CHUNK);
        let n = match *mode {
            CopyMode::CopyFileRange => {
                let mut off_in = sys::off_t(pos, libc::EFBIG)?;
                let mut off_out = off_in;
                match sys::copy_file_range(src, &mut off_in, dst, &mut off_out, want) {
                    Ok(n) => n,
                    Err(e) if copy_range_unsupported(&e) => {
                        tracing::debug!(error = %e, "copy_file_range unsupported, using pread/pwrite");
                        *mode = CopyMode::ReadWrite;
                        continue;
                    }
                    Err(e) => return Err(e),
                }
            }
            CopyMode::ReadWrite => copy_chunk_rw(src, dst, pos, want)?,
        };
        if n == 0 {
            // Source ended early (truncated concurrently): nothing more to copy.
            return Ok(());
        }
        pos += n as u64;
    }
    Ok(())
}

/// One `pread`/`pwrite` round of up to `want` bytes at `pos`; 0 at end of `src`.
fn copy_chunk_rw(src: &File, dst: &File, pos: u64, want: usize) -> io::Result<usize> {
    let mut buf = vec![0u8; want];
    let n = loop {
        match src.read_at(&mut buf, pos) {
            Ok(n) => break n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    };
    dst.write_all_at(&buf[..n], pos)?;
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    fn sparse_source(dir: &std::path::Path) -> File {
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(dir.join("src"))
            .expect("create");
        f.set_len(64 << 20).expect("set_len");
        f.write_all_at(&[7u8; 4096], 32 << 20).expect("write");
        f.write_all_at(b"tail", (64 << 20) - 4).expect("write");
        f
    }

    fn check_copy(mode: CopyMode) {
        let dir = tempfile::tempdir().expect("tempdir");
        let src = sparse_source(dir.path());
        let dst = File::options()
            .read(true)
            .write(true)
            .create_new(true)
            .open(dir.path().join("dst"))
            .expect("create");
        copy_sparse(&src, &dst, mode).expect("copy");
        let meta = dst.metadata().expect("stat");
        assert_eq!(meta.len(), 64 << 20);
        assert!(
            meta.blocks() * 512 <= 1 << 20,
            "{mode:?}: {} bytes allocated",
            meta.blocks() * 512
        );
        let mut buf = vec![0u8; 4096];
        dst.read_exact_at(&mut buf, 32 << 20).expect("read");
        assert!(buf.iter().all(|&b| b == 7));
        dst.read_exact_at(&mut buf, 0).expect("read");
        assert!(buf.iter().all(|&b| b == 0));
        let mut tail = [0u8; 4];
        dst.read_exact_at(&mut tail, (64 << 20) - 4).expect("read");
        assert_eq!(&tail, b"tail");
    }

    #[test]
    fn copy_file_range_copy_keeps_holes_and_bytes() {
        check_copy(CopyMode::CopyFileRange);
    }

    #[test]
    fn read_write_copy_keeps_holes_and_bytes() {
        check_copy(CopyMode::ReadWrite);
    }

    #[test]
    fn copy_of_an_all_hole_file_allocates_nothing() {
        let dir = tempfile::tempdir().expect("tempdir");
        let src = File::options()
            .read(true)
            .write(true)
            .create_new(true)
            .open(dir.path().join("src"))
            .expect("create");
        src.set_len(10 << 20).expect("set_len");
        let dst = tempfile::tempfile_in(dir.path()).expect("tempfile");
        copy_sparse(&src, &dst, CopyMode::CopyFileRange).expect("copy");
        let meta = dst.metadata().expect("stat");
        assert_eq!((meta.len(), meta.blocks()), (10 << 20, 0));
    }

    #[test]
    fn unsupported_errnos_are_classified() {
        for errno in [
            libc::EOPNOTSUPP,
            libc::EXDEV,
            libc::EINVAL,
            libc::ENOTTY,
            libc::EPERM,
        ] {
            assert!(reflink_unsupported(&io::Error::from_raw_os_error(errno)));
        }
        for errno in [libc::ENOSPC, libc::EIO, libc::EBADF] {
            assert!(!reflink_unsupported(&io::Error::from_raw_os_error(errno)));
        }
    }
}
