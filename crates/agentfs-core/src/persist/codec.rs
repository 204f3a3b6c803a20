//! The byte encoding of persisted state: little-endian integers, length-
//! prefixed byte strings, nodes, and the CRC-32C that guards every record.
//!
//! Hand-written rather than serde-derived: the encoded types are FsCore's
//! internal nodes (with `Arc`-shared contents that decode into one shared
//! `Arc` per object), the layout is small and fixed, and a decoder that never
//! panics on bad input is easier to see than to prove of a derive.

use super::PersistError;
use crate::attr::FileKind;
use crate::fs::tree::{Body, Content, Meta, Name, Node, Reaper};
use crate::ids::{ContentId, NodeId};
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// CRC-32C (Castagnoli), the checksum of journal frames and checkpoints.
///
/// The `crc32c` crate uses the CPU's CRC instruction where there is one
/// (SSE 4.2, ARMv8) and tables elsewhere: a byte-at-a-time table here was
/// 5-6% of a create's or unlink's time on the FUSE thread, for a few hundred
/// bytes of journal record each.
pub(crate) fn crc32c(data: &[u8]) -> u32 {
    crc32c::crc32c(data)
}

/// An append-only encoder.
#[derive(Default)]
pub(crate) struct Enc {
    pub(crate) buf: Vec<u8>,
}

impl Enc {
    pub(crate) fn u8(&mut self, v: u8) {
        self.buf.push(v);
    }
    pub(crate) fn u16(&mut self, v: u16) {
        self.buf.extend_from_slice(&v.to_le_bytes());
    }
    pub(crate) fn u32(&mut self, v: u32) {
        self.buf.extend_from_slice(&v.to_le_bytes());
    }
    pub(crate) fn u64(&mut self, v: u64) {
        self.buf.extend_from_slice(&v.to_le_bytes());
    }
    pub(crate) fn bytes(&mut self, v: &[u8]) {
        self.u32(v.len() as u32);
        self.buf.extend_from_slice(v);
    }
    pub(crate) fn str(&mut self, v: &str) {
        self.bytes(v.as_bytes());
    }
    /// Seconds and nanoseconds from the Unix epoch; times before it are negative.
    pub(crate) fn time(&mut self, t: SystemTime) {
        let (secs, nanos) = match t.duration_since(UNIX_EPOCH) {
            Ok(d) => (d.as_secs() as i64, d.subsec_nanos()),
            Err(e) => {
                let d = e.duration();
                if d.subsec_nanos() == 0 {
                    (-(d.as_secs() as i64), 0)
                } else {
                    (-(d.as_secs() as i64) - 1, 1_000_000_000 - d.subsec_nanos())
                }
            }
        };
        self.u64(secs as u64);
        self.u32(nanos);
    }
    pub(crate) fn opt_u64(&mut self, v: Option<u64>) {
        match v {
            Some(v) => {
                self.u8(1);
                self.u64(v);
            }
            None => self.u8(0),
        }
    }

    /// Attributes. The kind byte's high bit says a name hint (format 2)
    /// follows the times.
    pub(crate) fn meta(&mut self, m: &Meta) {
        self.u8(kind_code(m.kind) | if m.hint.is_some() { HINT_FLAG } else { 0 });
        self.u16(m.perm);
        self.u32(m.nlink);
        self.u32(m.uid);
        self.u32(m.gid);
        self.u64(m.size);
        self.u32(m.rdev);
        for t in [m.atime, m.mtime, m.ctime, m.crtime] {
            self.time(t);
        }
        if let Some(h) = &m.hint {
            self.u64(h.parent.0);
            self.bytes(&h.name);
        }
    }

    pub(crate) fn xattrs(&mut self, x: &Option<crate::fs::tree::Xattrs>) {
        match x {
            None => self.u8(0),
            Some(map) => {
                self.u8(1);
                self.u32(map.len() as u32);
                for (k, v) in map.iter() {
                    self.bytes(k);
                    self.bytes(v);
                }
            }
        }
    }

    /// A whole node.
    pub(crate) fn node(&mut self, n: &Node) {
        self.meta(&n.meta);
        match &n.body {
            Body::File {
                content: Some(c), ..
            } if c.lower.is_some() => {
                // A lower file read in place (format 2).
                self.u8(4);
                self.bytes(c.lower.as_deref().unwrap_or_default());
                self.u64(c.cached_allocated().unwrap_or(0));
            }
            Body::File { content } => {
                self.u8(0);
                self.opt_u64(content.as_ref().map(|c| c.id.0));
            }
            Body::Dir {
                parent,
                lower: Some(path),
                ..
            } => {
                // A lower directory not read yet (format 2): no entries.
                self.u8(5);
                self.u64(parent.0);
                self.bytes(path);
            }
            Body::Dir {
                entries, parent, ..
            } => {
                self.u8(1);
                self.u64(parent.0);
                self.u32(entries.len() as u32);
                for (name, id) in entries.iter() {
                    self.bytes(name);
                    self.u64(id.0);
                }
            }
            Body::Symlink(target) => {
                self.u8(2);
                self.bytes(target);
            }
            Body::Special => self.u8(3),
        }
        self.xattrs(&n.xattrs);
    }
}

/// Set in a node's kind byte when a name hint follows its times.
const HINT_FLAG: u8 = 0x80;

fn kind_code(k: FileKind) -> u8 {
    match k {
        FileKind::RegularFile => 0,
        FileKind::Directory => 1,
        FileKind::Symlink => 2,
        FileKind::NamedPipe => 3,
        FileKind::CharDevice => 4,
        FileKind::BlockDevice => 5,
        FileKind::Socket => 6,
    }
}

/// A decoder over a byte slice; every read checks bounds.
pub(crate) struct Dec<'a> {
    buf: &'a [u8],
    pos: usize,
}

fn corrupt(what: &str) -> PersistError {
    PersistError::Corrupt(what.to_string())
}

impl<'a> Dec<'a> {
    pub(crate) fn new(buf: &'a [u8]) -> Dec<'a> {
        Dec { buf, pos: 0 }
    }
    /// Consume whatever is left.
    pub(crate) fn skip_rest(&mut self) {
        self.pos = self.buf.len();
    }
    pub(crate) fn done(&self) -> bool {
        self.pos == self.buf.len()
    }
    fn take(&mut self, n: usize) -> Result<&'a [u8], PersistError> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|&e| e <= self.buf.len())
            .ok_or_else(|| corrupt("record ends early"))?;
        let s = &self.buf[self.pos..end];
        self.pos = end;
        Ok(s)
    }
    pub(crate) fn u8(&mut self) -> Result<u8, PersistError> {
        Ok(self.take(1)?[0])
    }
    pub(crate) fn u16(&mut self) -> Result<u16, PersistError> {
        Ok(u16::from_le_bytes(self.take(2)?.try_into().expect("2")))
    }
    pub(crate) fn u32(&mut self) -> Result<u32, PersistError> {
        Ok(u32::from_le_bytes(self.take(4)?.try_into().expect("4")))
    }
    pub(crate) fn u64(&mut self) -> Result<u64, PersistError> {
        Ok(u64::from_le_bytes(self.take(8)?.try_into().expect("8")))
    }
    pub(crate) fn bytes(&mut self) -> Result<Vec<u8>, PersistError> {
        let n = self.u32()? as usize;
        Ok(self.take(n)?.to_vec())
    }
    /// A directory entry name, encoded as `bytes`.
    pub(crate) fn name(&mut self) -> Result<Name, PersistError> {
        let n = self.u32()? as usize;
        Ok(Name::from(self.take(n)?))
    }
    pub(crate) fn str(&mut self) -> Result<String, PersistError> {
        String::from_utf8(self.bytes()?).map_err(|_| corrupt("a name is not UTF-8"))
    }
    pub(crate) fn time(&mut self) -> Result<SystemTime, PersistError> {
        let secs = self.u64()? as i64;
        let nanos = self.u32()?;
        if nanos >= 1_000_000_000 {
            return Err(corrupt("bad nanoseconds"));
        }
        let t = if secs >= 0 {
            UNIX_EPOCH.checked_add(Duration::new(secs as u64, nanos))
        } else {
            UNIX_EPOCH
                .checked_sub(Duration::from_secs(secs.unsigned_abs()))
                .and_then(|t| t.checked_add(Duration::from_nanos(u64::from(nanos))))
        };
        t.ok_or_else(|| corrupt("time out of range"))
    }
    pub(crate) fn opt_u64(&mut self) -> Result<Option<u64>, PersistError> {
        match self.u8()? {
            0 => Ok(None),
            1 => Ok(Some(self.u64()?)),
            _ => Err(corrupt("bad option tag")),
        }
    }
    /// A count of items that each take at least `min` bytes: bounded by what
    /// is left, so a corrupt count cannot ask for a huge allocation.
    pub(crate) fn count(&mut self, min: usize) -> Result<usize, PersistError> {
        let n = self.u32()? as usize;
        if n.saturating_mul(min) > self.buf.len() - self.pos {
            return Err(corrupt("count larger than the record"));
        }
        Ok(n)
    }

    pub(crate) fn meta(&mut self) -> Result<Meta, PersistError> {
        let code = self.u8()?;
        let kind = match code & !HINT_FLAG {
            0 => FileKind::RegularFile,
            1 => FileKind::Directory,
            2 => FileKind::Symlink,
            3 => FileKind::NamedPipe,
            4 => FileKind::CharDevice,
            5 => FileKind::BlockDevice,
            6 => FileKind::Socket,
            _ => return Err(corrupt("bad file kind")),
        };
        Ok(Meta {
            kind,
            perm: self.u16()?,
            nlink: self.u32()?,
            uid: self.u32()?,
            gid: self.u32()?,
            size: self.u64()?,
            rdev: self.u32()?,
            atime: self.time()?,
            mtime: self.time()?,
            ctime: self.time()?,
            crtime: self.time()?,
            hint: if code & HINT_FLAG != 0 {
                Some(crate::fs::tree::NameHint {
                    parent: NodeId(self.u64()?),
                    name: self.name()?,
                })
            } else {
                None
            },
        })
    }

    pub(crate) fn xattrs(&mut self) -> Result<Option<crate::fs::tree::Xattrs>, PersistError> {
        match self.u8()? {
            0 => Ok(None),
            1 => {
                let n = self.count(8)?;
                let mut map = BTreeMap::new();
                for _ in 0..n {
                    let k = self.bytes()?;
                    let v = self.bytes()?;
                    map.insert(k, v);
                }
                Ok(Some(Arc::new(map)))
            }
            _ => Err(corrupt("bad xattr tag")),
        }
    }

    pub(crate) fn node(&mut self, contents: &mut Contents) -> Result<Node, PersistError> {
        let meta = self.meta()?;
        let body = match self.u8()? {
            0 => Body::File {
                content: self.opt_u64()?.map(|c| contents.get(ContentId(c))),
            },
            1 => {
                let parent = NodeId(self.u64()?);
                let n = self.count(12)?;
                let mut entries = imbl::OrdMap::new();
                for _ in 0..n {
                    let name = self.name()?;
                    entries.insert(name, NodeId(self.u64()?));
                }
                Body::Dir {
                    entries,
                    parent,
                    lower: None,
                }
            }
            2 => Body::Symlink(self.bytes()?.into()),
            3 => Body::Special,
            4 => {
                let path: Arc<[u8]> = self.bytes()?.into();
                let allocated = self.u64()?;
                Body::File {
                    content: Some(contents.lower(path, allocated)),
                }
            }
            5 => {
                let parent = NodeId(self.u64()?);
                Body::Dir {
                    entries: imbl::OrdMap::new(),
                    parent,
                    lower: Some(self.bytes()?.into()),
                }
            }
            _ => return Err(corrupt("bad node body tag")),
        };
        Ok(Node {
            meta,
            body,
            xattrs: self.xattrs()?,
        })
    }
}

/// One `Arc<Content>` per content id, shared by every decoded node that
/// names it (as the running FsCore shares them). Contents start frozen;
/// recovery stamps the epochs once every tree is known.
pub(crate) struct Contents {
    pub(crate) map: HashMap<ContentId, Arc<Content>>,
    reaper: Arc<Reaper>,
}

impl Contents {
    pub(crate) fn new(reaper: &Arc<Reaper>) -> Contents {
        Contents {
            map: HashMap::new(),
            reaper: Arc::clone(reaper),
        }
    }

    /// A lower file's content (one per node: they are never written, so
    /// nothing needs them shared).
    pub(crate) fn lower(&self, path: Arc<[u8]>, allocated: u64) -> Arc<Content> {
        Content::lower(path, allocated, &self.reaper)
    }

    pub(crate) fn get(&mut self, id: ContentId) -> Arc<Content> {
        Arc::clone(
            self.map
                .entry(id)
                .or_insert_with(|| Content::new(id, crate::fs::FROZEN_EPOCH, &self.reaper)),
        )
    }
}

#[cfg(test)]
mod crc_tests {
    use super::crc32c;
    use proptest::prelude::*;

    /// CRC-32C one bit at a time, straight from its definition (reflected
    /// polynomial 0x82F63B78, initial and final value all ones).
    fn by_bits(data: &[u8]) -> u32 {
        let mut crc = !0u32;
        for &b in data {
            crc ^= u32::from(b);
            for _ in 0..8 {
                crc = if crc & 1 != 0 {
                    (crc >> 1) ^ 0x82F6_3B78
                } else {
                    crc >> 1
                };
            }
        }
        !crc
    }

    #[test]
    fn it_is_crc32c() {
        // The standard check value of CRC-32C.
        assert_eq!(crc32c(b"123456789"), 0xE306_9283);
        assert_eq!(crc32c(b""), 0);
    }

    proptest! {
        // Journals and checkpoints written by earlier builds (any CPU) stay
        // readable: every length and alignment gives the definition's value.
        #[test]
        fn it_matches_the_definition(data in proptest::collection::vec(any::<u8>(), 0..600), skip in 0usize..8) {
            let data = &data[skip.min(data.len())..];
            prop_assert_eq!(crc32c(data), by_bits(data));
        }
    }
}
