//! Checks made before mounting, so that a user gets one clear line instead of
//! a half-made mount: the mountpoint, an existing mount there, /dev/fuse, and
//! fusermount3 when a non-root user needs it.
//!
//! Every check runs in the original process before the daemon forks, so no
//! thread exists yet and the message reaches the user's terminal directly.

use std::fs::OpenOptions;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

/// Why mounting cannot start. Each message is shown as-is after
/// `agentfs-fuse-host: error: `.
#[derive(Debug, thiserror::Error)]
pub enum PreflightError {
    #[error("mountpoint {} does not exist: create it first", .0.display())]
    MountpointMissing(PathBuf),
    #[error("mountpoint {} is not a directory", .0.display())]
    MountpointNotDir(PathBuf),
    #[error(
        "mountpoint {p} is a dead FUSE mount (transport endpoint is not connected): unmount it first (fusermount3 -u {p})",
        p = .0.display()
    )]
    MountpointDisconnected(PathBuf),
    #[error("cannot access mountpoint {}: {source}", .path.display())]
    MountpointAccess { path: PathBuf, source: io::Error },
    #[error("{} is already mounted (fstype {fstype}); unmount it first", .path.display())]
    AlreadyMounted { path: PathBuf, fstype: String },
    #[error("cannot read /proc/self/mountinfo: {0}")]
    Mountinfo(io::Error),
    #[error("/dev/fuse does not exist: the FUSE kernel module is not loaded or fuse3 is not installed (install fuse3, then modprobe fuse)")]
    DevFuseMissing,
    #[error("cannot open /dev/fuse read-write ({0}): FUSE is not usable here; fuse3 must be installed and /dev/fuse readable and writable")]
    DevFuseOpen(io::Error),
    #[error("fusermount3 not found in PATH: mounting as a non-root user needs it; install fuse3")]
    FusermountMissing,
}

/// Run every check for mounting at `mountpoint` as effective user `euid`;
/// answers the canonical mountpoint.
pub fn check(mountpoint: &Path, euid: u32) -> Result<PathBuf, PreflightError> {
    let canonical = check_mountpoint(mountpoint)?;
    let mountinfo =
        std::fs::read_to_string("/proc/self/mountinfo").map_err(PreflightError::Mountinfo)?;
    if let Some(fstype) = mounted_fstype(&mountinfo, &canonical) {
        return Err(PreflightError::AlreadyMounted {
            path: canonical,
            fstype,
        });
    }
    check_dev_fuse()?;
    // As root fuser mounts with mount(2) itself; others go through fusermount3.
    if euid != 0 && find_fusermount().is_none() {
        return Err(PreflightError::FusermountMissing);
    }
    Ok(canonical)
}

fn check_mountpoint(path: &Path) -> Result<PathBuf, PreflightError> {
    let access = |source: io::Error| {
        if source.raw_os_error() == Some(libc::ENOTCONN) {
            PreflightError::MountpointDisconnected(path.to_path_buf())
        } else if source.kind() == io::ErrorKind::NotFound {
            PreflightError::MountpointMissing(path.to_path_buf())
        } else {
            PreflightError::MountpointAccess {
                path: path.to_path_buf(),
                source,
            }
        }
    };
    let meta = std::fs::metadata(path).map_err(access)?;
    if !meta.is_dir() {
        return Err(PreflightError::MountpointNotDir(path.to_path_buf()));
    }
    path.canonicalize().map_err(access)
}

fn check_dev_fuse() -> Result<(), PreflightError> {
    match OpenOptions::new().read(true).write(true).open("/dev/fuse") {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Err(PreflightError::DevFuseMissing),
        Err(e) => Err(PreflightError::DevFuseOpen(e)),
    }
}

/// The fusermount binary fuser would use, if any.
fn find_fusermount() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("FUSERMOUNT_PATH") {
        return Some(PathBuf::from(p));
    }
    let mut dirs: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect())
        .unwrap_or_default();
    dirs.extend([PathBuf::from("/sbin"), PathBuf::from("/bin")]);
    for dir in dirs {
        for name in ["fusermount3", "fusermount"] {
            let candidate = dir.join(name);
            if is_executable(&candidate) {
                return Some(candidate);
            }
        }
    }
    None
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// The fstype of a mount at `path` in a `/proc/self/mountinfo` text, if any.
pub fn mounted_fstype(mountinfo: &str, path: &Path) -> Option<String> {
    let want = path.as_os_str().as_bytes();
    mountinfo.lines().rev().find_map(|line| {
        let mut fields = line.split(' ');
        let mount_point = fields.nth(4)?;
        if unescape(mount_point) != want {
            return None;
        }
        let mut rest = fields.skip_while(|f| *f != "-");
        rest.next()?;
        rest.next().map(str::to_string)
    })
}

/// Undo mountinfo's octal escapes (`\040` for a space, and so on).
fn unescape(field: &str) -> Vec<u8> {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes
            .get(i + 1..i + 4)
            .filter(|d| d.iter().all(|b| (b'0'..=b'7').contains(b)));
        let value = octal.map(|d| d.iter().fold(0u32, |v, b| v * 8 + u32::from(b - b'0')));
        match value.and_then(|v| u8::try_from(v).ok()) {
            Some(v) if bytes[i] == b'\\' => {
                out.push(v);
                i += 4;
            }
            _ => {
                out.push(bytes[i]);
                i += 1;
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const MOUNTINFO: &str = "\
22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw
40 22 0:35 / /mnt/with\\040space rw,nosuid,nodev - fuse.agentfs agentfs rw,user_id=0,group_id=0
41 22 0:36 / /mnt/plain rw - tmpfs tmpfs rw
42 22 0:37 / /mnt/tagged rw shared:5 master:2 - fuse agentfs rw
";

    #[test]
    fn finds_mounts_by_canonical_path() {
        assert_eq!(
            mounted_fstype(MOUNTINFO, Path::new("/mnt/plain")).as_deref(),
            Some("tmpfs")
        );
        assert_eq!(
            mounted_fstype(MOUNTINFO, Path::new("/mnt/with space")).as_deref(),
            Some("fuse.agentfs")
        );
        assert_eq!(
            mounted_fstype(MOUNTINFO, Path::new("/mnt/tagged")).as_deref(),
            Some("fuse")
        );
        assert_eq!(
            mounted_fstype(MOUNTINFO, Path::new("/")).as_deref(),
            Some("ext4")
        );
        assert_eq!(mounted_fstype(MOUNTINFO, Path::new("/mnt")), None);
        assert_eq!(mounted_fstype(MOUNTINFO, Path::new("/mnt/plai")), None);
    }

    #[test]
    fn unescapes_octal() {
        assert_eq!(unescape("a\\040b\\134c"), b"a b\\c");
        assert_eq!(unescape("trailing\\04"), b"trailing\\04");
        assert_eq!(unescape("\\999"), b"\\999");
    }

    #[test]
    fn mountpoint_checks_name_the_problem() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("nope");
        assert!(matches!(
            check_mountpoint(&missing),
            Err(PreflightError::MountpointMissing(_))
        ));
        let file = dir.path().join("file");
        std::fs::write(&file, b"x").unwrap();
        assert!(matches!(
            check_mountpoint(&file),
            Err(PreflightError::MountpointNotDir(_))
        ));
        let ok = check_mountpoint(dir.path()).unwrap();
        assert_eq!(ok, dir.path().canonicalize().unwrap());
    }

    #[test]
    fn a_mounted_directory_is_refused() {
        // "/" is always a mount point.
        let err = check(Path::new("/"), 0).unwrap_err();
        assert!(
            matches!(err, PreflightError::AlreadyMounted { .. }),
            "{err}"
        );
        assert!(err.to_string().contains("already mounted (fstype"), "{err}");
    }
}
