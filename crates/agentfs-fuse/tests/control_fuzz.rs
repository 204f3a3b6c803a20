//! Garbage on a live daemon's control socket: many connections, from several
//! threads at once, send random bytes, mutated requests, lying and oversized
//! length prefixes, frames cut short, and more connections than the server
//! serves at once. Throughout, the mount keeps answering file operations and
//! `status`; afterwards the daemon is alive, answers, and has as many
//! descriptors and threads as before (nothing leaked per connection).
//!
//! The decoder itself is fuzzed far harder, without a mount, in
//! `crates/agentfs-control/tests/fuzz.rs`. Connections here:
//! `AGENTFS_LIVE_FUZZ_CONNECTIONS` (default 5,000); the test prints how many
//! it made and how they were answered.
//!
//! The mutated requests start from commands that cannot change anything
//! (lists, status, deletes and binds of names and pids that do not exist),
//! because the test connects as the mount owner: a mutation must not be able
//! to delete the branch the checker is using.

mod common;

use common::*;
use serde_json::{json, Value};
use std::fs;
use std::io::{Read, Write};
use std::net::Shutdown;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::Duration;

/// xorshift64*: a small deterministic generator; the seed is printed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }
}

fn harmless_requests() -> Vec<Value> {
    vec![
        json!({"version": 1, "command": {"op": "status"}}),
        json!({"version": 1, "command": {"op": "snapshot-list"}}),
        json!({"version": 1, "command": {"op": "branch-list"}}),
        json!({"version": 1, "command": {"op": "snapshot-delete", "snapshot": "nope-zz9"}}),
        json!({"version": 1, "command": {"op": "branch-delete", "branch": "nope-zz9", "force": true}}),
        json!({"version": 1, "command": {"op": "branch-bind", "branch": "nope-zz9", "pid": 3_999_999_999u32}}),
        json!({"version": 1, "command": {"op": "branch-unbind", "pid": 3_999_999_999u32}}),
        json!({"version": 1, "command": {"op": "branch-commit", "branch": "nope-zz9"}}),
    ]
}

fn frame(body: &[u8]) -> Vec<u8> {
    let mut f = (body.len() as u32).to_be_bytes().to_vec();
    f.extend_from_slice(body);
    f
}

/// One connection's worth of hostile bytes.
fn garbage(rng: &mut Rng, templates: &[Vec<u8>]) -> Vec<u8> {
    let mut out = Vec::new();
    for _ in 0..1 + rng.below(3) {
        match rng.below(7) {
            0 => {
                let n = rng.below(300);
                out.extend(rng.bytes(n));
            }
            1 | 2 => {
                // A harmless request with a few bytes flipped, inserted or cut.
                let mut body = templates[rng.below(templates.len())].clone();
                for _ in 0..rng.below(4) {
                    let i = rng.below(body.len().max(1));
                    match rng.below(3) {
                        0 if i < body.len() => body[i] = rng.next() as u8,
                        1 => body.insert(i.min(body.len()), rng.next() as u8),
                        _ => body.truncate(i),
                    }
                }
                out.extend(frame(&body));
            }
            3 => {
                // An oversized length prefix, then some bytes.
                let len = (1u32 << 20) + 1 + (rng.next() as u32 % (u32::MAX - (1 << 20) - 1));
                out.extend(len.to_be_bytes());
                let n = rng.below(64);
                out.extend(rng.bytes(n));
            }
            4 => {
                // A prefix that promises more than follows.
                let body = &templates[rng.below(templates.len())];
                let mut f = ((body.len() + 1 + rng.below(100)) as u32)
                    .to_be_bytes()
                    .to_vec();
                f.extend_from_slice(body);
                out.extend(f);
            }
            5 => {
                // Valid framing, random JSON-ish body, invalid UTF-8 included.
                let mut body = br#"{"version": 1, "command": {"op": ""#.to_vec();
                let n = rng.below(20);
                body.extend(rng.bytes(n));
                body.extend_from_slice(br#""}}"#);
                out.extend(frame(&body));
            }
            _ => {
                // A good request: the connection must still be in step.
                out.extend(frame(&templates[rng.below(templates.len())]));
            }
        }
    }
    out
}

#[derive(Default)]
struct Tally {
    connections: AtomicU64,
    ok: AtomicU64,
    errors: AtomicU64,
    busy: AtomicU64,
}

/// Send `bytes` on a fresh connection, close the write side, and read every
/// answer until the server closes. Every answer must be a framed response.
fn one_connection(socket: &Path, bytes: &[u8], tally: &Tally) {
    let mut s = UnixStream::connect(socket).expect("the daemon accepts connections");
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    s.set_write_timeout(Some(Duration::from_secs(60))).unwrap();
    tally.connections.fetch_add(1, Ordering::Relaxed);
    // The server may close first (after an oversized prefix): that is fine.
    let _ = s.write_all(bytes);
    let _ = s.shutdown(Shutdown::Write);
    loop {
        let mut header = [0u8; 4];
        match s.read_exact(&mut header) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return,
            // Reset by a server that closed with unread input.
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return,
            Err(e) => panic!("reading an answer failed (a hang?): {e}"),
        }
        let len = u32::from_be_bytes(header) as usize;
        assert!(len <= 1 << 20, "answer of {len} bytes");
        let mut body = vec![0u8; len];
        s.read_exact(&mut body).expect("a whole answer");
        let v: Value = serde_json::from_slice(&body).expect("answers are JSON");
        if v.get("ok").is_some() {
            tally.ok.fetch_add(1, Ordering::Relaxed);
        } else {
            let kind = v["err"]["kind"].as_str().expect("an error has a kind");
            assert!(
                !v["err"]["message"].as_str().unwrap_or("").is_empty(),
                "error without a message: {v}"
            );
            assert!(
                ["bad-message", "unsupported-version", "not-found", "busy"].contains(&kind),
                "unexpected answer to garbage: {v}"
            );
            if kind == "busy" {
                tally.busy.fetch_add(1, Ordering::Relaxed);
            }
            tally.errors.fetch_add(1, Ordering::Relaxed);
        }
    }
}

fn socket_of(m: &Mount) -> PathBuf {
    let text = fs::read_to_string(m.join(".agentfs/control")).unwrap();
    let v: Value = serde_json::from_str(&text).unwrap();
    PathBuf::from(v["socket"].as_str().unwrap())
}

fn fd_count(pid: u32) -> usize {
    fs::read_dir(format!("/proc/{pid}/fd")).unwrap().count()
}

/// The daemon's threads: (control-connection threads, all others). The
/// control server keeps up to `IDLE_THREADS` connection threads waiting for
/// the next connection, so those are counted apart.
fn thread_counts(pid: u32) -> (usize, usize) {
    let (mut control, mut other) = (0, 0);
    for task in fs::read_dir(format!("/proc/{pid}/task")).unwrap() {
        // A thread that ended since the listing has no comm any more.
        let Ok(comm) = fs::read_to_string(task.unwrap().path().join("comm")) else {
            continue;
        };
        if comm.starts_with("agentfs-ctl-con") {
            control += 1;
        } else {
            other += 1;
        }
    }
    (control, other)
}

#[test]
fn garbage_on_many_connections_never_stops_the_daemon_or_the_mount() {
    let m = mount_or_skip!();
    let socket = socket_of(&m);
    let pid = m.daemon_pid();
    fs::write(m.join("alive.txt"), "0").unwrap();
    m.status();
    let (fds_before, (_, threads_before)) = (fd_count(pid), thread_counts(pid));

    let total: u64 = std::env::var("AGENTFS_LIVE_FUZZ_CONNECTIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5000);
    let seed = 0x5eed_0000_0000_0001u64
        ^ std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs();
    println!("live control fuzz: seed {seed:#x}, {total} connections");
    let templates: Arc<Vec<Vec<u8>>> = Arc::new(
        harmless_requests()
            .iter()
            .map(|r| serde_json::to_vec(r).unwrap())
            .collect(),
    );
    let tally = Arc::new(Tally::default());
    let done = Arc::new(AtomicBool::new(false));

    // The mount keeps answering while the storm goes on.
    let checker = {
        let (root, done) = (m.path().to_path_buf(), Arc::clone(&done));
        thread::spawn(move || {
            let mut rounds = 0u64;
            while !done.load(Ordering::Relaxed) || rounds == 0 {
                let path = root.join("alive.txt");
                fs::write(&path, rounds.to_string()).expect("write during the storm");
                assert_eq!(fs::read_to_string(&path).unwrap(), rounds.to_string());
                assert!(fs::read_dir(&root).unwrap().count() >= 1);
                rounds += 1;
                thread::sleep(Duration::from_millis(5));
            }
            rounds
        })
    };
    let workers: Vec<_> = (0..8u64)
        .map(|w| {
            let (socket, templates, tally) =
                (socket.clone(), Arc::clone(&templates), Arc::clone(&tally));
            thread::spawn(move || {
                let mut rng = Rng(seed.wrapping_add(w.wrapping_mul(0x9e37_79b9_7f4a_7c15)) | 1);
                for _ in (w..total).step_by(8) {
                    let bytes = garbage(&mut rng, &templates);
                    one_connection(&socket, &bytes, &tally);
                }
            })
        })
        .collect();
    for w in workers {
        w.join().expect("a fuzz worker failed");
    }

    // More connections at once than the server serves: the excess is told
    // `busy` and closed, the rest are served, nothing hangs.
    let idle: Vec<UnixStream> = (0..100)
        .map(|_| UnixStream::connect(&socket).expect("connect"))
        .collect();
    let mut extra = UnixStream::connect(&socket).unwrap();
    extra
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let mut header = [0u8; 4];
    extra
        .read_exact(&mut header)
        .expect("a connection over the cap is answered at once");
    let mut body = vec![0u8; u32::from_be_bytes(header) as usize];
    extra.read_exact(&mut body).unwrap();
    let busy: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(busy["err"]["kind"], "busy", "{busy}");
    drop(extra);
    drop(idle);

    done.store(true, Ordering::Relaxed);
    let rounds = checker.join().expect("the mount stopped answering");
    let t = &tally;
    println!(
        "live control fuzz: {} connections, {} ok answers, {} error answers ({} busy); {rounds} file checks meanwhile",
        t.connections.load(Ordering::Relaxed),
        t.ok.load(Ordering::Relaxed),
        t.errors.load(Ordering::Relaxed),
        t.busy.load(Ordering::Relaxed),
    );
    assert_eq!(t.connections.load(Ordering::Relaxed), total);
    assert!(
        t.errors.load(Ordering::Relaxed) > total / 4,
        "few errors: is it fuzzing?"
    );

    // Still alive, still answering, nothing leaked per connection.
    assert!(
        Path::new(&format!("/proc/{pid}")).exists(),
        "the daemon died"
    );
    let status = m.status();
    assert_eq!(
        status["snapshots"], 0,
        "a harmless mutation changed state: {status}"
    );
    assert_eq!(status["branches"].as_array().unwrap().len(), 1);
    fs::write(m.join("after.txt"), "after").unwrap();
    assert_eq!(fs::read_to_string(m.join("after.txt")).unwrap(), "after");
    // No connection is open now: at most IDLE_THREADS control threads wait.
    let settled = wait_until(Duration::from_secs(30), || {
        let (control, other) = thread_counts(pid);
        fd_count(pid) <= fds_before + 2
            && other <= threads_before + 2
            && control <= agentfs_control::server::IDLE_THREADS
    });
    assert!(
        settled,
        "descriptors {} -> {}, threads other than control connections {} -> {:?} (control, other) after the storm",
        fds_before,
        fd_count(pid),
        threads_before,
        thread_counts(pid)
    );
}
