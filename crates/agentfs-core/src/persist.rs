//! Persistence of FsCore's metadata: a physical redo journal plus checkpoints,
//! kept in a [`MetaStore`] (HostFs keeps them as files beside the objects).
//!
//! - Every committed tree change appends a record of the nodes it changed
//!   (`record.rs`), while the branch's tree lock is held, so the journal's
//!   order is the commit order. Snapshot and branch creation and deletion are
//!   records too. A background thread writes appended records every few
//!   milliseconds (so a `kill -9` loses at most that window of changes nobody
//!   synced); fsync, syncfs and snapshot/branch changes make the journal
//!   durable before they are answered: an fdatasync, or for a snapshot
//!   the backstore's `syncfs` where that covers the journal (`journal.rs`).
//! - A checkpoint (`checkpoint.rs`) holds the whole state. Mounting loads the
//!   checkpoint, replays the journal of the same generation up to its first
//!   torn or corrupt frame, then writes the recovered state as the next
//!   generation's checkpoint and starts an empty journal. Clean unmount
//!   writes a checkpoint too, so the next mount replays nothing.
//! - Recovery (in `fs/durable.rs`) rebuilds one `Arc<Content>` per object,
//!   stamps epochs, drops orphans and removes objects no tree names.
//!
//! The format is versioned ([`FORMAT_VERSION`], in both file headers); an
//! unknown version is refused with [`PersistError::Version`], never guessed at.

pub(crate) mod checkpoint;
pub(crate) mod codec;
pub(crate) mod journal;
pub(crate) mod record;

#[cfg(test)]
mod tests;

use crate::fs::tree::{Reaper, Tree};
use crate::ids::{BranchId, NodeId, SnapshotId};
use parking_lot::Mutex;
use std::collections::{BTreeMap, HashSet};
use std::io;
use std::sync::Arc;
use std::time::SystemTime;

/// Version of the checkpoint and journal formats this build writes. Version
/// 2 added node bodies for lower files and unread lower directories (overlay
/// mounts, specs/overlay.md); a version 1 store holds none and is read as it
/// always was ([`OLDEST_READ_VERSION`]).
pub const FORMAT_VERSION: u32 = 2;

/// The oldest format version this build reads.
pub const OLDEST_READ_VERSION: u32 = 1;

/// Why persisted state could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum PersistError {
    #[error("metadata store I/O failed: {0}")]
    Io(#[from] io::Error),
    #[error("the backstore's metadata has format version {found}; this build reads version {supported} only")]
    Version { found: u32, supported: u32 },
    #[error("the backstore's metadata is corrupt: {0}")]
    Corrupt(String),
}

/// Where checkpoints and the journal are kept. Methods may be called from
/// several threads, never two journal writes at once.
pub trait MetaStore: Send + Sync + 'static {
    /// The current checkpoint, if one was ever written.
    fn read_checkpoint(&self) -> io::Result<Option<Vec<u8>>>;
    /// Replace the checkpoint atomically and durably (write a temporary,
    /// fsync it, rename it over, fsync the directory).
    fn write_checkpoint(&self, data: &[u8]) -> io::Result<()>;
    /// The whole journal; empty if there is none.
    fn read_journal(&self) -> io::Result<Vec<u8>>;
    /// Write `data` at `offset` of the journal (durable only after `sync_journal`).
    fn write_journal(&self, offset: u64, data: &[u8]) -> io::Result<()>;
    /// Cut the journal to `len` bytes.
    fn truncate_journal(&self, len: u64) -> io::Result<()>;
    /// Make the journal's written bytes durable (fdatasync).
    fn sync_journal(&self) -> io::Result<()>;
    /// Whether a sync of the backstore's whole filesystem
    /// ([`Backstore::sync_all`](crate::backstore::Backstore::sync_all))
    /// makes the journal's written bytes durable too: the journal is a file
    /// on that filesystem. Then a snapshot-create needs one disk flush, not
    /// two. Say `false` when unsure.
    fn journal_on_backstore_fs(&self) -> bool {
        false
    }
}

/// A [`MetaStore`] in memory, for tests: a crash is simulated by opening a
/// new FsCore on [`MemStore::image`], optionally with the journal cut short.
#[derive(Default)]
pub struct MemStore {
    inner: Mutex<(Option<Vec<u8>>, Vec<u8>)>,
}

impl MemStore {
    pub fn new() -> MemStore {
        MemStore::default()
    }

    /// A store holding this one's checkpoint and the first `journal_len`
    /// bytes of its journal (all of it if `None`).
    pub fn image(&self, journal_len: Option<usize>) -> MemStore {
        let inner = self.inner.lock();
        let len = journal_len.unwrap_or(inner.1.len()).min(inner.1.len());
        MemStore {
            inner: Mutex::new((inner.0.clone(), inner.1[..len].to_vec())),
        }
    }

    /// Bytes in the journal now.
    pub fn journal_len(&self) -> usize {
        self.inner.lock().1.len()
    }
}

impl MetaStore for MemStore {
    fn read_checkpoint(&self) -> io::Result<Option<Vec<u8>>> {
        Ok(self.inner.lock().0.clone())
    }
    fn write_checkpoint(&self, data: &[u8]) -> io::Result<()> {
        self.inner.lock().0 = Some(data.to_vec());
        Ok(())
    }
    fn read_journal(&self) -> io::Result<Vec<u8>> {
        Ok(self.inner.lock().1.clone())
    }
    fn write_journal(&self, offset: u64, data: &[u8]) -> io::Result<()> {
        let j = &mut self.inner.lock().1;
        let end = offset as usize + data.len();
        if j.len() < end {
            j.resize(end, 0);
        }
        j[offset as usize..end].copy_from_slice(data);
        Ok(())
    }
    fn truncate_journal(&self, len: u64) -> io::Result<()> {
        self.inner.lock().1.truncate(len as usize);
        Ok(())
    }
    fn sync_journal(&self) -> io::Result<()> {
        Ok(())
    }
}

/// A branch as persisted.
#[derive(Clone)]
pub(crate) struct BranchRec {
    pub(crate) name: String,
    pub(crate) from: Option<SnapshotId>,
    pub(crate) created: SystemTime,
    pub(crate) tree: Tree,
}

/// A snapshot as persisted.
#[derive(Clone)]
pub(crate) struct SnapshotRec {
    pub(crate) name: String,
    pub(crate) branch: BranchId,
    pub(crate) created: SystemTime,
    pub(crate) tree: Tree,
}

/// The node ids handed out: ordinary ids count up, lower entries' ids
/// ([`NodeId::lower`]) are scattered over their own range, so a set says which
/// of those are taken.
#[derive(Clone, Default)]
pub(crate) struct NodeIds {
    /// Above every ordinary node id ever handed out.
    pub(crate) next: u64,
    /// The lower entries' ids in some tree; filled by recovery (not written:
    /// every one of them is in a checkpoint's or record's nodes).
    pub(crate) lower: HashSet<u64>,
}

impl NodeIds {
    /// Note that `id` is taken.
    pub(crate) fn saw(&mut self, id: NodeId) {
        if id.is_lower() {
            self.lower.insert(id.0);
        } else {
            self.next = self.next.max(id.0.saturating_add(1));
        }
    }
}

/// Everything FsCore persists.
#[derive(Clone, Default)]
pub(crate) struct State {
    /// The node ids handed out.
    pub(crate) nodes: NodeIds,
    /// The highest branch and snapshot ids handed out.
    pub(crate) next_branch: u64,
    pub(crate) next_snapshot: u64,
    pub(crate) branches: BTreeMap<BranchId, BranchRec>,
    pub(crate) snapshots: BTreeMap<SnapshotId, SnapshotRec>,
}

/// What [`load`] found.
pub(crate) struct Loaded {
    /// `None` for a store that never held a checkpoint.
    pub(crate) state: Option<State>,
    pub(crate) generation: u64,
    pub(crate) contents: codec::Contents,
    /// Journal records replayed (0 after a clean unmount).
    pub(crate) replayed: usize,
    /// Whether the journal holds only the mark of a clean close: nothing
    /// happened after the checkpoint, not even a write the kernel made
    /// directly to an object.
    pub(crate) clean_close: bool,
}

/// Load the checkpoint and replay its journal.
pub(crate) fn load(store: &dyn MetaStore, reaper: &Arc<Reaper>) -> Result<Loaded, PersistError> {
    let mut contents = codec::Contents::new(reaper);
    let Some(data) = store.read_checkpoint()? else {
        return Ok(Loaded {
            state: None,
            generation: 0,
            contents,
            replayed: 0,
            clean_close: true,
        });
    };
    let (generation, mut state) = checkpoint::decode(&data, &mut contents)?;
    drop(data);
    let journal = store.read_journal()?;
    let (frames, _end) = journal::frames(&journal, generation)?;
    let mut replay = record::Replay::default();
    for (at, payload) in &frames {
        record::apply(payload, &mut state, &mut replay, &mut contents)
            .map_err(|e| PersistError::Corrupt(format!("journal record at byte {at}: {e}")))?;
    }
    let marks = frames
        .iter()
        .filter(|(_, payload)| record::is_clean_close(payload))
        .count();
    Ok(Loaded {
        state: Some(state),
        generation,
        contents,
        replayed: frames.len() - marks,
        clean_close: marks > 0 && marks == frames.len(),
    })
}
