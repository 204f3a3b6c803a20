//! Where a client finds the daemon: the file `<mount>/.agentfs/control`,
//! served read-only by the daemon, holds an [`Endpoint`] as JSON naming the
//! control socket.
//!
//! The socket lives in a runtime directory that every user the mount serves
//! can reach, not beside the backstore: the backstore is private to the mount
//! owner (0700), and a socket inside it could only be reached by the owner and
//! root, so a second user of an `--allow-other` mount could not even bind its
//! own shell. Nor can it live inside the mount, because a FUSE mount cannot
//! host a socket the daemon serves without the daemon answering its own lookups.
//!
//! - A daemon run by root: `/run/agentfs/<hash>.sock` (the directory is
//!   root's, mode 0711), falling back to the non-root rule if `/run` cannot
//!   hold it.
//! - Any other user `U`: `/tmp/agentfs-U/<hash>.sock`, the directory owned by
//!   `U`, mode 0711. `$XDG_RUNTIME_DIR` is not used: it is 0700 by
//!   definition, so other users of an `--allow-other` mount could not reach it.
//!
//! `<hash>` is 16 hex digits of a 64-bit FNV-1a hash of the canonical
//! mountpoint, so one mount has one socket name, stable across runs: the
//! daemon that mounts there next finds a dead predecessor's socket at that
//! very path and replaces it. The socket is mode 0666; authorization is by the
//! connection's peer credentials (`SO_PEERCRED`), never by file modes.
//!
//! [`prepare_socket_path`] creates the directory and refuses one that another
//! user could tamper with (not ours, group- or world-writable, a symlink).

use std::fs;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Where a daemon run by root puts its socket.
pub const ROOT_SOCKET_DIR: &str = "/run/agentfs";

/// Mode of the socket directory: its owner writes; others may only reach
/// sockets whose names they know (from `.agentfs/control`), not list them.
const SOCKET_DIR_MODE: u32 = 0o711;

/// The contents of `<mount>/.agentfs/control`.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// The protocol version the daemon speaks.
    pub protocol: u32,
    /// The control socket's path.
    pub socket: PathBuf,
    /// The mount this endpoint controls.
    pub mountpoint: PathBuf,
}

impl Endpoint {
    /// The file's bytes: pretty JSON with a trailing newline, so `cat` reads well.
    pub fn to_json_bytes(&self) -> Vec<u8> {
        // Serializing a struct of a u32 and two paths cannot fail unless a path
        // is not UTF-8; serde_json then refuses, and a lossy copy is written.
        let mut bytes = serde_json::to_vec_pretty(self).unwrap_or_else(|_| {
            let lossy = serde_json::json!({
                "protocol": self.protocol,
                "socket": self.socket.to_string_lossy(),
                "mountpoint": self.mountpoint.to_string_lossy(),
            });
            serde_json::to_vec_pretty(&lossy).unwrap_or_default()
        });
        bytes.push(b'\n');
        bytes
    }

    /// Parse the file's bytes.
    pub fn from_json_bytes(bytes: &[u8]) -> io::Result<Endpoint> {
        serde_json::from_slice(bytes).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
    }
}

/// `<mount>/.agentfs/control`.
pub fn control_file_path(mount: &Path) -> PathBuf {
    mount.join(".agentfs").join("control")
}

/// The directory for the control sockets of daemons run by `uid`:
/// [`ROOT_SOCKET_DIR`] for root, else `/tmp/agentfs-<uid>`.
pub fn socket_dir_for(uid: u32) -> PathBuf {
    if uid == 0 {
        PathBuf::from(ROOT_SOCKET_DIR)
    } else {
        user_socket_dir(uid)
    }
}

/// `/tmp/agentfs-<uid>`: every user's fallback, root's too.
fn user_socket_dir(uid: u32) -> PathBuf {
    PathBuf::from(format!("/tmp/agentfs-{uid}"))
}

/// The socket file name of the mount at `mountpoint`: `<16 hex digits>.sock`.
/// The path is used as given: pass the canonical mountpoint for a stable answer.
pub fn socket_name_for(mountpoint: &Path) -> String {
    let hash = fnv1a64(mountpoint.as_os_str().as_bytes());
    format!("{hash:016x}.sock")
}

/// The control socket of the mount at `mountpoint` served by a daemon run by
/// `uid`: `<socket_dir_for(uid)>/<socket_name_for(mountpoint)>`. Does not
/// touch the filesystem; [`prepare_socket_path`] is what a daemon calls.
pub fn socket_path_for(mountpoint: &Path, uid: u32) -> PathBuf {
    socket_dir_for(uid).join(socket_name_for(mountpoint))
}

/// The control socket path for the mount at `mountpoint` served by a daemon
/// running as `uid`, with its directory created (mode 0711) and checked: it
/// must be a real directory (not a symlink) owned by `uid`, writable by
/// nobody else. Root falls back from [`ROOT_SOCKET_DIR`] to `/tmp/agentfs-0`
/// when `/run` cannot hold it. A socket file already there is left for the
/// server to judge (a dead daemon's is replaced, a live one's is refused).
pub fn prepare_socket_path(mountpoint: &Path, uid: u32) -> io::Result<PathBuf> {
    let name = socket_name_for(mountpoint);
    let primary = socket_dir_for(uid);
    match prepare_socket_dir(&primary, uid) {
        Ok(()) => Ok(primary.join(name)),
        Err(e) if uid == 0 => {
            let fallback = user_socket_dir(uid);
            tracing::warn!(
                dir = %primary.display(),
                error = %e,
                fallback = %fallback.display(),
                "cannot use the runtime socket directory; using the fallback"
            );
            prepare_socket_dir(&fallback, uid)?;
            Ok(fallback.join(name))
        }
        Err(e) => Err(e),
    }
}

/// Create `dir` (mode 0711; its parent must exist) if missing, and check that
/// it is a directory owned by `uid` that no other user can write to. A
/// directory of ours with a narrower mode is set to 0711.
pub fn prepare_socket_dir(dir: &Path, uid: u32) -> io::Result<()> {
    match fs::DirBuilder::new().mode(SOCKET_DIR_MODE).create(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
        Err(e) => {
            return Err(io::Error::new(
                e.kind(),
                format!(
                    "cannot create the control socket directory {}: {e}",
                    dir.display()
                ),
            ))
        }
    }
    let meta = fs::symlink_metadata(dir)?;
    let refuse = |why: &str| {
        Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            format!(
                "the control socket directory {} {why}; remove it and try again",
                dir.display()
            ),
        ))
    };
    if !meta.file_type().is_dir() {
        return refuse("is not a directory (or is a symlink)");
    }
    if meta.uid() != uid {
        return refuse(&format!("belongs to uid {}, not to uid {uid}", meta.uid()));
    }
    if meta.mode() & 0o022 != 0 {
        return refuse("is writable by other users");
    }
    if meta.mode() & 0o7777 != SOCKET_DIR_MODE {
        // Ours: make it what we expect (the umask may have narrowed a fresh one).
        fs::set_permissions(dir, fs::Permissions::from_mode(SOCKET_DIR_MODE))?;
    }
    Ok(())
}

/// FNV-1a, 64-bit: stable across Rust releases, unlike `DefaultHasher`.
fn fnv1a64(bytes: &[u8]) -> u64 {
    const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    bytes
        .iter()
        .fold(OFFSET, |h, &b| (h ^ u64::from(b)).wrapping_mul(PRIME))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoint_json_round_trips() {
        let e = Endpoint {
            protocol: 1,
            socket: "/var/store/control.sock".into(),
            mountpoint: "/mnt/agentfs".into(),
        };
        let bytes = e.to_json_bytes();
        assert_eq!(bytes.last(), Some(&b'\n'));
        assert_eq!(Endpoint::from_json_bytes(&bytes).unwrap(), e);
        assert!(Endpoint::from_json_bytes(b"{\"protocol\": 1}").is_err());
    }

    #[test]
    fn control_file_is_under_dot_agentfs() {
        assert_eq!(
            control_file_path(Path::new("/mnt/a")),
            PathBuf::from("/mnt/a/.agentfs/control")
        );
    }

    #[test]
    fn root_and_users_get_their_own_runtime_dirs() {
        let m = Path::new("/home/me/agentfs");
        let root = socket_path_for(m, 0);
        let user = socket_path_for(m, 1000);
        assert_eq!(root.parent().unwrap(), Path::new("/run/agentfs"));
        assert_eq!(user.parent().unwrap(), Path::new("/tmp/agentfs-1000"));
        assert_eq!(root.file_name(), user.file_name());
        let name = root.file_name().unwrap().to_str().unwrap();
        assert!(name.ends_with(".sock"), "{name}");
        let hex = &name[..name.len() - ".sock".len()];
        assert_eq!(hex.len(), 16);
        assert!(hex.chars().all(|c| c.is_ascii_hexdigit()));
    }

    #[test]
    fn the_name_is_stable_per_mount_and_short_for_any_mount() {
        let long_a = format!("/{}", "a".repeat(4000));
        let long_b = format!("/{}", "b".repeat(4000));
        let a = socket_path_for(Path::new(&long_a), u32::MAX);
        assert_eq!(a, socket_path_for(Path::new(&long_a), u32::MAX));
        assert_ne!(a, socket_path_for(Path::new(&long_b), u32::MAX));
        // sun_path holds 107 bytes and a NUL; the longest uid still fits.
        assert!(a.as_os_str().len() < 100, "{a:?}");
    }

    #[test]
    fn socket_dir_is_created_0711_and_narrow_modes_are_widened() {
        let tmp = tempfile::tempdir().unwrap();
        let uid = nix::unistd::geteuid().as_raw();
        let dir = tmp.path().join("sockets");
        prepare_socket_dir(&dir, uid).unwrap();
        let mode = fs::metadata(&dir).unwrap().mode() & 0o7777;
        assert_eq!(mode, 0o711);
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o700)).unwrap();
        prepare_socket_dir(&dir, uid).unwrap();
        assert_eq!(fs::metadata(&dir).unwrap().mode() & 0o7777, 0o711);
    }

    #[test]
    fn socket_dir_others_could_tamper_with_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let uid = nix::unistd::geteuid().as_raw();
        // Writable by others.
        let open = tmp.path().join("open");
        fs::create_dir(&open).unwrap();
        fs::set_permissions(&open, fs::Permissions::from_mode(0o777)).unwrap();
        let err = prepare_socket_dir(&open, uid).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::PermissionDenied);
        assert!(err.to_string().contains("writable by other users"), "{err}");
        // Someone else's.
        let err = prepare_socket_dir(&open, uid.wrapping_add(1)).unwrap_err();
        assert!(err.to_string().contains("belongs to uid"), "{err}");
        // A symlink to a good directory.
        let good = tmp.path().join("good");
        prepare_socket_dir(&good, uid).unwrap();
        let link = tmp.path().join("link");
        std::os::unix::fs::symlink(&good, &link).unwrap();
        let err = prepare_socket_dir(&link, uid).unwrap_err();
        assert!(err.to_string().contains("not a directory"), "{err}");
        // A missing parent is an error naming the directory.
        let deep = tmp.path().join("missing/sockets");
        let err = prepare_socket_dir(&deep, uid).unwrap_err();
        assert!(err.to_string().contains("missing/sockets"), "{err}");
    }

    #[test]
    fn prepare_socket_path_names_the_socket_in_the_checked_dir() {
        let uid = nix::unistd::geteuid().as_raw();
        let m = Path::new("/nonexistent/agentfs-endpoint-test");
        let p = prepare_socket_path(m, uid).unwrap();
        assert_eq!(p.file_name().unwrap().to_str().unwrap(), socket_name_for(m));
        let dir = p.parent().unwrap();
        let meta = fs::symlink_metadata(dir).unwrap();
        assert!(meta.is_dir());
        assert_eq!(meta.uid(), uid);
        assert_eq!(meta.mode() & 0o7777, 0o711);
    }

    #[test]
    fn fnv_matches_reference_vectors() {
        assert_eq!(fnv1a64(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a64(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(fnv1a64(b"foobar"), 0x8594_4171_f739_67e8);
    }
}
