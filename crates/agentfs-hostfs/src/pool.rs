//! Empty content objects made ahead of time, so that `create` answers without
//! waiting for the host filesystem to allocate an inode.
//!
//! With FUSE passthrough every new file needs its object at once (the kernel
//! gets the object's fd in the create reply), and allocating an inode is the
//! dearest step of a create on the host: about 100 µs on this machine's ext4,
//! several times a FUSE round trip. A filler thread keeps up to [`HIGH`]
//! objects ready; `create` takes one (or makes one itself when none is ready)
//! and wakes the filler when fewer than [`LOW`] remain.
//!
//! Pooled objects are ordinary empty object files with ids of their own, not
//! yet referenced by any tree, and hold no descriptor (the pool must not eat
//! into the descriptor bound): `create` opens the one it takes. Removed objects are never put back: a process
//! can still map a passthrough file's object after its last release, so a
//! reused object could show one file's data in another's mapping.

use agentfs_core::ContentId;
use parking_lot::{Condvar, Mutex};
use std::collections::VecDeque;
use std::io;
use std::sync::Arc;
use std::thread::JoinHandle;

/// The filler tops the pool up to this many objects...
pub(crate) const HIGH: usize = 64;
/// ...whenever it falls below this many.
pub(crate) const LOW: usize = 16;

/// Objects ready to hand out.
#[derive(Default)]
pub(crate) struct ObjectPool {
    // Leaf lock.
    state: Mutex<PoolState>,
    /// Signalled when the pool runs low, and on stop.
    wake: Condvar,
}

#[derive(Default)]
struct PoolState {
    /// Oldest first, so ids are handed out in the order they were made.
    ready: VecDeque<ContentId>,
    /// The object the filler is making now (its file may exist already).
    making: Option<ContentId>,
    stop: bool,
}

impl ObjectPool {
    /// A ready object, if there is one; wakes the filler when the pool runs low.
    pub(crate) fn take(&self) -> Option<ContentId> {
        let mut st = self.state.lock();
        let taken = st.ready.pop_front();
        if st.ready.len() < LOW {
            self.wake.notify_one();
        }
        taken
    }

    /// Objects ready now.
    pub(crate) fn len(&self) -> usize {
        self.state.lock().ready.len()
    }

    /// The ids of the objects the pool holds now: ready, or being made. Files
    /// with these ids under `objects/` belong to no tree.
    pub(crate) fn ids(&self) -> std::collections::HashSet<ContentId> {
        let st = self.state.lock();
        st.ready.iter().copied().chain(st.making).collect()
    }

    /// Start the filler thread: `fresh` hands out a new id, `make` creates the
    /// empty object of that id.
    pub(crate) fn spawn(
        self: &Arc<Self>,
        fresh: impl Fn() -> ContentId + Send + 'static,
        make: impl Fn(ContentId) -> io::Result<()> + Send + 'static,
    ) -> io::Result<JoinHandle<()>> {
        let pool = Arc::clone(self);
        std::thread::Builder::new()
            .name("agentfs-objpool".into())
            .spawn(move || pool.fill(fresh, make))
    }

    fn fill(&self, fresh: impl Fn() -> ContentId, make: impl Fn(ContentId) -> io::Result<()>) {
        loop {
            {
                let mut st = self.state.lock();
                while st.ready.len() >= LOW && !st.stop {
                    self.wake.wait(&mut st);
                }
                if st.stop {
                    return;
                }
            }
            // Make a batch outside the lock, then hand it over.
            while self.len() < HIGH {
                let id = {
                    let mut st = self.state.lock();
                    let id = fresh();
                    st.making = Some(id);
                    id
                };
                let made = make(id);
                let mut st = self.state.lock();
                st.making = None;
                match made {
                    Ok(()) => {
                        // Stop may have come while it was made: it goes with
                        // the rest, to `drain`.
                        st.ready.push_back(id);
                        if st.stop {
                            return;
                        }
                    }
                    Err(e) => {
                        // A full or failing disk: creates make their own
                        // objects (and get the error) until the filler is
                        // woken again.
                        tracing::debug!(error = %e, "cannot make a pooled object");
                        break;
                    }
                }
            }
        }
    }

    /// Ask the filler to end.
    pub(crate) fn stop(&self) {
        self.state.lock().stop = true;
        self.wake.notify_all();
    }

    /// Take every object still ready (after `stop` and the filler's end: to
    /// delete them).
    pub(crate) fn drain(&self) -> Vec<ContentId> {
        self.state.lock().ready.drain(..).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU64, Ordering};

    #[test]
    fn the_filler_keeps_objects_ready_and_stop_returns_them() {
        let pool = Arc::new(ObjectPool::default());
        let dir = tempfile::tempdir().unwrap();
        let next = Arc::new(AtomicU64::new(1));
        let (path, counter) = (dir.path().to_path_buf(), Arc::clone(&next));
        let filler = pool
            .spawn(
                move || ContentId(counter.fetch_add(1, Ordering::Relaxed)),
                move |id| std::fs::File::create(path.join(id.0.to_string())).map(drop),
            )
            .unwrap();
        // Take far more than the pool holds: the filler must keep up.
        let mut taken = Vec::new();
        while taken.len() < 3 * HIGH {
            match pool.take() {
                Some(id) => taken.push(id),
                None => std::thread::yield_now(),
            }
        }
        let mut ids: Vec<u64> = taken.iter().map(|id| id.0).collect();
        ids.sort_unstable();
        ids.dedup();
        assert_eq!(ids.len(), 3 * HIGH, "an object was handed out twice");
        let in_order = taken.windows(2).all(|w| w[0].0 < w[1].0);
        assert!(in_order, "ids not handed out in the order made: {taken:?}");
        pool.stop();
        filler.join().unwrap();
        let left = pool.drain();
        assert!(left.len() <= HIGH);
        assert!(left.iter().all(|id| !taken.contains(id)));
        assert_eq!(pool.len(), 0);
    }
}
