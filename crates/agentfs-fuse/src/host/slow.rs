//! Testing only: a backstore that can be made slow from outside
//! (`--fault-slow-backstore FILE`).
//!
//! [`SlowBackstore`] wraps the real backstore. While FILE exists, every
//! [`Backstore`] call first sleeps the number of milliseconds written in it
//! (decimal, surrounding whitespace ignored; anything unreadable counts as 0),
//! then runs. Tests create FILE to start a storm and remove it to end it; the
//! file is read at each call, so a change takes effect at once.
//!
//! Only FsCore's content I/O goes through this layer: the metadata journal
//! and checkpoints (the `MetaStore`) do not, and neither does passthrough
//! I/O, which the kernel sends to the backstore file directly.

use agentfs_core::{Backstore, BackstoreUsage, ContentId, StatFs};
use std::fs::File;
use std::io;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

/// A backstore whose calls sleep while a control file says so.
pub struct SlowBackstore {
    inner: Arc<dyn Backstore>,
    control: PathBuf,
}

impl SlowBackstore {
    pub fn new(inner: Arc<dyn Backstore>, control: PathBuf) -> SlowBackstore {
        SlowBackstore { inner, control }
    }

    /// The delay FILE asks for now (zero when it is missing or unreadable).
    fn delay(&self) -> Duration {
        let ms = std::fs::read_to_string(&self.control)
            .ok()
            .and_then(|s| s.trim().parse::<u64>().ok())
            .unwrap_or(0);
        Duration::from_millis(ms)
    }

    fn wait(&self) {
        let delay = self.delay();
        if !delay.is_zero() {
            std::thread::sleep(delay);
        }
    }
}

impl Backstore for SlowBackstore {
    fn create(&self) -> io::Result<ContentId> {
        self.wait();
        self.inner.create()
    }
    fn clone_object(&self, src: ContentId) -> io::Result<ContentId> {
        self.wait();
        self.inner.clone_object(src)
    }
    fn read_at(&self, id: ContentId, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        self.wait();
        self.inner.read_at(id, buf, offset)
    }
    fn write_at(&self, id: ContentId, data: &[u8], offset: u64) -> io::Result<()> {
        self.wait();
        self.inner.write_at(id, data, offset)
    }
    fn set_len(&self, id: ContentId, len: u64) -> io::Result<()> {
        self.wait();
        self.inner.set_len(id, len)
    }
    fn fallocate(&self, id: ContentId, mode: i32, offset: u64, len: u64) -> io::Result<()> {
        self.wait();
        self.inner.fallocate(id, mode, offset, len)
    }
    fn sync(&self, id: ContentId, data_only: bool) -> io::Result<()> {
        self.wait();
        self.inner.sync(id, data_only)
    }
    fn remove(&self, id: ContentId) -> io::Result<()> {
        self.wait();
        self.inner.remove(id)
    }
    fn allocated_bytes(&self, id: ContentId) -> io::Result<u64> {
        self.wait();
        self.inner.allocated_bytes(id)
    }
    fn len_and_mtime(&self, id: ContentId) -> io::Result<(u64, SystemTime)> {
        self.wait();
        self.inner.len_and_mtime(id)
    }
    fn set_mtime(&self, id: ContentId, mtime: SystemTime) -> io::Result<()> {
        self.wait();
        self.inner.set_mtime(id, mtime)
    }
    fn seek(&self, id: ContentId, offset: u64, whence: i32) -> io::Result<u64> {
        self.wait();
        self.inner.seek(id, offset, whence)
    }
    fn statfs(&self) -> io::Result<StatFs> {
        self.wait();
        self.inner.statfs()
    }
    fn usage(&self) -> BackstoreUsage {
        self.wait();
        self.inner.usage()
    }
    fn sync_all(&self) -> io::Result<()> {
        self.wait();
        self.inner.sync_all()
    }
    fn list_objects(&self) -> io::Result<Vec<ContentId>> {
        self.wait();
        self.inner.list_objects()
    }
    fn host_file(&self, id: ContentId) -> io::Result<Arc<File>> {
        self.wait();
        self.inner.host_file(id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use agentfs_hostfs::{HostFs, HostFsOptions};

    #[test]
    fn delays_only_while_the_file_says_so_and_passes_calls_through() {
        let dir = tempfile::tempdir().unwrap();
        let store = dir.path().join("store");
        std::fs::create_dir(&store).unwrap();
        let inner = Arc::new(HostFs::open(&store, HostFsOptions::default()).unwrap());
        let control = dir.path().join("slow");
        let slow = SlowBackstore::new(inner, control.clone());
        assert_eq!(slow.delay(), Duration::ZERO);
        std::fs::write(&control, "250\n").unwrap();
        assert_eq!(slow.delay(), Duration::from_millis(250));
        std::fs::write(&control, "nonsense").unwrap();
        assert_eq!(slow.delay(), Duration::ZERO);
        std::fs::write(&control, "1").unwrap();
        let id = slow.create().unwrap();
        slow.write_at(id, b"hello", 0).unwrap();
        let mut buf = [0u8; 5];
        assert_eq!(slow.read_at(id, &mut buf, 0).unwrap(), 5);
        assert_eq!(&buf, b"hello");
        std::fs::remove_file(&control).unwrap();
        assert_eq!(slow.delay(), Duration::ZERO);
        slow.remove(id).unwrap();
    }
}
