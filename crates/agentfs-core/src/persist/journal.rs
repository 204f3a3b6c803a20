//! The journal: records appended in commit order, written to the store by a
//! background thread 5 ms after the first of them (it sleeps while nothing
//! is appended), and made durable by every fsync, syncfs and view change
//! before it is answered: an fdatasync, or where the change syncs the
//! backstore too (snapshot-create) and the journal lives on its filesystem,
//! that one `syncfs` after the records are written.
//!
//! File layout: a 24-byte header (magic, format version, generation), then
//! frames of `[len u32][crc32c u32][payload]`. The generation ties a journal
//! to the checkpoint it continues; a journal of another generation is stale
//! (a checkpoint was written after it) and is ignored. Replay stops at the
//! first frame that is short or fails its checksum: a torn tail is what a
//! crash in the middle of an append leaves.
//!
//! Objects freed by a change are removed from the backstore only once the
//! record of that change is durable, so a crash never leaves a recovered tree
//! naming an object that is gone.

use super::codec::crc32c;
use super::{MetaStore, PersistError, FORMAT_VERSION};
use crate::backstore::Backstore;
use crate::ids::ContentId;
use parking_lot::Mutex;
use std::io;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

const MAGIC: &[u8; 8] = b"AGFSJNL\0";
pub(crate) const HEADER_LEN: u64 = 24;
/// How long after the first record appended since the last write the
/// background thread writes them out (records appended meanwhile go along).
const FLUSH_EVERY: Duration = Duration::from_millis(5);
/// How long the background thread sleeps at most while nothing is appended
/// (to notice a journal dropped without `shutdown`).
const IDLE_CHECK: Duration = Duration::from_secs(1);

pub(crate) fn header(gen: u64) -> Vec<u8> {
    let mut h = Vec::with_capacity(HEADER_LEN as usize);
    h.extend_from_slice(MAGIC);
    h.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
    h.extend_from_slice(&0u32.to_le_bytes());
    h.extend_from_slice(&gen.to_le_bytes());
    h
}

/// The valid frames of a journal: `(start offset, payload)` each, in order,
/// and the offset where the valid part ends.
pub(crate) type Frames<'a> = (Vec<(usize, &'a [u8])>, usize);

/// The frames of a journal of generation `gen`: `(start offset, payload)`
/// of each valid one, in order, and where the valid part ends. A journal of
/// another generation (or none) has no frames.
pub(crate) fn frames(data: &[u8], gen: u64) -> Result<Frames<'_>, PersistError> {
    let hl = HEADER_LEN as usize;
    if data.len() < hl || &data[..8] != MAGIC {
        return Ok((Vec::new(), 0));
    }
    let version = u32::from_le_bytes(data[8..12].try_into().expect("4"));
    if !(super::OLDEST_READ_VERSION..=FORMAT_VERSION).contains(&version) {
        return Err(PersistError::Version {
            found: version,
            supported: FORMAT_VERSION,
        });
    }
    if u64::from_le_bytes(data[16..24].try_into().expect("8")) != gen {
        return Ok((Vec::new(), 0));
    }
    let mut out = Vec::new();
    let mut pos = hl;
    while pos + 8 <= data.len() {
        let len = u32::from_le_bytes(data[pos..pos + 4].try_into().expect("4")) as usize;
        let crc = u32::from_le_bytes(data[pos + 4..pos + 8].try_into().expect("4"));
        // No record is empty: zeros (a file extended but never written, as
        // a power cut can leave) would otherwise pass as a frame with a
        // valid checksum.
        let Some(end) = (pos + 8)
            .checked_add(len)
            .filter(|&e| len > 0 && e <= data.len())
        else {
            break;
        };
        let payload = &data[pos + 8..end];
        if crc32c(payload) != crc {
            break;
        }
        out.push((pos, payload));
        pos = end;
    }
    Ok((out, pos))
}

struct Pending {
    /// Frames appended and not yet written.
    buf: Vec<u8>,
    /// Journal offset where everything appended so far ends.
    appended: u64,
    /// Objects to remove once the journal is durable up to the offset.
    removals: Vec<(u64, ContentId)>,
}

impl Pending {
    /// Nothing for the background thread to do.
    fn idle(&self) -> bool {
        self.buf.is_empty() && self.removals.is_empty()
    }
}

struct Written {
    /// Journal offset up to which frames are written to the store.
    written: u64,
    /// Journal offset up to which frames are durable.
    durable: u64,
}

/// The running journal of one FsCore.
pub(crate) struct Journal {
    store: Arc<dyn MetaStore>,
    backstore: Arc<dyn Backstore>,
    /// Leaf lock: taken under tree and registry locks to append.
    pending: Mutex<Pending>,
    /// Wakes the background thread: something to write, or stop.
    work: parking_lot::Condvar,
    /// Serialises writes to the store; never taken under a tree lock.
    io: Mutex<Written>,
    next_tag: AtomicU64,
    failed: AtomicBool,
    /// Generation of the checkpoint this journal continues.
    generation: AtomicU64,
    /// Held shared by an operation whose journal records must not be split
    /// by a checkpoint (snapshot-create's freeze and create), exclusively by
    /// a checkpoint. Taken before every other FsCore lock.
    pub(crate) gate: parking_lot::RwLock<()>,
    /// Journal bytes past which a change triggers a checkpoint.
    pub(crate) threshold: AtomicU64,
    /// Set while a checkpoint runs, so only one thread starts one.
    pub(crate) checkpointing: AtomicBool,
    /// Tells the background thread to end; its handle, to wait for it.
    stop: AtomicBool,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
}

/// Journal size that triggers a checkpoint while mounted.
pub(crate) const CHECKPOINT_THRESHOLD: u64 = 64 << 20;

impl Journal {
    /// A journal continuing at `len` bytes of the store's journal (which
    /// holds at least the header).
    pub(crate) fn start(
        store: Arc<dyn MetaStore>,
        backstore: Arc<dyn Backstore>,
        len: u64,
        generation: u64,
    ) -> Arc<Journal> {
        let journal = Arc::new(Journal {
            store,
            backstore,
            pending: Mutex::new(Pending {
                buf: Vec::new(),
                appended: len,
                removals: Vec::new(),
            }),
            work: parking_lot::Condvar::new(),
            io: Mutex::new(Written {
                written: len,
                durable: len,
            }),
            next_tag: AtomicU64::new(1),
            failed: AtomicBool::new(false),
            generation: AtomicU64::new(generation),
            gate: parking_lot::RwLock::new(()),
            threshold: AtomicU64::new(CHECKPOINT_THRESHOLD),
            checkpointing: AtomicBool::new(false),
            stop: AtomicBool::new(false),
            thread: Mutex::new(None),
        });
        let weak: Weak<Journal> = Arc::downgrade(&journal);
        let spawned = std::thread::Builder::new()
            .name("agentfs-journal".into())
            .spawn(move || loop {
                // Asleep while there is nothing to write: an idle mount
                // costs no wake-ups but one a second.
                {
                    let Some(j) = weak.upgrade() else { break };
                    let mut p = j.pending.lock();
                    if j.stop.load(Ordering::Acquire) {
                        break;
                    }
                    if p.idle() {
                        j.work.wait_for(&mut p, IDLE_CHECK);
                        if p.idle() {
                            continue;
                        }
                    }
                }
                std::thread::sleep(FLUSH_EVERY);
                let Some(j) = weak.upgrade() else { break };
                if j.stop.load(Ordering::Acquire) {
                    break;
                }
                let due = !j.pending.lock().removals.is_empty();
                if let Err(e) = j.flush(due) {
                    if !j.failed.swap(true, Ordering::Relaxed) {
                        tracing::error!(error = %e, "cannot write the journal; retrying");
                    }
                } else {
                    j.failed.store(false, Ordering::Relaxed);
                }
            });
        match spawned {
            Ok(handle) => *journal.thread.lock() = Some(handle),
            Err(e) => {
                tracing::error!(error = %e, "cannot start the journal thread; records are written at sync only")
            }
        }
        journal
    }

    /// Write out what is appended and end the background thread (when the
    /// core goes away), so the store is released with the core.
    pub(crate) fn shutdown(&self) {
        self.stop.store(true, Ordering::Release);
        {
            // Under the lock the thread checks `stop` under: no missed wake-up.
            let _p = self.pending.lock();
            self.work.notify_all();
        }
        let handle = self.thread.lock().take();
        if let Some(handle) = handle {
            if handle.thread().id() != std::thread::current().id() {
                let _ = handle.join();
            }
        }
        if let Err(e) = self.flush(false) {
            tracing::warn!(error = %e, "cannot write the journal's last records");
        }
    }

    /// Whether the journal has grown past the checkpoint threshold.
    pub(crate) fn wants_checkpoint(&self) -> bool {
        self.pending.lock().appended > self.threshold.load(Ordering::Relaxed)
    }

    pub(crate) fn store(&self) -> &dyn MetaStore {
        &*self.store
    }

    /// Start the next generation: `write_checkpoint(generation)` writes the
    /// checkpoint holding everything appended so far (the caller keeps
    /// anything from being appended meanwhile), then the journal restarts
    /// empty. Objects waiting for their records are removed: the checkpoint
    /// is durable.
    pub(crate) fn restart(
        &self,
        write_checkpoint: impl FnOnce(u64) -> io::Result<()>,
    ) -> io::Result<()> {
        let mut io = self.io.lock();
        let mut p = self.pending.lock();
        let generation = self.generation.load(Ordering::Acquire) + 1;
        write_checkpoint(generation)?;
        // From here on the old journal is stale (its generation is older).
        self.generation.store(generation, Ordering::Release);
        p.buf.clear();
        p.appended = HEADER_LEN;
        io.written = HEADER_LEN;
        io.durable = HEADER_LEN;
        let due: Vec<ContentId> = p.removals.drain(..).map(|(_, id)| id).collect();
        drop(p);
        self.store.truncate_journal(0)?;
        self.store.write_journal(0, &header(generation))?;
        self.store.sync_journal()?;
        drop(io);
        for id in due {
            if let Err(e) = self.backstore.remove(id) {
                tracing::warn!(content = %id, error = %e, "could not remove a freed content object");
            }
        }
        Ok(())
    }

    /// Append one record (called with the lock that orders it held).
    pub(crate) fn append(&self, payload: &[u8]) {
        let mut p = self.pending.lock();
        if p.idle() {
            self.work.notify_one();
        }
        p.buf
            .extend_from_slice(&(payload.len() as u32).to_le_bytes());
        p.buf.extend_from_slice(&crc32c(payload).to_le_bytes());
        p.buf.extend_from_slice(payload);
        p.appended += 8 + payload.len() as u64;
    }

    /// A tag naming a frozen snapshot tree between its two records.
    pub(crate) fn tag(&self) -> u64 {
        self.next_tag.fetch_add(1, Ordering::Relaxed)
    }

    /// Remove `ids` from the backstore once every record appended so far is durable.
    pub(crate) fn remove_when_durable(&self, ids: Vec<ContentId>) {
        if ids.is_empty() {
            return;
        }
        let mut p = self.pending.lock();
        if p.idle() {
            self.work.notify_one();
        }
        let at = p.appended;
        p.removals.extend(ids.into_iter().map(|id| (at, id)));
    }

    /// Make every record appended so far durable (fdatasync).
    /// Objects whose freeing records are durable already are removed too
    /// (freed by the reaper after the record was synced), so what
    /// `Backstore::usage` counts next is exact.
    pub(crate) fn sync(&self) -> io::Result<()> {
        let (target, removals) = {
            let p = self.pending.lock();
            (p.appended, !p.removals.is_empty())
        };
        if self.io.lock().durable >= target && !removals {
            return Ok(());
        }
        self.flush(true)
    }

    /// Make the backstore's objects and every record appended so far
    /// durable. Where the store says a sync of the backstore's filesystem
    /// covers the journal too ([`MetaStore::journal_on_backstore_fs`]), the
    /// records are written out first and the one `syncfs` makes both
    /// durable: one flush of the disk instead of two. Otherwise the objects
    /// are synced first, then the journal.
    ///
    /// Either way both are durable when this returns. What differs is a
    /// crash in the middle: with one `syncfs` the records may reach the disk
    /// before some of the data, so a change that was never answered (a
    /// snapshot-create cut short) can come back holding data no more durable
    /// than the live tree's, which a crash leaves as it finds it anyway.
    pub(crate) fn sync_with_backstore(&self) -> io::Result<()> {
        if !self.store.journal_on_backstore_fs() {
            self.backstore.sync_all()?;
            return self.sync();
        }
        let (end, generation) = {
            let mut io = self.io.lock();
            self.write_pending(&mut io)?;
            (io.written, self.generation.load(Ordering::Acquire))
        };
        // Not under the io lock: the background writer and other syncs go
        // on meanwhile; a syncfs can take long on a busy filesystem.
        self.backstore.sync_all()?;
        let mut io = self.io.lock();
        // A checkpoint meanwhile restarted the journal: offsets of the old
        // generation say nothing of the new one (the checkpoint itself is
        // durable and holds everything).
        if self.generation.load(Ordering::Acquire) == generation && io.durable < end {
            io.durable = end;
        }
        self.remove_due(io);
        Ok(())
    }

    /// Write out what is appended; with `durable`, fdatasync it too. Then
    /// remove the objects whose freeing records are durable.
    pub(crate) fn flush(&self, durable: bool) -> io::Result<()> {
        let mut io = self.io.lock();
        self.write_pending(&mut io)?;
        if durable && io.durable < io.written {
            self.store.sync_journal()?;
            io.durable = io.written;
        }
        self.remove_due(io);
        Ok(())
    }

    /// Write the appended frames to the store (`io` held: one writer at a time).
    fn write_pending(&self, io: &mut Written) -> io::Result<()> {
        let (data, end) = {
            let mut p = self.pending.lock();
            (std::mem::take(&mut p.buf), p.appended)
        };
        if data.is_empty() {
            return Ok(());
        }
        if let Err(e) = self.store.write_journal(io.written, &data) {
            // Keep the frames for the next attempt, in order, and cut
            // whatever part of them reached the file.
            let _ = self.store.truncate_journal(io.written);
            let mut p = self.pending.lock();
            let mut all = data;
            all.extend_from_slice(&p.buf);
            p.buf = all;
            return Err(e);
        }
        io.written = end;
        Ok(())
    }

    /// Remove the objects whose freeing records are durable (after
    /// releasing `io`: a removal is a host unlink).
    fn remove_due(&self, io: parking_lot::MutexGuard<'_, Written>) {
        let durable_at = io.durable;
        let due: Vec<ContentId> = {
            let mut p = self.pending.lock();
            let mut due = Vec::new();
            p.removals.retain(|&(at, id)| {
                if at <= durable_at {
                    due.push(id);
                    false
                } else {
                    true
                }
            });
            due
        };
        drop(io);
        for id in due {
            if let Err(e) = self.backstore.remove(id) {
                tracing::warn!(content = %id, error = %e, "could not remove a freed content object");
            }
        }
    }
}
