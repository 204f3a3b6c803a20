//! Where a client finds the daemon: the file `<mount>/.agentfs/control`,
//! served read-only by the daemon, holds an [`Endpoint`] as JSON naming the
//! control socket.
//!
//! The socket itself lives beside the backstore (`<backstore>/control.sock`)
//! and not inside the mount, because a FUSE mount cannot host a socket the
//! daemon serves without the daemon answering its own lookups. When that path
//! is too long for `sun_path`, [`socket_path_for`] falls back to a name in
//! `/tmp` derived from a stable hash of the backstore path.

use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// The longest socket path used directly; `sun_path` holds 108 bytes with
/// the terminating NUL, and a margin keeps us clear of platform differences.
const MAX_SOCKET_PATH_BYTES: usize = 100;

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

/// The control socket for a daemon whose backstore is `backstore`, run by `uid`:
/// `<backstore>/control.sock` if that fits in `sun_path` (at most 100 bytes),
/// else `/tmp/agentfs-<uid>-<16 hex digits of an FNV-1a hash of the backstore path>.sock`.
/// The path is used as given: pass a canonical path for a stable answer.
pub fn socket_path_for(backstore: &Path, uid: u32) -> PathBuf {
    let direct = backstore.join("control.sock");
    if direct.as_os_str().as_bytes().len() <= MAX_SOCKET_PATH_BYTES {
        return direct;
    }
    let hash = fnv1a64(backstore.as_os_str().as_bytes());
    PathBuf::from(format!("/tmp/agentfs-{uid}-{hash:016x}.sock"))
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
    fn short_backstore_keeps_the_socket_beside_it() {
        assert_eq!(
            socket_path_for(Path::new("/var/store"), 1000),
            PathBuf::from("/var/store/control.sock")
        );
        // Exactly 100 bytes still fits.
        let dir = format!("/{}", "d".repeat(100 - "/control.sock".len() - 1));
        let p = socket_path_for(Path::new(&dir), 1000);
        assert_eq!(p.as_os_str().len(), 100);
        assert!(p.starts_with(&dir));
    }

    #[test]
    fn long_backstore_falls_back_to_tmp_with_a_stable_hash() {
        let long_a = format!("/{}", "a".repeat(120));
        let long_b = format!("/{}", "b".repeat(120));
        let a = socket_path_for(Path::new(&long_a), 1000);
        let a2 = socket_path_for(Path::new(&long_a), 1000);
        let b = socket_path_for(Path::new(&long_b), 1000);
        let other_uid = socket_path_for(Path::new(&long_a), 0);
        assert_eq!(a, a2);
        assert_ne!(a, b);
        assert_ne!(a, other_uid);
        let name = a.file_name().unwrap().to_str().unwrap();
        assert!(a.starts_with("/tmp"), "{a:?}");
        assert!(name.starts_with("agentfs-1000-") && name.ends_with(".sock"));
        let hex = &name["agentfs-1000-".len()..name.len() - ".sock".len()];
        assert_eq!(hex.len(), 16);
        assert!(hex.chars().all(|c| c.is_ascii_hexdigit()));
        assert!(a.as_os_str().len() <= MAX_SOCKET_PATH_BYTES);
    }

    #[test]
    fn fnv_matches_reference_vectors() {
        assert_eq!(fnv1a64(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a64(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(fnv1a64(b"foobar"), 0x8594_4171_f739_67e8);
    }
}
