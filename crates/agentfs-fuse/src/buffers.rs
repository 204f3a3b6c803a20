//! Reusable page-aligned buffers for the data of reads and writes served
//! through the transport.
//!
//! A write's data must leave fuser's request buffer before the job moves to
//! a data worker, and a read needs somewhere to land before it is sent. A
//! fresh 1 MiB `Vec` each time costs an allocation that glibc serves with a
//! new mapping, and 256 page faults to touch it. These buffers are anonymous
//! mappings of `max_write` bytes (page-aligned, faulted in once) handed out
//! and taken back, so the steady state of a stream of 1 MiB requests
//! allocates nothing.

use memmap2::MmapMut;
use parking_lot::Mutex;
use std::ops::{Deref, DerefMut};
use std::sync::Arc;

/// A pool of buffers of one size.
pub struct Buffers {
    size: usize,
    /// Buffers given back, kept up to `keep`. Leaf lock, held for a push or
    /// a pop.
    free: Mutex<Vec<MmapMut>>,
    keep: usize,
}

impl Buffers {
    /// Buffers of `size` bytes; at most `keep` idle ones are kept.
    pub fn new(size: usize, keep: usize) -> Arc<Buffers> {
        Arc::new(Buffers {
            size,
            free: Mutex::new(Vec::new()),
            keep,
        })
    }

    /// A buffer of `len` bytes (its contents are whatever it last held).
    /// Larger than the pool's size, or if no mapping can be made, it is a
    /// plain heap buffer that is not kept.
    pub fn take(self: &Arc<Self>, len: usize) -> Buf {
        if len <= self.size {
            let map = self.free.lock().pop();
            if let Some(map) = map.or_else(|| MmapMut::map_anon(self.size).ok()) {
                return Buf {
                    store: Store::Mapped(Some(map), Arc::clone(self)),
                    len,
                };
            }
        }
        Buf {
            store: Store::Heap(vec![0; len]),
            len,
        }
    }

    /// A buffer holding a copy of `data`.
    pub fn copy_of(self: &Arc<Self>, data: &[u8]) -> Buf {
        let mut buf = self.take(data.len());
        buf.copy_from_slice(data);
        buf
    }

    /// Idle buffers kept (for tests).
    pub fn idle(&self) -> usize {
        self.free.lock().len()
    }

    fn give_back(&self, map: MmapMut) {
        let mut free = self.free.lock();
        if free.len() < self.keep {
            free.push(map);
        }
    }
}

enum Store {
    /// Goes back to its pool when dropped.
    Mapped(Option<MmapMut>, Arc<Buffers>),
    Heap(Vec<u8>),
}

/// A buffer from [`Buffers::take`]: `len` bytes, returned to the pool on drop.
pub struct Buf {
    store: Store,
    len: usize,
}

impl Buf {
    /// Keep only the first `len` bytes (no-op if it is longer).
    pub fn truncate(&mut self, len: usize) {
        self.len = self.len.min(len);
    }
}

impl Deref for Buf {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        match &self.store {
            Store::Mapped(Some(map), _) => &map[..self.len],
            Store::Mapped(None, _) => &[],
            Store::Heap(v) => &v[..self.len],
        }
    }
}

impl DerefMut for Buf {
    fn deref_mut(&mut self) -> &mut [u8] {
        match &mut self.store {
            Store::Mapped(Some(map), _) => &mut map[..self.len],
            Store::Mapped(None, _) => &mut [],
            Store::Heap(v) => &mut v[..self.len],
        }
    }
}

impl Drop for Buf {
    fn drop(&mut self) {
        if let Store::Mapped(map, pool) = &mut self.store {
            if let Some(map) = map.take() {
                pool.give_back(map);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffers_are_page_aligned_reused_and_bounded() {
        let pool = Buffers::new(1 << 20, 2);
        let a = pool.copy_of(b"hello");
        assert_eq!(&a[..], b"hello");
        assert_eq!(a.as_ptr() as usize % 4096, 0, "page-aligned");
        let first = a.as_ptr();
        drop(a);
        assert_eq!(pool.idle(), 1);
        let b = pool.take(1 << 20);
        assert_eq!(b.as_ptr(), first, "the idle buffer is handed out again");
        assert_eq!(b.len(), 1 << 20);
        let (c, d) = (pool.take(10), pool.take(10));
        drop((b, c, d));
        assert_eq!(pool.idle(), 2, "no more than `keep` idle buffers");
    }

    #[test]
    fn oversized_requests_get_a_heap_buffer() {
        let pool = Buffers::new(4096, 4);
        let mut big = pool.take(10_000);
        assert_eq!(big.len(), 10_000);
        big.truncate(3);
        assert_eq!(big.len(), 3);
        drop(big);
        assert_eq!(pool.idle(), 0);
    }
}
