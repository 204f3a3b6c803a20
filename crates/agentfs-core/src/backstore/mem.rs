//! An in-memory backstore for tests and the reference model: no disk, no fds.

use super::{Backstore, BackstoreUsage};
use crate::attr::StatFs;
use crate::ids::ContentId;
use parking_lot::Mutex;
use std::collections::HashMap;
use std::io;

/// Content objects as byte vectors. Holes are zeros; `allocated_bytes` is the length.
#[derive(Default)]
pub struct MemBackstore {
    inner: Mutex<MemInner>,
}

#[derive(Default)]
struct MemInner {
    next: u64,
    objects: HashMap<ContentId, Vec<u8>>,
    clones: u64,
    syncs: u64,
}

impl MemBackstore {
    pub fn new() -> Self {
        Self::default()
    }

    /// How many times `clone_object` ran (copy-on-write events).
    pub fn clone_count(&self) -> u64 {
        self.inner.lock().clones
    }

    /// How many times `sync_all` ran.
    pub fn sync_all_count(&self) -> u64 {
        self.inner.lock().syncs
    }

    /// Whether the object exists.
    pub fn contains(&self, id: ContentId) -> bool {
        self.inner.lock().objects.contains_key(&id)
    }
}

fn missing(id: ContentId) -> io::Error {
    io::Error::new(
        io::ErrorKind::NotFound,
        format!("content object {id} does not exist"),
    )
}

impl MemInner {
    fn get(&mut self, id: ContentId) -> io::Result<&mut Vec<u8>> {
        self.objects.get_mut(&id).ok_or_else(|| missing(id))
    }

    fn insert(&mut self, data: Vec<u8>) -> ContentId {
        self.next += 1;
        let id = ContentId(self.next);
        self.objects.insert(id, data);
        id
    }
}

fn end(offset: u64, len: usize) -> io::Result<usize> {
    usize::try_from(offset)
        .ok()
        .and_then(|o| o.checked_add(len))
        .ok_or_else(|| io::Error::from_raw_os_error(libc::EFBIG))
}

impl Backstore for MemBackstore {
    fn create(&self) -> io::Result<ContentId> {
        Ok(self.inner.lock().insert(Vec::new()))
    }

    fn clone_object(&self, src: ContentId) -> io::Result<ContentId> {
        let mut inner = self.inner.lock();
        let data = inner.get(src)?.clone();
        inner.clones += 1;
        Ok(inner.insert(data))
    }

    fn read_at(&self, id: ContentId, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        let mut inner = self.inner.lock();
        let data = inner.get(id)?;
        let Ok(start) = usize::try_from(offset) else {
            return Ok(0);
        };
        if start >= data.len() {
            return Ok(0);
        }
        let n = buf.len().min(data.len() - start);
        buf[..n].copy_from_slice(&data[start..start + n]);
        Ok(n)
    }

    fn write_at(&self, id: ContentId, bytes: &[u8], offset: u64) -> io::Result<()> {
        let mut inner = self.inner.lock();
        let data = inner.get(id)?;
        let end = end(offset, bytes.len())?;
        if data.len() < end {
            data.resize(end, 0);
        }
        data[offset as usize..end].copy_from_slice(bytes);
        Ok(())
    }

    fn set_len(&self, id: ContentId, len: u64) -> io::Result<()> {
        let mut inner = self.inner.lock();
        let len = end(len, 0)?;
        inner.get(id)?.resize(len, 0);
        Ok(())
    }

    fn fallocate(&self, id: ContentId, mode: i32, offset: u64, len: u64) -> io::Result<()> {
        let mut inner = self.inner.lock();
        let data = inner.get(id)?;
        let stop = end(offset, usize::try_from(len).unwrap_or(usize::MAX))?;
        let keep_size = mode & libc::FALLOC_FL_KEEP_SIZE != 0;
        if mode & (libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_ZERO_RANGE) != 0 {
            let zero_end = stop.min(data.len());
            if (offset as usize) < zero_end {
                data[offset as usize..zero_end].fill(0);
            }
        }
        if !keep_size && data.len() < stop {
            data.resize(stop, 0);
        }
        Ok(())
    }

    fn sync(&self, id: ContentId, _data_only: bool) -> io::Result<()> {
        self.inner.lock().get(id).map(|_| ())
    }

    fn remove(&self, id: ContentId) -> io::Result<()> {
        self.inner
            .lock()
            .objects
            .remove(&id)
            .map(|_| ())
            .ok_or_else(|| missing(id))
    }

    fn allocated_bytes(&self, id: ContentId) -> io::Result<u64> {
        Ok(self.inner.lock().get(id)?.len() as u64)
    }

    fn len_and_mtime(&self, id: ContentId) -> io::Result<(u64, std::time::SystemTime)> {
        let len = self.inner.lock().get(id)?.len() as u64;
        Ok((len, std::time::UNIX_EPOCH))
    }

    fn set_mtime(&self, id: ContentId, _mtime: std::time::SystemTime) -> io::Result<()> {
        self.inner.lock().get(id).map(|_| ())
    }

    fn seek(&self, id: ContentId, offset: u64, whence: i32) -> io::Result<u64> {
        let len = self.inner.lock().get(id)?.len() as u64;
        if offset >= len {
            return Err(io::Error::from_raw_os_error(libc::ENXIO));
        }
        match whence {
            libc::SEEK_DATA => Ok(offset),
            libc::SEEK_HOLE => Ok(len),
            _ => Err(io::Error::from_raw_os_error(libc::EINVAL)),
        }
    }

    fn statfs(&self) -> io::Result<StatFs> {
        let inner = self.inner.lock();
        let used: u64 = inner.objects.values().map(|d| d.len() as u64).sum::<u64>() / 4096;
        let blocks = 1 << 20;
        Ok(StatFs {
            blocks,
            bfree: blocks.saturating_sub(used),
            bavail: blocks.saturating_sub(used),
            files: 1 << 20,
            ffree: (1 << 20) - inner.objects.len() as u64,
            bsize: 4096,
            namelen: 255,
            frsize: 4096,
        })
    }

    fn usage(&self) -> BackstoreUsage {
        let inner = self.inner.lock();
        BackstoreUsage {
            objects: inner.objects.len() as u64,
            bytes: inner.objects.values().map(|d| d.len() as u64).sum(),
        }
    }

    fn list_objects(&self) -> io::Result<Vec<ContentId>> {
        Ok(self.inner.lock().objects.keys().copied().collect())
    }

    fn sync_all(&self) -> io::Result<()> {
        self.inner.lock().syncs += 1;
        Ok(())
    }
}
