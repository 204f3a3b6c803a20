//! The synchronisation primitives of this crate, in one place.
//!
//! Every lock, condition variable and atomic the pool uses comes through this
//! shim, so a model checker (`shuttle::sync`) can be swapped in for
//! concurrency tests without touching the pool. Today it re-exports
//! `std::sync`. (crossbeam-deque's own atomics are outside the shim.)
//!
//! Poisoning is ignored on purpose: no critical section in this crate runs
//! user code (jobs run with no lock held), so a poisoned lock can only mean a
//! panic in our own few lines between `lock` and unlock, after which the
//! guarded data (always `()` or a `Vec` of join handles) is still valid.

pub(crate) use std::sync::atomic::{fence, AtomicBool, AtomicU64, AtomicUsize, Ordering};
pub(crate) use std::sync::{
    Arc, Condvar, Mutex, MutexGuard, RwLock, RwLockReadGuard, RwLockWriteGuard,
};

use std::sync::PoisonError;

/// Lock `m`, ignoring poisoning (see the module header).
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Take `l` shared, ignoring poisoning.
pub(crate) fn read<T>(l: &RwLock<T>) -> RwLockReadGuard<'_, T> {
    l.read().unwrap_or_else(PoisonError::into_inner)
}

/// Take `l` exclusively, ignoring poisoning.
pub(crate) fn write<T>(l: &RwLock<T>) -> RwLockWriteGuard<'_, T> {
    l.write().unwrap_or_else(PoisonError::into_inner)
}

/// Wait on `cv`, ignoring poisoning.
pub(crate) fn wait<'a, T>(cv: &Condvar, guard: MutexGuard<'a, T>) -> MutexGuard<'a, T> {
    cv.wait(guard).unwrap_or_else(PoisonError::into_inner)
}
