//! FsCore's metadata store ([`agentfs_core::MetaStore`]) as two files under
//! `<root>/meta/`: `checkpoint` (replaced atomically: written to
//! `checkpoint.tmp`, fsynced, renamed over, the directory fsynced) and
//! `journal` (written at offsets, fdatasynced on demand, or made durable by
//! the root's `syncfs`, which covers it when it is on the root's filesystem,
//! as it always is unless `meta/` was made a mount of its own). The root's `flock`
//! already keeps a second process off both.

use crate::HostFs;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

const CHECKPOINT: &str = "checkpoint";
const CHECKPOINT_TMP: &str = "checkpoint.tmp";
const JOURNAL: &str = "journal";
/// Journal bytes kept allocated past its end (`FALLOC_FL_KEEP_SIZE`).
const JOURNAL_RESERVE: u64 = 1 << 20;
/// The reserve is topped up each time the journal's end crosses a multiple of this.
const JOURNAL_RESERVE_STEP: u64 = 64 << 10;

/// The open journal file and where the metadata lives.
pub(crate) struct MetaFiles {
    dir: PathBuf,
    journal: File,
    /// The journal is on the filesystem of the backstore's root, so the
    /// root's `syncfs` makes its written bytes durable too.
    on_root_fs: bool,
}

impl MetaFiles {
    /// Open the journal in `dir`; `root` is the backstore's root directory.
    pub(crate) fn open(dir: &Path, root: &File) -> io::Result<MetaFiles> {
        let journal = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(dir.join(JOURNAL))?;
        let on_root_fs = journal.metadata()?.dev() == root.metadata()?.dev();
        Ok(MetaFiles {
            dir: dir.to_path_buf(),
            journal,
            on_root_fs,
        })
    }
}

impl agentfs_core::MetaStore for HostFs {
    fn read_checkpoint(&self) -> io::Result<Option<Vec<u8>>> {
        match fs::read(self.meta.dir.join(CHECKPOINT)) {
            Ok(data) => Ok(Some(data)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    fn write_checkpoint(&self, data: &[u8]) -> io::Result<()> {
        let tmp = self.meta.dir.join(CHECKPOINT_TMP);
        let mut file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?;
        file.write_all(data)?;
        file.sync_all()?;
        drop(file);
        fs::rename(&tmp, self.meta.dir.join(CHECKPOINT))?;
        File::open(&self.meta.dir)?.sync_all()
    }

    fn read_journal(&self) -> io::Result<Vec<u8>> {
        let len = self.meta.journal.metadata()?.len() as usize;
        let mut data = vec![0u8; len];
        self.meta.journal.read_exact_at(&mut data, 0)?;
        Ok(data)
    }

    fn write_journal(&self, offset: u64, data: &[u8]) -> io::Result<()> {
        // Keep space allocated past the end (best effort: a full or
        // fallocate-less filesystem just gets no reserve), so that records,
        // above all the unlinks whose objects free space once durable, can
        // be written when the backstore's filesystem is full.
        let end = offset + data.len() as u64;
        if offset == 0 || offset / JOURNAL_RESERVE_STEP != end / JOURNAL_RESERVE_STEP {
            let _ = crate::sys::fallocate(
                &self.meta.journal,
                libc::FALLOC_FL_KEEP_SIZE,
                offset as libc::off_t,
                (data.len() as u64 + JOURNAL_RESERVE) as libc::off_t,
            );
        }
        self.meta.journal.write_all_at(data, offset)
    }

    fn truncate_journal(&self, len: u64) -> io::Result<()> {
        self.meta.journal.set_len(len)
    }

    fn sync_journal(&self) -> io::Result<()> {
        self.meta.journal.sync_data()
    }

    fn journal_on_backstore_fs(&self) -> bool {
        self.meta.on_root_fs
    }
}
