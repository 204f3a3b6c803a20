//! The bounded descriptor cache: open host files of content objects, by id.
//!
//! Opening a file per read or write would cost a path walk each time, and a
//! passthrough open needs a live fd; keeping one fd per object forever would
//! hit the process limit (20,000 here, and it cannot be raised). So HostFs
//! keeps at most `capacity` files open, as `Arc<File>`: an evicted file closes
//! when its last user (a read in flight, a passthrough backing) drops the Arc.
//!
//! The cache is split into shards, each a mutex over a CLOCK ring (an
//! approximate LRU: a hit sets a bit, eviction sweeps the ring clearing bits
//! and takes the first entry whose bit is clear). Shard capacities add up to
//! exactly `capacity`, so the cache never holds more. No shard lock is held
//! across an `open(2)` or a `close(2)`, and no code holds two shard locks.

use agentfs_core::ContentId;
use parking_lot::Mutex;
use std::collections::HashMap;
use std::fs::File;
use std::io;
use std::sync::Arc;

/// Shards at most; fewer when the capacity is smaller.
const MAX_SHARDS: usize = 16;

pub(crate) struct FdCache {
    shards: Box<[Mutex<Shard>]>,
}

struct Shard {
    capacity: usize,
    slots: Vec<Slot>,
    /// Id → index into `slots`.
    index: HashMap<ContentId, usize>,
    /// The CLOCK hand: the next slot eviction looks at.
    hand: usize,
    /// Bumped by every `evict`, so an open that raced with a removal of the
    /// same object does not put a stale file back into the cache.
    evictions: u64,
}

struct Slot {
    id: ContentId,
    file: Arc<File>,
    referenced: bool,
}

impl FdCache {
    /// A cache that never holds more than `capacity` files (at least one).
    pub(crate) fn new(capacity: usize) -> Self {
        let capacity = capacity.max(1);
        let count = capacity.min(MAX_SHARDS);
        let shards = (0..count)
            .map(|i| {
                let cap = capacity / count + usize::from(i < capacity % count);
                Mutex::new(Shard {
                    capacity: cap,
                    slots: Vec::with_capacity(cap.min(4096)),
                    index: HashMap::with_capacity(cap.min(4096)),
                    hand: 0,
                    evictions: 0,
                })
            })
            .collect();
        Self { shards }
    }

    fn shard(&self, id: ContentId) -> &Mutex<Shard> {
        // Ids are sequential, so their low bits spread evenly over the shards.
        &self.shards[(id.0 % self.shards.len() as u64) as usize]
    }

    /// The cached file of `id`, or `open()`'s result, cached on the way out.
    pub(crate) fn get_or_open(
        &self,
        id: ContentId,
        open: impl FnOnce() -> io::Result<File>,
    ) -> io::Result<Arc<File>> {
        let shard = self.shard(id);
        let evictions = {
            let mut s = shard.lock();
            if let Some(&i) = s.index.get(&id) {
                let slot = &mut s.slots[i];
                slot.referenced = true;
                return Ok(Arc::clone(&slot.file));
            }
            s.evictions
        };
        let file = open()?;
        let mut s = shard.lock();
        if let Some(&i) = s.index.get(&id) {
            // Another thread opened it meanwhile: use theirs, close ours unlocked.
            let slot = &mut s.slots[i];
            slot.referenced = true;
            let cached = Arc::clone(&slot.file);
            drop(s);
            drop(file);
            return Ok(cached);
        }
        let file = Arc::new(file);
        if s.evictions != evictions {
            // The object may have been removed while we opened it: serve this
            // one caller, cache nothing.
            return Ok(file);
        }
        let victim = s.insert(id, Arc::clone(&file));
        drop(s);
        drop(victim);
        Ok(file)
    }

    /// Cache a file just created for a fresh id.
    pub(crate) fn insert(&self, id: ContentId, file: File) -> Arc<File> {
        let file = Arc::new(file);
        let mut s = self.shard(id).lock();
        let victim = s.insert(id, Arc::clone(&file));
        drop(s);
        drop(victim);
        file
    }

    /// Forget `id`; its file closes once no one else holds it.
    pub(crate) fn evict(&self, id: ContentId) {
        let mut s = self.shard(id).lock();
        s.evictions += 1;
        let victim = s.remove(id);
        drop(s);
        drop(victim);
    }

    /// Whether the file of `id` is held now.
    pub(crate) fn contains(&self, id: ContentId) -> bool {
        self.shard(id).lock().index.contains_key(&id)
    }

    /// Files held right now.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.shards.iter().map(|s| s.lock().slots.len()).sum()
    }
}

impl Shard {
    /// Insert (or replace) `id`; returns the file pushed out, to be dropped
    /// after the lock is released.
    fn insert(&mut self, id: ContentId, file: Arc<File>) -> Option<Arc<File>> {
        if let Some(&i) = self.index.get(&id) {
            let slot = &mut self.slots[i];
            slot.referenced = true;
            return Some(std::mem::replace(&mut slot.file, file));
        }
        let new = Slot {
            id,
            file,
            referenced: false,
        };
        if self.slots.len() < self.capacity {
            self.index.insert(id, self.slots.len());
            self.slots.push(new);
            return None;
        }
        // CLOCK sweep: at most two turns, since the first clears every bit.
        let len = self.slots.len();
        loop {
            let slot = &mut self.slots[self.hand];
            if !slot.referenced {
                break;
            }
            slot.referenced = false;
            self.hand = (self.hand + 1) % len;
        }
        let at = self.hand;
        self.hand = (self.hand + 1) % len;
        let old = std::mem::replace(&mut self.slots[at], new);
        self.index.remove(&old.id);
        self.index.insert(id, at);
        Some(old.file)
    }

    fn remove(&mut self, id: ContentId) -> Option<Arc<File>> {
        let i = self.index.remove(&id)?;
        let old = self.slots.swap_remove(i);
        if let Some(moved) = self.slots.get(i) {
            self.index.insert(moved.id, i);
        }
        if self.hand >= self.slots.len() {
            self.hand = 0;
        }
        Some(old.file)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_file() -> File {
        tempfile::tempfile().expect("tempfile")
    }

    #[test]
    fn capacity_is_split_exactly() {
        for cap in [1, 3, 15, 16, 17, 64, 1000, 1024] {
            let cache = FdCache::new(cap);
            let total: usize = cache.shards.iter().map(|s| s.lock().capacity).sum();
            assert_eq!(total, cap, "capacity {cap}");
        }
        let zero = FdCache::new(0);
        assert_eq!(
            zero.shards.iter().map(|s| s.lock().capacity).sum::<usize>(),
            1
        );
    }

    #[test]
    fn never_holds_more_than_capacity_and_hits_return_the_same_file() {
        let cache = FdCache::new(20);
        for i in 1..=200 {
            cache.insert(ContentId(i), temp_file());
            assert!(cache.len() <= 20, "len {} after {i}", cache.len());
        }
        assert_eq!(cache.len(), 20);
        // The most recent insert of each shard is still there and a hit does not reopen.
        let a = cache
            .get_or_open(ContentId(200), || panic!("must be a hit"))
            .expect("hit");
        let b = cache
            .get_or_open(ContentId(200), || panic!("must be a hit"))
            .expect("hit");
        assert!(Arc::ptr_eq(&a, &b));
    }

    #[test]
    fn referenced_entries_survive_a_sweep() {
        // Capacity 1: one shard of one slot.
        let cache = FdCache::new(1);
        cache.insert(ContentId(1), temp_file());
        cache.insert(ContentId(2), temp_file());
        assert_eq!(cache.len(), 1);
        let mut opened = false;
        cache
            .get_or_open(ContentId(1), || {
                opened = true;
                Ok(temp_file())
            })
            .expect("open");
        assert!(opened, "id 1 was evicted by id 2, so it must be reopened");

        let cache = FdCache::new(MAX_SHARDS * 2);
        let n = MAX_SHARDS as u64;
        // Ids 1, 1+n, 1+2n share a shard of capacity 2.
        cache.insert(ContentId(1), temp_file());
        cache.insert(ContentId(1 + n), temp_file());
        cache
            .get_or_open(ContentId(1), || panic!("hit"))
            .expect("hit");
        cache.insert(ContentId(1 + 2 * n), temp_file());
        // 1 was referenced, so 1+n went.
        cache
            .get_or_open(ContentId(1), || panic!("1 must have survived"))
            .expect("hit");
        let mut reopened = false;
        cache
            .get_or_open(ContentId(1 + n), || {
                reopened = true;
                Ok(temp_file())
            })
            .expect("open");
        assert!(reopened);
    }

    #[test]
    fn evict_forgets_and_keeps_the_index_consistent() {
        let cache = FdCache::new(MAX_SHARDS * 4);
        let n = MAX_SHARDS as u64;
        let ids: Vec<ContentId> = (0..4).map(|k| ContentId(3 + k * n)).collect();
        for &id in &ids {
            cache.insert(id, temp_file());
        }
        cache.evict(ids[0]);
        for &id in &ids[1..] {
            cache
                .get_or_open(id, || panic!("{id} must still be cached"))
                .expect("hit");
        }
        let mut reopened = false;
        cache
            .get_or_open(ids[0], || {
                reopened = true;
                Ok(temp_file())
            })
            .expect("open");
        assert!(reopened);
    }

    #[test]
    fn an_open_racing_with_evict_is_not_cached() {
        let cache = FdCache::new(8);
        let id = ContentId(5);
        let first = cache
            .get_or_open(id, || {
                // A removal of the same object lands while we open it.
                cache.evict(id);
                Ok(temp_file())
            })
            .expect("open");
        let second = cache.get_or_open(id, || Ok(temp_file())).expect("open");
        assert!(
            !Arc::ptr_eq(&first, &second),
            "the raced open must not be cached"
        );
    }

    #[test]
    fn open_errors_pass_through_with_their_errno() {
        let cache = FdCache::new(8);
        let err = cache
            .get_or_open(ContentId(1), || {
                Err(io::Error::from_raw_os_error(libc::ENOSPC))
            })
            .expect_err("error");
        assert_eq!(err.raw_os_error(), Some(libc::ENOSPC));
        assert_eq!(cache.len(), 0);
    }
}
