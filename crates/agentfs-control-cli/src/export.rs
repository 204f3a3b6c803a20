//! `export`: a branch's changes written onto a host directory, safely.
//!
//! The daemon says what changed (a `diff` of the branch against its branch
//! point, or a given snapshot); the bytes are read through the mount, at
//! `<mount>/.agentfs/branches/<branch>/<path>`, so the CLI still speaks only
//! the control protocol to the daemon and plain files to the kernel.
//!
//! Each change becomes one step, planned before anything is written (what
//! `--dry-run` prints):
//! - a file is written to a temporary file in its target directory, synced,
//!   given its mode, and renamed over the target: a reader sees the old file
//!   or the new one, never a part;
//! - a symlink is made under a temporary name and renamed over the target;
//! - a directory is created (or its mode set);
//! - a deletion removes the path (a directory with what it holds);
//! - a rename renames on the host first, then writes what changed: every
//!   renamed path is first moved aside (deepest first, while the base's
//!   paths still lead to it), then put in place (shallowest first), so
//!   renames that reuse each other's names (`mv b c; mv a b`, a swap) or
//!   leave a deleted directory lose nothing.
//!
//! Deletions go deepest first (together with moving renamed paths aside),
//! creations shallowest first. A path never leaves the target directory:
//! `..` and absolute paths are refused, and so is any step whose parent on
//! the host is a symlink. Modes are kept; owners and times are not (the
//! files belong to whoever runs the export).
//! Directories written into are synced at the end.

use agentfs_control::protocol::path_from_wire;
use anyhow::{bail, Context, Result};
use std::collections::BTreeSet;
use std::ffi::OsStr;
use std::fs;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};

/// What the diff said happened to a path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Added,
    Deleted,
    Modified,
    Renamed,
    TypeChanged,
}

impl Kind {
    /// The diff's word for it (`added`, `type_changed`, ...).
    pub fn parse(word: &str) -> Option<Kind> {
        Some(match word {
            "added" => Kind::Added,
            "deleted" => Kind::Deleted,
            "modified" => Kind::Modified,
            "renamed" => Kind::Renamed,
            "type_changed" | "type-changed" => Kind::TypeChanged,
            _ => return None,
        })
    }
}

/// One changed path of the diff, paths as raw bytes relative to the root.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Item {
    pub kind: Kind,
    pub path: Vec<u8>,
    /// `Renamed`: the old path.
    pub from: Option<Vec<u8>>,
    /// `Modified`, `Renamed`: what changed besides the name (`data`, `mode`, ...).
    pub what: Vec<String>,
}

/// The items of a diff reply's changes (a JSON array of `{change, path, from?}`).
pub fn items_from_json(changes: &serde_json::Value) -> Result<Vec<Item>> {
    let Some(list) = changes.as_array() else {
        bail!("the daemon's diff is not a list of changes");
    };
    list.iter()
        .map(|c| {
            let word = c["change"].as_str().unwrap_or_default();
            let kind = Kind::parse(word)
                .with_context(|| format!("unknown change {word:?} in the daemon's diff"))?;
            let path = c["path"]
                .as_str()
                .context("a change without a path in the daemon's diff")?;
            Ok(Item {
                kind,
                path: path_from_wire(path),
                from: c["from"].as_str().map(path_from_wire),
                what: c["what"]
                    .as_array()
                    .map(|w| {
                        w.iter()
                            .filter_map(|x| x.as_str().map(str::to_owned))
                            .collect()
                    })
                    .unwrap_or_default(),
            })
        })
        .collect()
}

/// One step of an export.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Remove the path (a directory with its contents); nothing if absent.
    Remove(Vec<u8>),
    /// Rename on the host.
    Rename(Vec<u8>, Vec<u8>),
    /// Create the directory (or set its mode).
    Dir(Vec<u8>, u32),
    /// Write the file atomically, with this mode.
    File(Vec<u8>, u32),
    /// Make the symlink (atomically replacing what is there).
    Symlink(Vec<u8>, Vec<u8>),
    /// A FIFO, socket or device: not exported.
    Skip(Vec<u8>, &'static str),
}

impl std::fmt::Display for Step {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let p = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
        match self {
            Step::Remove(x) => write!(f, "delete   {}", p(x)),
            Step::Rename(a, b) => write!(f, "rename   {} -> {}", p(a), p(b)),
            Step::Dir(x, m) => write!(f, "mkdir    {} ({:o})", p(x), m),
            Step::File(x, m) => write!(f, "write    {} ({:o})", p(x), m),
            Step::Symlink(x, t) => write!(f, "symlink  {} -> {}", p(x), p(t)),
            Step::Skip(x, why) => write!(f, "skip     {} ({why})", p(x)),
        }
    }
}

/// `rel` as a path under a root, refusing anything that could leave it.
fn relative(rel: &[u8]) -> Result<PathBuf> {
    let path = Path::new(OsStr::from_bytes(rel));
    if rel.is_empty()
        || path
            .components()
            .any(|c| !matches!(c, Component::Normal(_)))
    {
        bail!(
            "refusing the path {:?}: not a plain relative path",
            String::from_utf8_lossy(rel)
        );
    }
    Ok(path.to_path_buf())
}

fn depth(p: &[u8]) -> usize {
    p.iter().filter(|&&c| c == b'/').count()
}

/// The steps that make `dst` hold the branch's version of every changed
/// path, reading types, modes and link targets from `src` (the branch's
/// root through the mount).
pub fn plan(items: &[Item], src: &Path) -> Result<Vec<Step>> {
    let mut removes: Vec<Vec<u8>> = Vec::new();
    let mut renames: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
    let mut writes: BTreeSet<Vec<u8>> = BTreeSet::new();
    let mut skips: Vec<Step> = Vec::new();
    for item in items {
        if item.path.is_empty() && item.kind == Kind::Modified {
            // The diff names the root by the empty path (its mode, owner or
            // xattrs changed): DIR's own attributes are left as they are.
            skips.push(Step::Skip(
                Vec::new(),
                "the root directory's own attributes",
            ));
            continue;
        }
        relative(&item.path)?;
        match item.kind {
            Kind::Deleted => removes.push(item.path.clone()),
            Kind::TypeChanged => {
                removes.push(item.path.clone());
                writes.insert(item.path.clone());
            }
            Kind::Added | Kind::Modified => {
                writes.insert(item.path.clone());
            }
            Kind::Renamed => {
                let from = item.from.clone().context("a rename without its old path")?;
                relative(&from)?;
                renames.push((from, item.path.clone()));
                // Renamed as it was: the host rename is all it takes.
                if !item.what.is_empty() {
                    writes.insert(item.path.clone());
                }
            }
        }
    }
    // Deepest first, and nothing inside a directory also removed.
    removes.sort_by_key(|p| std::cmp::Reverse(depth(p)));
    removes.dedup();
    let mut steps: Vec<Step> = removes.into_iter().map(Step::Remove).collect();
    // Placed shallowest target first (`apply` first moves every source
    // aside, deepest first): an inner target's directory is then in place.
    renames.sort_by_key(|(_, to)| depth(to));
    steps.extend(renames.into_iter().map(|(a, b)| Step::Rename(a, b)));
    let mut writes: Vec<Vec<u8>> = writes.into_iter().collect();
    writes.sort_by_key(|p| depth(p));
    for path in writes {
        let at = src.join(relative(&path)?);
        let meta = match fs::symlink_metadata(&at) {
            Ok(m) => m,
            // Gone from the branch since the diff: nothing to write.
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e).with_context(|| format!("cannot read {}", at.display())),
        };
        let mode = meta.mode() & 0o7777;
        let ft = meta.file_type();
        steps.push(if ft.is_dir() {
            Step::Dir(path, mode)
        } else if ft.is_file() {
            Step::File(path, mode)
        } else if ft.is_symlink() {
            let target = fs::read_link(&at)
                .with_context(|| format!("cannot read the link {}", at.display()))?;
            Step::Symlink(path, target.into_os_string().into_encoded_bytes())
        } else {
            Step::Skip(path, "not a file, directory or symlink")
        });
    }
    steps.extend(skips);
    Ok(steps)
}

/// `dst/rel`, once every directory between `dst` and it is a real directory
/// (not a symlink that could lead out of `dst`). With `create`, missing
/// directories are made (mode 0755).
fn under(dst: &Path, rel: &[u8], create: bool) -> Result<PathBuf> {
    let rel = relative(rel)?;
    let mut at = dst.to_path_buf();
    let parts: Vec<_> = rel.components().collect();
    for part in &parts[..parts.len().saturating_sub(1)] {
        at.push(part);
        match fs::symlink_metadata(&at) {
            Ok(m) if m.file_type().is_dir() => {}
            Ok(_) => bail!(
                "{} is not a directory (a symlink is never followed out of the target)",
                at.display()
            ),
            Err(e) if e.kind() == io::ErrorKind::NotFound && create => {
                fs::create_dir(&at).with_context(|| format!("cannot create {}", at.display()))?;
            }
            Err(e) => return Err(e).with_context(|| format!("cannot reach {}", at.display())),
        }
    }
    Ok(dst.join(rel))
}

/// A name for a temporary file beside `target`: its first bytes, so it is
/// short enough for NAME_MAX whatever the target's length.
fn temp_beside(target: &Path) -> PathBuf {
    let name = target.file_name().unwrap_or_default().as_bytes();
    let mut tmp = b".".to_vec();
    tmp.extend_from_slice(&name[..name.len().min(64)]);
    tmp.extend_from_slice(format!(".agentfs-export.{}", std::process::id()).as_bytes());
    target.with_file_name(OsStr::from_bytes(&tmp))
}

fn remove_any(path: &Path) -> io::Result<()> {
    match fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_dir() => fs::remove_dir_all(path),
        Ok(_) => fs::remove_file(path),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

/// Copy `from` to `to` by a synced temporary file renamed over it.
fn write_atomically(from: &Path, to: &Path, mode: u32) -> Result<()> {
    let tmp = temp_beside(to);
    let result = (|| -> io::Result<()> {
        let mut src = fs::File::open(from)?;
        let mut out = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&tmp)?;
        io::copy(&mut src, &mut out)?;
        out.set_permissions(fs::Permissions::from_mode(mode))?;
        out.sync_all()?;
        if fs::symlink_metadata(to).is_ok_and(|m| m.file_type().is_dir()) {
            fs::remove_dir_all(to)?;
        }
        fs::rename(&tmp, to)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result.with_context(|| format!("cannot write {}", to.display()))
}

fn symlink_atomically(target: &[u8], to: &Path) -> Result<()> {
    let tmp = temp_beside(to);
    let result = (|| -> io::Result<()> {
        std::os::unix::fs::symlink(OsStr::from_bytes(target), &tmp)?;
        if fs::symlink_metadata(to).is_ok_and(|m| m.file_type().is_dir()) {
            fs::remove_dir_all(to)?;
        }
        fs::rename(&tmp, to)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result.with_context(|| format!("cannot make the symlink {}", to.display()))
}

/// What `steps` will change on the host under `dst`, for the daemon's
/// `lower-detach` (sent before anything is changed): the paths that, with
/// everything below them, get renamed, replaced or deleted, and the
/// directories that only get created or a mode (`touched`: what is below
/// them stays). A path below another in the first list is left out.
pub fn detach_lists(steps: &[Step], dst: &Path) -> (Vec<Vec<u8>>, Vec<Vec<u8>>) {
    let mut whole: BTreeSet<Vec<u8>> = BTreeSet::new();
    let mut touched: BTreeSet<Vec<u8>> = BTreeSet::new();
    for step in steps {
        match step {
            Step::Remove(p) | Step::File(p, _) | Step::Symlink(p, _) => {
                whole.insert(p.clone());
            }
            Step::Rename(from, to) => {
                whole.insert(from.clone());
                whole.insert(to.clone());
            }
            Step::Dir(p, _) => {
                let is_dir = relative(p)
                    .ok()
                    .and_then(|rel| fs::symlink_metadata(dst.join(rel)).ok())
                    .is_some_and(|m| m.file_type().is_dir());
                if is_dir {
                    touched.insert(p.clone());
                } else {
                    whole.insert(p.clone());
                }
            }
            Step::Skip(..) => {}
        }
    }
    let covered = |p: &[u8], set: &BTreeSet<Vec<u8>>, strict: bool| {
        set.iter().any(|q| {
            (q.len() < p.len() && p.starts_with(q) && p[q.len()] == b'/')
                || (!strict && q[..] == *p)
        })
    };
    let paths: Vec<Vec<u8>> = whole
        .iter()
        .filter(|p| !covered(p, &whole, true))
        .cloned()
        .collect();
    let touched = touched
        .into_iter()
        .filter(|p| !covered(p, &whole, false))
        .collect();
    (paths, touched)
}

/// What an export did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Summary {
    pub written: usize,
    pub removed: usize,
    pub renamed: usize,
    pub dirs: usize,
    pub symlinks: usize,
    pub skipped: usize,
}

/// Carry out `steps`, reading from `src`, writing under `dst`.
pub fn apply(steps: &[Step], src: &Path, dst: &Path) -> Result<Summary> {
    let mut sum = Summary::default();
    let mut touched: BTreeSet<PathBuf> = BTreeSet::new();
    let mut note = |p: &Path| {
        if let Some(parent) = p.parent() {
            touched.insert(parent.to_path_buf());
        }
    };
    // Deletions are done and every rename's source is moved aside first,
    // deepest first, while all old paths (the base's) still lead to what
    // they name: a rename's target may be another rename's source (`mv b c;
    // mv a b`, a swap), a deleted directory may have held a renamed file
    // (`mv d/f f; rm -r d`), a deleted file may be in a renamed directory
    // (`rm d/x; mv d e`), and an inner rename names its directory's old place.
    let mut aside: Vec<(usize, PathBuf, PathBuf)> = Vec::new();
    let mut early: Vec<(usize, usize, &Vec<u8>)> = steps
        .iter()
        .enumerate()
        .filter_map(|(i, s)| match s {
            Step::Rename(from, _) => Some((depth(from), i, from)),
            Step::Remove(rel) => Some((depth(rel), i, rel)),
            _ => None,
        })
        .collect();
    early.sort_by_key(|&(d, i, _)| (std::cmp::Reverse(d), i));
    for (_, i, rel) in early {
        // A parent already gone means the path is gone too.
        let Ok(a) = under(dst, rel, false) else {
            continue;
        };
        if matches!(steps[i], Step::Remove(_)) {
            remove_any(&a).with_context(|| format!("cannot delete {}", a.display()))?;
            note(&a);
            sum.removed += 1;
            continue;
        }
        if fs::symlink_metadata(&a).is_ok() {
            let tmp = dst.join(format!(".agentfs-export.{}.rename{i}", std::process::id()));
            if let Err(e) = fs::rename(&a, &tmp) {
                // Put back what was moved aside.
                for (_, tmp, from) in aside.iter().rev() {
                    let _ = fs::rename(tmp, from);
                }
                return Err(e).with_context(|| {
                    format!("cannot move {} aside to {}", a.display(), tmp.display())
                });
            }
            aside.push((i, tmp, a));
        }
    }
    for (i, step) in steps.iter().enumerate() {
        match step {
            // Done above, with the renames' sources.
            Step::Remove(_) => {}
            Step::Rename(from, to) => {
                if let Some((_, a, _)) = aside.iter().find(|(j, _, _)| *j == i) {
                    let b = under(dst, to, true)?;
                    remove_any(&b).with_context(|| format!("cannot replace {}", b.display()))?;
                    fs::rename(a, &b).with_context(|| {
                        format!("cannot rename {} to {}", a.display(), b.display())
                    })?;
                    note(a);
                    note(&dst.join(relative(from)?));
                    note(&b);
                    sum.renamed += 1;
                }
            }
            Step::Dir(rel, mode) => {
                let at = under(dst, rel, true)?;
                match fs::symlink_metadata(&at) {
                    Ok(m) if m.file_type().is_dir() => {}
                    Ok(_) => {
                        fs::remove_file(&at)?;
                        fs::create_dir(&at)?;
                    }
                    Err(_) => fs::create_dir(&at)
                        .with_context(|| format!("cannot create {}", at.display()))?,
                }
                fs::set_permissions(&at, fs::Permissions::from_mode(*mode))?;
                note(&at);
                sum.dirs += 1;
            }
            Step::File(rel, mode) => {
                let at = under(dst, rel, true)?;
                write_atomically(&src.join(relative(rel)?), &at, *mode)?;
                note(&at);
                sum.written += 1;
            }
            Step::Symlink(rel, target) => {
                let at = under(dst, rel, true)?;
                symlink_atomically(target, &at)?;
                note(&at);
                sum.symlinks += 1;
            }
            Step::Skip(..) => sum.skipped += 1,
        }
    }
    // The renames and removals themselves durable: sync each directory changed.
    for dir in touched {
        if let Ok(d) = fs::File::open(&dir) {
            let _ = d.sync_all();
        }
    }
    Ok(sum)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(kind: Kind, path: &str) -> Item {
        Item {
            kind,
            path: path.as_bytes().to_vec(),
            from: None,
            what: Vec::new(),
        }
    }

    #[test]
    fn escapes_are_undone() {
        assert_eq!(path_from_wire("a/b.rs"), b"a/b.rs");
        assert_eq!(path_from_wire("x\\\\y"), b"x\\y");
        assert_eq!(path_from_wire("bad\\xff\\x00end"), b"bad\xff\x00end");
        assert_eq!(path_from_wire("trail\\"), b"trail\\");
    }

    #[test]
    fn paths_that_leave_the_target_are_refused() {
        let src = tempfile::tempdir().unwrap();
        for bad in ["../x", "/etc/passwd", "a/../../b", ""] {
            assert!(
                plan(&[item(Kind::Added, bad)], src.path()).is_err(),
                "{bad}"
            );
        }
    }

    #[test]
    fn plan_and_apply_mirror_the_branch() {
        let src = tempfile::tempdir().unwrap();
        let dst = tempfile::tempdir().unwrap();
        let (s, d) = (src.path(), dst.path());
        // The host as of the base.
        fs::create_dir_all(d.join("old-dir/inner")).unwrap();
        fs::write(d.join("old-dir/inner/f"), "x").unwrap();
        fs::write(d.join("gone"), "x").unwrap();
        fs::write(d.join("keep"), "same").unwrap();
        fs::write(d.join("edit"), "before").unwrap();
        fs::write(d.join("was-file"), "x").unwrap();
        fs::write(d.join("moved-from"), "m").unwrap();
        fs::write(d.join("edited-from"), "old").unwrap();
        // The branch.
        fs::create_dir_all(s.join("new-dir/sub")).unwrap();
        fs::write(s.join("new-dir/sub/n"), "new").unwrap();
        fs::write(s.join("edit"), "after").unwrap();
        fs::set_permissions(s.join("edit"), fs::Permissions::from_mode(0o755)).unwrap();
        std::os::unix::fs::symlink("edit", s.join("link")).unwrap();
        fs::create_dir(s.join("was-file")).unwrap();
        fs::write(s.join("moved-to"), "m").unwrap();
        fs::write(s.join("edited-to"), "new").unwrap();
        let items = vec![
            item(Kind::Deleted, "old-dir"),
            item(Kind::Deleted, "gone"),
            item(Kind::Added, "new-dir"),
            item(Kind::Added, "new-dir/sub"),
            item(Kind::Added, "new-dir/sub/n"),
            item(Kind::Modified, "edit"),
            item(Kind::Added, "link"),
            item(Kind::TypeChanged, "was-file"),
            Item {
                kind: Kind::Renamed,
                path: b"moved-to".to_vec(),
                from: Some(b"moved-from".to_vec()),
                what: Vec::new(),
            },
            Item {
                kind: Kind::Renamed,
                path: b"edited-to".to_vec(),
                from: Some(b"edited-from".to_vec()),
                what: vec!["data".into()],
            },
        ];
        let steps = plan(&items, s).unwrap();
        // A dry run is the plan: nothing written yet.
        assert!(d.join("gone").exists() && !d.join("new-dir").exists());
        let sum = apply(&steps, s, d).unwrap();
        assert_eq!(sum.renamed, 2, "{steps:?}");
        // Renamed and changed: renamed, then written; renamed only: not written.
        assert_eq!(fs::read_to_string(d.join("edited-to")).unwrap(), "new");
        assert!(!d.join("edited-from").exists());
        assert!(!steps.contains(&Step::File(b"moved-to".to_vec(), 0o644)));
        assert!(!d.join("old-dir").exists() && !d.join("gone").exists());
        assert_eq!(fs::read_to_string(d.join("new-dir/sub/n")).unwrap(), "new");
        assert_eq!(fs::read_to_string(d.join("edit")).unwrap(), "after");
        let mode = fs::metadata(d.join("edit")).unwrap().mode() & 0o7777;
        assert_eq!(mode, 0o755);
        assert_eq!(fs::read_link(d.join("link")).unwrap(), Path::new("edit"));
        assert!(d.join("was-file").is_dir());
        assert!(!d.join("moved-from").exists());
        assert_eq!(fs::read_to_string(d.join("moved-to")).unwrap(), "m");
        assert_eq!(fs::read_to_string(d.join("keep")).unwrap(), "same");
        // No temporary file left behind.
        let leftovers: Vec<_> = fs::read_dir(d)
            .unwrap()
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().contains("agentfs-export"))
            .collect();
        assert!(leftovers.is_empty());
    }

    fn renamed(from: &str, to: &str) -> Item {
        Item {
            kind: Kind::Renamed,
            path: to.as_bytes().to_vec(),
            from: Some(from.as_bytes().to_vec()),
            what: Vec::new(),
        }
    }

    /// Review of issue 6: renames are applied one by one in the diff's path
    /// order, each removing what its target names first, so a rename whose
    /// target is another rename's source destroys that source.
    #[test]
    fn review_renames_that_reuse_each_others_names_lose_nothing() {
        // `mv b c; mv a b` (diff order: b from a, c from b) and a swap.
        for (host, items, want) in [
            (
                vec![("a", "A"), ("b", "B")],
                vec![renamed("a", "b"), renamed("b", "c")],
                vec![("b", "A"), ("c", "B")],
            ),
            (
                vec![("a", "A"), ("b", "B")],
                vec![renamed("b", "a"), renamed("a", "b")],
                vec![("a", "B"), ("b", "A")],
            ),
        ] {
            let src = tempfile::tempdir().unwrap();
            let dst = tempfile::tempdir().unwrap();
            for (name, body) in &host {
                fs::write(dst.path().join(name), body).unwrap();
            }
            for (name, body) in &want {
                fs::write(src.path().join(name), body).unwrap();
            }
            let steps = plan(&items, src.path()).unwrap();
            apply(&steps, src.path(), dst.path()).unwrap();
            let mut got: Vec<(String, String)> = fs::read_dir(dst.path())
                .unwrap()
                .map(|e| e.unwrap().path())
                .map(|p| {
                    let name = p.file_name().unwrap().to_string_lossy().into_owned();
                    (name, fs::read_to_string(&p).unwrap())
                })
                .collect();
            got.sort();
            let want: Vec<(String, String)> = want
                .iter()
                .map(|(a, b)| (a.to_string(), b.to_string()))
                .collect();
            assert_eq!(got, want, "{steps:?}");
        }
    }

    /// Review of issue 6: `mv d/f f; rm -r d` is a deletion of `d` and a
    /// rename of `d/f`; deletions went first and took the renamed file with
    /// them.
    #[test]
    fn review_a_file_moved_out_of_a_deleted_directory_is_kept() {
        let src = tempfile::tempdir().unwrap();
        let dst = tempfile::tempdir().unwrap();
        fs::create_dir(dst.path().join("d")).unwrap();
        fs::write(dst.path().join("d/f"), "F").unwrap();
        fs::write(dst.path().join("d/g"), "G").unwrap();
        fs::write(src.path().join("f"), "F").unwrap();
        let items = vec![
            item(Kind::Deleted, "d"),
            item(Kind::Deleted, "d/g"),
            renamed("d/f", "f"),
        ];
        let steps = plan(&items, src.path()).unwrap();
        apply(&steps, src.path(), dst.path()).unwrap();
        assert!(!dst.path().join("d").exists());
        assert_eq!(fs::read_to_string(dst.path().join("f")).unwrap(), "F");
    }

    /// Review of issue 6: a rename's old path is its path in the base, so a
    /// file renamed inside a renamed directory names the directory's old
    /// place, which the outer rename already moved away.
    #[test]
    fn review_a_rename_inside_a_renamed_directory_is_applied() {
        let src = tempfile::tempdir().unwrap();
        let dst = tempfile::tempdir().unwrap();
        fs::create_dir(dst.path().join("d")).unwrap();
        fs::write(dst.path().join("d/f"), "F").unwrap();
        fs::create_dir(src.path().join("e")).unwrap();
        fs::write(src.path().join("e/g"), "F").unwrap();
        let items = vec![renamed("d", "e"), renamed("d/f", "e/g")];
        let steps = plan(&items, src.path()).unwrap();
        apply(&steps, src.path(), dst.path()).unwrap();
        assert!(!dst.path().join("d").exists());
        assert!(!dst.path().join("e/f").exists());
        assert_eq!(fs::read_to_string(dst.path().join("e/g")).unwrap(), "F");
    }

    /// Review of issue 6: the diff names the root by the empty path when its
    /// mode, owner or xattrs changed; that refused the whole export.
    #[test]
    fn review_a_change_of_the_root_itself_is_skipped_not_refused() {
        let src = tempfile::tempdir().unwrap();
        fs::write(src.path().join("b"), "B").unwrap();
        let items = vec![item(Kind::Modified, ""), item(Kind::Added, "b")];
        let steps = plan(&items, src.path()).unwrap();
        assert!(
            steps
                .iter()
                .any(|s| matches!(s, Step::File(p, _) if p == b"b")),
            "{steps:?}"
        );
        assert!(matches!(steps.last(), Some(Step::Skip(p, _)) if p.is_empty()));
        // Only a modification of the root: deletions or additions of "" stay refused.
        assert!(plan(&[item(Kind::Deleted, "")], src.path()).is_err());
    }

    /// Review of issue 6: `rm d/x; mv d e` is a deletion of `d/x` (its path in
    /// the base) and a rename of `d`: the deletion must reach `x` wherever the
    /// rename's source is then.
    #[test]
    fn review_a_file_deleted_in_a_renamed_directory_stays_deleted() {
        let src = tempfile::tempdir().unwrap();
        let dst = tempfile::tempdir().unwrap();
        fs::create_dir(dst.path().join("d")).unwrap();
        fs::write(dst.path().join("d/x"), "X").unwrap();
        fs::write(dst.path().join("d/y"), "Y").unwrap();
        fs::create_dir(src.path().join("e")).unwrap();
        fs::write(src.path().join("e/y"), "Y").unwrap();
        let items = vec![item(Kind::Deleted, "d/x"), renamed("d", "e")];
        let steps = plan(&items, src.path()).unwrap();
        apply(&steps, src.path(), dst.path()).unwrap();
        assert!(!dst.path().join("d").exists());
        assert_eq!(fs::read_to_string(dst.path().join("e/y")).unwrap(), "Y");
        assert!(!dst.path().join("e/x").exists(), "{steps:?}");
    }

    /// Review of issue 6: the temporary file is named after the target, so
    /// a target name near NAME_MAX (255 bytes) made a temporary name too
    /// long to create (ENAMETOOLONG) and the export failed.
    #[test]
    fn review_a_name_of_255_bytes_is_exported() {
        let src = tempfile::tempdir().unwrap();
        let dst = tempfile::tempdir().unwrap();
        let name = "n".repeat(255);
        fs::write(src.path().join(&name), "N").unwrap();
        std::os::unix::fs::symlink("target", src.path().join(format!("{}l", &name[1..]))).unwrap();
        let items = vec![
            item(Kind::Added, &name),
            item(Kind::Added, &format!("{}l", &name[1..])),
        ];
        let steps = plan(&items, src.path()).unwrap();
        apply(&steps, src.path(), dst.path()).unwrap();
        assert_eq!(fs::read_to_string(dst.path().join(&name)).unwrap(), "N");
        let link = dst.path().join(format!("{}l", &name[1..]));
        assert_eq!(fs::read_link(link).unwrap(), Path::new("target"));
    }

    /// Renames, replacements and deletions detach their whole subtree (a
    /// path below another is left out); a directory that is already there
    /// and only gets its mode is `touched`; a skipped path is neither.
    #[test]
    fn detach_lists_name_what_the_export_changes() {
        let dst = tempfile::tempdir().unwrap();
        fs::create_dir(dst.path().join("kept")).unwrap();
        fs::write(dst.path().join("was-file"), "x").unwrap();
        let steps = vec![
            Step::Remove(b"d".to_vec()),
            Step::Remove(b"d/x".to_vec()),
            Step::Rename(b"a".to_vec(), b"b".to_vec()),
            Step::File(b"b".to_vec(), 0o644),
            Step::File(b"e/f".to_vec(), 0o644),
            Step::Symlink(b"l".to_vec(), b"t".to_vec()),
            Step::Dir(b"kept".to_vec(), 0o700),
            Step::Dir(b"was-file".to_vec(), 0o755),
            Step::Dir(b"new".to_vec(), 0o755),
            Step::Dir(b"d".to_vec(), 0o755),
            Step::Skip(b"fifo".to_vec(), "a FIFO"),
        ];
        let (paths, touched) = detach_lists(&steps, dst.path());
        let strs = |v: Vec<Vec<u8>>| -> Vec<String> {
            v.into_iter()
                .map(|p| String::from_utf8(p).unwrap())
                .collect()
        };
        assert_eq!(strs(paths), ["a", "b", "d", "e/f", "l", "new", "was-file"]);
        assert_eq!(strs(touched), ["kept"]);
    }

    #[test]
    fn a_symlinked_parent_on_the_host_is_not_followed() {
        let src = tempfile::tempdir().unwrap();
        let dst = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink(outside.path(), dst.path().join("a")).unwrap();
        fs::create_dir(src.path().join("a")).unwrap();
        fs::write(src.path().join("a/f"), "x").unwrap();
        let steps = plan(&[item(Kind::Added, "a/f")], src.path()).unwrap();
        assert!(apply(&steps, src.path(), dst.path()).is_err());
        assert!(!outside.path().join("f").exists());
    }
}
