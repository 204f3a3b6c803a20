//! A commit into a work branch (a branch of a branch), read back at once
//! through `.agentfs/branches/<work>/`, the way the crash loop's workload does
//! (`scripts/crash/workload.py`): every name listed, every file read, every
//! size checked, right after `branch-commit` answers, while the kernel was
//! holding the work view's names, negative names and attributes (60 s TTL)
//! and, through the transport, file pages. Episodes vary what the child does
//! (overwrite to another length, unlink, create in the root and in
//! subdirectories, a new directory, nothing at all), what the parent does
//! meanwhile (nothing: the fast path; rewrites and an unlink: the merge), and
//! whether the child is deleted with the commit.
//!
//! This is the read-back the crash loop once reported as failing on the live
//! mount (specs/persistence.md): that was the kill -9 aimed at the commit
//! landing during the read-back, whose directory walk then took "cannot list"
//! for "empty". This test keeps the product side of it covered on both data
//! paths (`AGENTFS_PASSTHROUGH=off` for the transport), without a kill.

mod common;

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

/// Deterministic pseudo-random numbers (xorshift64*), so a failure names
/// a reproducible episode.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    fn bytes(&mut self, max: u64) -> Vec<u8> {
        let len = self.below(max + 1) as usize;
        (0..len).map(|_| self.next() as u8).collect()
    }
}

/// {relative path: bytes} of every regular file under `root` (skipping
/// `.agentfs` at the top); any error listing or reading fails the test.
fn scan(root: &Path) -> BTreeMap<String, Vec<u8>> {
    let mut out = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let entries = fs::read_dir(&dir).unwrap_or_else(|e| panic!("list {}: {e}", dir.display()));
        for e in entries {
            let e = e.unwrap_or_else(|err| panic!("list {}: {err}", dir.display()));
            let path = e.path();
            if dir == root && e.file_name() == ".agentfs" {
                continue;
            }
            let kind = e.file_type().unwrap();
            if kind.is_dir() {
                stack.push(path);
            } else {
                let data =
                    fs::read(&path).unwrap_or_else(|err| panic!("read {}: {err}", path.display()));
                let size = fs::metadata(&path).unwrap().size();
                assert_eq!(
                    size,
                    data.len() as u64,
                    "{}: st_size and the bytes read differ",
                    path.display()
                );
                let rel = path
                    .strip_prefix(root)
                    .unwrap()
                    .to_string_lossy()
                    .into_owned();
                out.insert(rel, data);
            }
        }
    }
    out
}

fn write(path: &Path, data: &[u8]) {
    let mut f = fs::File::create(path).unwrap_or_else(|e| panic!("create {}: {e}", path.display()));
    f.write_all(data).unwrap();
}

/// A short summary of where two trees differ, for the failure message.
fn differences(got: &BTreeMap<String, Vec<u8>>, want: &BTreeMap<String, Vec<u8>>) -> Vec<String> {
    let mut keys: Vec<&String> = got.keys().chain(want.keys()).collect();
    keys.sort();
    keys.dedup();
    keys.into_iter()
        .filter(|k| got.get(*k) != want.get(*k))
        .map(|k| {
            format!(
                "{k}: got {:?} bytes, want {:?} bytes",
                got.get(k).map(Vec::len),
                want.get(k).map(Vec::len)
            )
        })
        .collect()
}

/// `branch-commit ARGS` (with `--json`). With `--delete` it is refused while
/// the child still has an open handle, and the kernel releases a closed file
/// after close(2) returns: retried then, as a user would.
fn commit(m: &common::Mount, args: &[&str]) -> serde_json::Value {
    let mut json = vec!["--json"];
    json.extend_from_slice(args);
    for _ in 0..100 {
        let out = m.cli(&json);
        if out.status.success() {
            let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
            return common::reply_value(v);
        }
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("open handle"), "{args:?}: {out:?}");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    panic!("{args:?}: the child's handles were never released");
}

#[test]
fn commit_into_a_work_branch_reads_back_at_once_through_its_view() {
    let m = mount_or_skip!();
    let mut rng = Rng(0x5eed_c0ff_ee00_0001);
    // The default branch: files in the root and in three directories.
    let dirs = ["d0", "d1", "d2"];
    for d in dirs {
        fs::create_dir(m.join(d)).unwrap();
    }
    for i in 0..9 {
        let rel = if i < 3 {
            format!("f{i}")
        } else {
            format!("{}/f{i}", dirs[i % 3])
        };
        write(&m.join(&rel), &rng.bytes(20_000));
    }
    // work: a branch of a branch of the default branch.
    m.snapshot("start");
    m.branch("start", "mid");
    m.cli_json(&["snapshot-create", "--name", "mid-snap", "--branch", "mid"]);
    m.branch("mid-snap", "work");
    let work = m.join(".agentfs/branches/work");
    let mut model = scan(&work);
    assert_eq!(
        model.len(),
        9,
        "the work branch starts as the default branch: {model:?}"
    );
    let mut dirs: Vec<String> = dirs.iter().map(|d| d.to_string()).collect();

    for ep in 0..12 {
        // The kernel holds the work view: names, attributes and pages (a full
        // read-back), and "no such name" for each name the child will create.
        assert_eq!(scan(&work), model, "episode {ep}: before the commit");
        let base = model.clone();
        let cb = format!("cb{ep}");
        let child = format!("cw{ep}");
        m.cli_json(&["snapshot-create", "--name", &cb, "--branch", "work"]);
        m.branch(&cb, &child);
        let croot = m.join(&format!(".agentfs/branches/{child}"));
        let names: Vec<String> = base.keys().cloned().collect();
        let pick = |rng: &mut Rng| names[rng.below(names.len() as u64) as usize].clone();

        // The parent's side (none in every third episode: the fast path).
        let mut parent_side = Vec::new();
        if ep % 3 != 0 {
            for _ in 0..2 {
                let rel = pick(&mut rng);
                if parent_side.contains(&rel) || !model.contains_key(&rel) {
                    continue;
                }
                if rng.below(4) == 0 {
                    fs::remove_file(work.join(&rel)).unwrap();
                    model.remove(&rel);
                } else {
                    let data = rng.bytes(30_000);
                    write(&work.join(&rel), &data);
                    model.insert(rel.clone(), data);
                }
                parent_side.push(rel);
            }
        }
        // The child's side, on other paths (nothing at all in episode 4).
        let mut cfiles = base.clone();
        let mut new_dirs = Vec::new();
        if ep != 4 {
            for _ in 0..3 {
                let rel = pick(&mut rng);
                if parent_side.contains(&rel) || !cfiles.contains_key(&rel) {
                    continue;
                }
                if rng.below(4) == 0 {
                    fs::remove_file(croot.join(&rel)).unwrap();
                    cfiles.remove(&rel);
                } else {
                    let data = rng.bytes(30_000);
                    write(&croot.join(&rel), &data);
                    cfiles.insert(rel, data);
                }
            }
            for k in 0..2 {
                let d = &dirs[rng.below(dirs.len() as u64) as usize];
                let rel = format!("{d}/n{ep}-{k}");
                // Looked up in the parent first: a negative entry to forget.
                assert!(!work.join(&rel).exists());
                let data = rng.bytes(30_000);
                write(&croot.join(&rel), &data);
                cfiles.insert(rel, data);
            }
            if ep % 4 == 1 {
                let d = format!("nd{ep}");
                assert!(!work.join(&d).exists());
                fs::create_dir(croot.join(&d)).unwrap();
                let rel = format!("{d}/x");
                let data = rng.bytes(5_000);
                write(&croot.join(&rel), &data);
                cfiles.insert(rel, data);
                new_dirs.push(d);
            }
        }
        // The result: the child's changes over the parent's.
        let mut want = model.clone();
        let mut changed: Vec<&String> = base.keys().chain(cfiles.keys()).collect();
        changed.sort();
        changed.dedup();
        for rel in changed {
            if cfiles.get(rel) == base.get(rel) {
                continue;
            }
            match cfiles.get(rel) {
                Some(data) => {
                    want.insert(rel.clone(), data.clone());
                }
                None => {
                    want.remove(rel);
                }
            }
        }
        let mut args = vec!["branch-commit", child.as_str()];
        if ep % 2 == 1 {
            args.push("--delete");
        }
        let r = commit(&m, &args);
        assert_eq!(r["committed"], true, "episode {ep}: {r}");
        // At once, through the same view: first by path (the names, negative
        // names and attributes the kernel held; a listing would refresh
        // them), then by listing, as the crash loop's workload does.
        let mut paths: Vec<&String> = base
            .keys()
            .chain(cfiles.keys())
            .chain(want.keys())
            .collect();
        paths.sort();
        paths.dedup();
        for rel in paths {
            let path = work.join(rel);
            match (want.get(rel), fs::metadata(&path)) {
                (Some(data), Ok(meta)) => {
                    assert_eq!(
                        meta.size(),
                        data.len() as u64,
                        "episode {ep}: size of {rel}"
                    );
                    let read =
                        fs::read(&path).unwrap_or_else(|e| panic!("episode {ep}: read {rel}: {e}"));
                    assert!(
                        &read == data,
                        "episode {ep}: {rel} read {} bytes, want {} bytes (other contents)",
                        read.len(),
                        data.len()
                    );
                }
                (None, Err(e)) if e.kind() == std::io::ErrorKind::NotFound => {}
                (want, got) => panic!(
                    "episode {ep}: {rel}: want {:?} bytes, stat says {got:?}",
                    want.map(Vec::len)
                ),
            }
        }
        let got = scan(&work);
        assert!(
            got == want,
            "episode {ep} ({}; parent changed {parent_side:?}): the work view read back right after the commit differs: {:?}",
            args.join(" "),
            differences(&got, &want)
        );
        model = want;
        dirs.extend(new_dirs);
    }
}
