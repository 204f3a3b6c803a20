//! Where each object's file lives under `<root>/objects/`.
//!
//! Objects are spread over fanout directories so that no directory grows to
//! millions of entries. Which directory an id goes to is the layout, and a
//! backstore keeps the layout it was made with:
//!
//! ```text
//! objects/<fff>/<id>   Runs: <fff> is bits 8-19 of the id in 3 hex digits,
//!                      so 256 consecutive ids share a directory
//! objects/<ff>/<id>    LowByte: <ff> is the id's low byte in 2 hex digits
//!                      (backstores made by builds before Runs)
//! ```
//!
//! Ids are handed out in order, so under `LowByte` every new object went to
//! the next of 256 directories. A burst of creates touched every one of them,
//! and the host placed their inodes across as many inode-table blocks; after
//! the host's caches were dropped, 20,000 creates read 300-700 blocks back
//! from disk one at a time (against 60 for the same creates in one host
//! directory), and a create on AgentFS took 1.0-1.1 s against 0.7-0.8 s with
//! `Runs`, where a burst fills one directory after another. See
//! specs/performance.md.
//!
//! The layout is read off the directory names at open: a backstore holding a
//! 2-digit fanout directory is `LowByte`, any other (a new one included) is
//! `Runs`. So builds before `Runs` cannot read a backstore made after it.

use agentfs_core::ContentId;
use std::fs::{self, DirBuilder, File, OpenOptions};
use std::io;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

/// Which fanout directory holds an id. See the module header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Fanout {
    Runs,
    LowByte,
}

/// The `objects/` directory of a backstore, with its layout.
#[derive(Clone, Debug)]
pub(crate) struct ObjectDir {
    path: PathBuf,
    fanout: Fanout,
}

impl ObjectDir {
    /// The objects directory at `path` (which exists), and the ids of every
    /// object in it: one walk, which also reads the layout off the names of
    /// its subdirectories.
    pub(crate) fn open(path: PathBuf) -> io::Result<(ObjectDir, Vec<u64>)> {
        let mut fanout = Fanout::Runs;
        let ids = walk(&path, |name| {
            let low_byte = name.len() == 2
                && name
                    .to_str()
                    .is_some_and(|n| u8::from_str_radix(n, 16).is_ok());
            if low_byte {
                fanout = Fanout::LowByte;
            }
        })?;
        Ok((ObjectDir { path, fanout }, ids))
    }

    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    #[cfg(test)]
    pub(crate) fn fanout(&self) -> Fanout {
        self.fanout
    }

    /// The fanout directory of `id`.
    pub(crate) fn dir_of(&self, id: ContentId) -> PathBuf {
        self.path.join(match self.fanout {
            Fanout::Runs => format!("{:03x}", (id.0 >> 8) & 0xfff),
            Fanout::LowByte => format!("{:02x}", id.0 & 0xff),
        })
    }

    /// The file of `id`.
    pub(crate) fn file_of(&self, id: ContentId) -> PathBuf {
        self.dir_of(id).join(format!("{:016x}", id.0))
    }

    /// Create the file of `id` (and its fanout directory if needed); it must
    /// not exist.
    pub(crate) fn create(&self, id: ContentId) -> io::Result<File> {
        let path = self.file_of(id);
        let create = || {
            OpenOptions::new()
                .read(true)
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&path)
        };
        match create() {
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                match DirBuilder::new().mode(0o700).create(self.dir_of(id)) {
                    Ok(()) => {}
                    Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
                    Err(e) => return Err(e),
                }
                create()
            }
            other => other,
        }
    }

    /// The ids of every object file, in any fanout directory (names that are
    /// not 16 hex digits are not objects and are left alone).
    pub(crate) fn list_ids(&self) -> io::Result<Vec<u64>> {
        walk(&self.path, |_| {})
    }
}

/// The ids of the object files in every subdirectory of `objects`, calling
/// `on_dir` with each subdirectory's name.
fn walk(objects: &Path, mut on_dir: impl FnMut(&std::ffi::OsStr)) -> io::Result<Vec<u64>> {
    let mut ids = Vec::new();
    for fanout in fs::read_dir(objects)? {
        let fanout = fanout?;
        if !fanout.file_type()?.is_dir() {
            continue;
        }
        on_dir(&fanout.file_name());
        for object in fs::read_dir(fanout.path())? {
            ids.extend(object_id(&object?.file_name()));
        }
    }
    Ok(ids)
}

/// The id of an object file's name (16 hex digits), if it is one.
pub(crate) fn object_id(name: &std::ffi::OsStr) -> Option<u64> {
    let name = name.to_str()?;
    (name.len() == 16).then(|| u64::from_str_radix(name, 16).ok())?
}
