//! One operation that panics inside FsCore's worker fails alone: it answers
//! EIO and every operation after it succeeds, on the same mount.

mod common;

use common::*;
use std::ffi::CString;
use std::fs;

/// getxattr(2) of `name` on `path`: Ok(value length) or Err(errno).
fn getxattr(path: &std::path::Path, name: &str) -> Result<usize, i32> {
    let (p, n) = (cpath(path), CString::new(name).unwrap());
    let mut buf = [0u8; 64];
    // SAFETY: both strings are NUL-terminated and live across the call; buf is writable for its length.
    let r = unsafe { libc::getxattr(p.as_ptr(), n.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    if r < 0 {
        Err(errno())
    } else {
        Ok(r as usize)
    }
}

#[test]
fn a_panicking_operation_answers_eio_and_the_mount_keeps_serving() {
    panic_fails_alone(&["--fault-injection", "--inline-meta", "off"]);
}

#[test]
fn a_panicking_operation_answered_on_the_fuse_thread_fails_alone_too() {
    panic_fails_alone(&["--fault-injection", "--inline-meta", "on"]);
}

fn panic_fails_alone(flags: &[&str]) {
    let Some(m) = Mount::start_with(flags) else {
        return;
    };
    let file = m.join("f");
    fs::write(&file, b"before").unwrap();
    let set = |name: &str, value: &[u8]| {
        let (p, n) = (cpath(&file), CString::new(name).unwrap());
        // SAFETY: NUL-terminated strings and a readable value buffer that outlive the call.
        let r = unsafe {
            libc::setxattr(
                p.as_ptr(),
                n.as_ptr(),
                value.as_ptr().cast(),
                value.len(),
                0,
            )
        };
        assert_eq!(r, 0, "setxattr {name}: errno {}", errno());
    };
    set("user.ok", b"12345");
    for round in 0..3 {
        assert_eq!(
            getxattr(&file, "user.agentfs.fault.panic"),
            Err(libc::EIO),
            "round {round}: the injected panic must surface as EIO"
        );
        // The very next operations, of the same kind and others, work.
        assert_eq!(getxattr(&file, "user.ok"), Ok(5), "round {round}");
        assert_eq!(fs::read(&file).unwrap(), b"before");
        fs::write(m.join(&format!("after-{round}")), b"x").unwrap();
    }
    let names: Vec<_> = fs::read_dir(m.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names.len(), 4, "{names:?}");
    assert!(
        m.daemon_stderr().contains("fault injection"),
        "the panic is logged"
    );
}
