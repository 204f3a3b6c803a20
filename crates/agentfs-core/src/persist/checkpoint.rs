//! The checkpoint: the whole state in one file, written at mount (after
//! recovery) and at clean unmount.
//!
//! Views (snapshots by id, then branches by id) are written one after another,
//! each as the difference from the view before it, compared by node pointer:
//! a snapshot of a 100,000-node tree that changed ten files since the previous
//! one costs ten nodes. Each distinct `Arc<Node>` is written once and referred
//! to by index afterwards, and decoding clones the previous view's tree and
//! applies the difference, so the loaded trees share nodes (and memory) the way
//! the running ones did.

use super::codec::{crc32c, Contents, Dec, Enc};
use super::{BranchRec, NodeIds, PersistError, SnapshotRec, State, FORMAT_VERSION};
use crate::fs::tree::{Node, Tree};
use crate::ids::{BranchId, NodeId, SnapshotId};
use std::collections::HashMap;
use std::sync::Arc;

const MAGIC: &[u8; 8] = b"AGFSCKP\0";
const HEADER_LEN: usize = 8 + 4 + 8 + 8 + 4;

/// Encode `state` as checkpoint generation `gen`.
pub(crate) fn encode(state: &State, gen: u64) -> Vec<u8> {
    let mut enc = Enc::default();
    enc.u64(state.nodes.next);
    enc.u64(state.next_branch);
    enc.u64(state.next_snapshot);
    enc.u32((state.snapshots.len() + state.branches.len()) as u32);
    let mut seen: HashMap<*const Node, u32> = HashMap::new();
    let empty = Tree::default();
    let mut base = &empty;
    for (id, s) in &state.snapshots {
        enc.u8(0);
        enc.u64(id.0);
        enc.str(&s.name);
        enc.u64(s.branch.0);
        enc.time(s.created);
        delta(&mut enc, base, &s.tree, &mut seen);
        base = &s.tree;
    }
    for (id, b) in &state.branches {
        enc.u8(1);
        enc.u64(id.0);
        enc.str(&b.name);
        enc.opt_u64(b.from.map(|s| s.0));
        enc.time(b.created);
        delta(&mut enc, base, &b.tree, &mut seen);
        base = &b.tree;
    }
    let payload = enc.buf;
    let mut out = Vec::with_capacity(HEADER_LEN + payload.len());
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
    out.extend_from_slice(&gen.to_le_bytes());
    out.extend_from_slice(&(payload.len() as u64).to_le_bytes());
    out.extend_from_slice(&crc32c(&payload).to_le_bytes());
    out.extend_from_slice(&payload);
    out
}

fn delta(enc: &mut Enc, base: &Tree, tree: &Tree, seen: &mut HashMap<*const Node, u32>) {
    let removed: Vec<NodeId> = base
        .iter()
        .filter(|(id, _)| tree.get(*id).is_none())
        .map(|(id, _)| id)
        .collect();
    enc.u32(removed.len() as u32);
    for id in removed {
        enc.u64(id.0);
    }
    let at = enc.buf.len();
    enc.u32(0);
    let mut n = 0u32;
    for (id, node) in tree.iter() {
        if base.get(id).is_some_and(|b| Arc::ptr_eq(b, node)) {
            continue;
        }
        enc.u64(id.0);
        let next = seen.len() as u32;
        match seen.get(&Arc::as_ptr(node)) {
            Some(&index) => enc.u32(index),
            None => {
                seen.insert(Arc::as_ptr(node), next);
                enc.u32(next);
                enc.node(node);
            }
        }
        n += 1;
    }
    enc.buf[at..at + 4].copy_from_slice(&n.to_le_bytes());
}

/// Decode a checkpoint: its generation and state.
pub(crate) fn decode(data: &[u8], contents: &mut Contents) -> Result<(u64, State), PersistError> {
    if data.len() < HEADER_LEN || &data[..8] != MAGIC {
        return Err(PersistError::Corrupt(
            "the checkpoint has no valid header".into(),
        ));
    }
    let version = u32::from_le_bytes(data[8..12].try_into().expect("4"));
    if !(super::OLDEST_READ_VERSION..=FORMAT_VERSION).contains(&version) {
        return Err(PersistError::Version {
            found: version,
            supported: FORMAT_VERSION,
        });
    }
    let gen = u64::from_le_bytes(data[12..20].try_into().expect("8"));
    let len = u64::from_le_bytes(data[20..28].try_into().expect("8"));
    let crc = u32::from_le_bytes(data[28..32].try_into().expect("4"));
    let payload = &data[HEADER_LEN..];
    if payload.len() as u64 != len || crc32c(payload) != crc {
        return Err(PersistError::Corrupt(
            "the checkpoint's checksum or length does not match".into(),
        ));
    }
    let mut dec = Dec::new(payload);
    let mut state = State {
        nodes: NodeIds {
            next: dec.u64()?,
            ..NodeIds::default()
        },
        next_branch: dec.u64()?,
        next_snapshot: dec.u64()?,
        ..State::default()
    };
    let views = dec.count(1)?;
    let mut nodes: Vec<Arc<Node>> = Vec::new();
    let mut tree = Tree::default();
    for _ in 0..views {
        let kind = dec.u8()?;
        let id = dec.u64()?;
        let name = dec.str()?;
        let (branch, from) = match kind {
            0 => (BranchId(dec.u64()?), None),
            1 => (BranchId(id), dec.opt_u64()?.map(SnapshotId)),
            _ => return Err(PersistError::Corrupt("bad view kind".into())),
        };
        let created = dec.time()?;
        let removed = dec.count(8)?;
        for _ in 0..removed {
            tree.remove(NodeId(dec.u64()?));
        }
        let puts = dec.count(12)?;
        for _ in 0..puts {
            let nid = NodeId(dec.u64()?);
            state.nodes.saw(nid);
            let index = dec.u32()? as usize;
            let node = match index.cmp(&nodes.len()) {
                std::cmp::Ordering::Less => Arc::clone(&nodes[index]),
                std::cmp::Ordering::Equal => {
                    let n = Arc::new(dec.node(contents)?);
                    nodes.push(Arc::clone(&n));
                    n
                }
                std::cmp::Ordering::Greater => {
                    return Err(PersistError::Corrupt("node index out of order".into()))
                }
            };
            tree.insert_arc(nid, node);
        }
        if kind == 0 {
            state.next_snapshot = state.next_snapshot.max(id);
            state.snapshots.insert(
                SnapshotId(id),
                SnapshotRec {
                    name,
                    branch,
                    created,
                    tree: tree.clone(),
                },
            );
        } else {
            state.next_branch = state.next_branch.max(id);
            state.branches.insert(
                BranchId(id),
                BranchRec {
                    name,
                    from,
                    created,
                    tree: tree.clone(),
                },
            );
        }
    }
    if !dec.done() {
        return Err(PersistError::Corrupt(
            "trailing bytes in the checkpoint".into(),
        ));
    }
    Ok((gen, state))
}
