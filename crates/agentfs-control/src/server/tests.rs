//! Tests of [`ControlServer`] over real Unix sockets in fresh temp dirs:
//! hostile input, version checks, panics, limits and shutdown.

use super::*;
use crate::client::{self, Client, ClientError};
use crate::endpoint::Endpoint;
use crate::frame::{read_message, write_frame};
use crate::protocol::{BranchView, ErrorKind, PROTOCOL_VERSION};
use std::io::Read;
use std::sync::mpsc;

/// Answers Status with `Deleted { id: "ok" }`, records every peer, panics on
/// `SnapshotDelete { snapshot: "boom" }`, fails `SnapshotDelete` otherwise.
struct Fake {
    peers: Mutex<Vec<PeerCred>>,
    /// The thread that answered each request.
    threads: Mutex<Vec<thread::ThreadId>>,
}

impl ControlHandler for Fake {
    fn handle(&self, peer: &PeerCred, command: Command) -> Result<Reply, ControlError> {
        self.peers.lock().unwrap().push(*peer);
        self.threads.lock().unwrap().push(thread::current().id());
        match command {
            Command::SnapshotDelete { snapshot } if snapshot == "boom" => {
                panic!("the fake handler blew up")
            }
            Command::SnapshotDelete { snapshot } => {
                Err(ControlError::not_found(format!("no snapshot {snapshot:?}")))
            }
            Command::BranchList => Ok(Reply::Branches(vec![BranchView {
                id: "b1".into(),
                name: "main".into(),
                from: None,
                created_unix: 1.5,
                is_default: true,
                open_handles: 0,
                bound_processes: 0,
            }])),
            _ => Ok(Reply::Deleted { id: "ok".into() }),
        }
    }
}

struct Harness {
    _dir: tempfile::TempDir,
    server: ControlServer,
    handler: Arc<Fake>,
    endpoint: Endpoint,
}

fn start(config: ServerConfig) -> Harness {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("control.sock");
    let handler = Arc::new(Fake {
        peers: Mutex::new(Vec::new()),
        threads: Mutex::new(Vec::new()),
    });
    let server = ControlServer::bind_with(&socket, handler.clone(), config).unwrap();
    let endpoint = Endpoint {
        protocol: PROTOCOL_VERSION,
        socket,
        mountpoint: dir.path().to_path_buf(),
    };
    Harness {
        _dir: dir,
        server,
        handler,
        endpoint,
    }
}

fn raw(h: &Harness) -> UnixStream {
    let s = UnixStream::connect(&h.endpoint.socket).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    s
}

fn recv(s: &mut UnixStream) -> Option<Response> {
    read_message::<WireResponse>(s).unwrap().map(Response::from)
}

fn expect_err(s: &mut UnixStream, kind: ErrorKind) -> ControlError {
    match recv(s) {
        Some(Err(e)) if e.kind == kind => e,
        other => panic!("expected a {kind} error, got {other:?}"),
    }
}

/// The server closed this connection: reading yields the end of the stream
/// (a reset when the server closed with our bytes still unread), no more data.
fn expect_closed(s: &mut UnixStream) {
    let mut rest = Vec::new();
    match s.read_to_end(&mut rest) {
        Ok(_) => {}
        Err(e) if e.kind() == io::ErrorKind::ConnectionReset => {}
        Err(e) => panic!("expected the server to close the connection, got {e}"),
    }
    assert!(rest.is_empty(), "unexpected bytes after close: {rest:?}");
}

fn status_works(h: &Harness) {
    let reply = client::call(&h.endpoint, Command::Status).unwrap();
    assert_eq!(reply, Reply::Deleted { id: "ok".into() });
}

#[test]
fn valid_requests_share_a_connection_and_carry_peer_credentials() {
    let h = start(ServerConfig::default());
    let mut c = Client::connect(&h.endpoint).unwrap();
    assert_eq!(
        c.call(Command::Status).unwrap(),
        Reply::Deleted { id: "ok".into() }
    );
    match c.call(Command::BranchList).unwrap() {
        Reply::Branches(b) => assert_eq!(b[0].name, "main"),
        other => panic!("{other:?}"),
    }
    let err = c
        .call(Command::SnapshotDelete {
            snapshot: "s9".into(),
        })
        .unwrap_err();
    match err {
        ClientError::Remote(e) => {
            assert_eq!(e.kind, ErrorKind::NotFound);
            assert_eq!(e.message, "no snapshot \"s9\"");
        }
        other => panic!("{other:?}"),
    }
    let peers = h.handler.peers.lock().unwrap().clone();
    assert_eq!(peers.len(), 3);
    for p in peers {
        assert_eq!(p.pid, std::process::id());
        assert_eq!(p.uid, nix::unistd::getuid().as_raw());
        assert_eq!(p.gid, nix::unistd::getgid().as_raw());
    }
}

#[test]
fn garbage_body_is_bad_message_and_the_connection_keeps_serving() {
    let h = start(ServerConfig::default());
    let mut s = raw(&h);
    write_frame(&mut s, b"\x00\xffthis is not json").unwrap();
    let e = expect_err(&mut s, ErrorKind::BadMessage);
    assert!(e.message.contains("malformed"), "{e}");
    // Valid JSON, unknown op.
    write_frame(&mut s, br#"{"version":1,"command":{"op":"teleport"}}"#).unwrap();
    expect_err(&mut s, ErrorKind::BadMessage);
    // Valid JSON, wrong shape.
    write_frame(&mut s, b"[1,2,3]").unwrap();
    expect_err(&mut s, ErrorKind::BadMessage);
    // The same connection still answers a valid request.
    write_frame(
        &mut s,
        &serde_json::to_vec(&Request::new(Command::Status)).unwrap(),
    )
    .unwrap();
    assert_eq!(recv(&mut s), Some(Ok(Reply::Deleted { id: "ok".into() })));
    status_works(&h);
}

#[test]
fn non_protocol_bytes_are_bad_message_then_closed() {
    let h = start(ServerConfig::default());
    let mut s = raw(&h);
    // "GET " read as a length is far beyond the limit.
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let e = expect_err(&mut s, ErrorKind::BadMessage);
    assert!(e.message.contains("exceeds"), "{e}");
    expect_closed(&mut s);
    status_works(&h);
}

#[test]
fn oversized_length_prefix_is_bad_message_then_closed() {
    let h = start(ServerConfig::default());
    let mut s = raw(&h);
    s.write_all(&((MAX_MESSAGE_BYTES as u32) + 1).to_be_bytes())
        .unwrap();
    expect_err(&mut s, ErrorKind::BadMessage);
    expect_closed(&mut s);
    s = raw(&h);
    s.write_all(&u32::MAX.to_be_bytes()).unwrap();
    expect_err(&mut s, ErrorKind::BadMessage);
    status_works(&h);
}

#[test]
fn truncated_message_is_bad_message_then_closed() {
    let h = start(ServerConfig::default());
    let mut s = raw(&h);
    s.write_all(&100u32.to_be_bytes()).unwrap();
    s.write_all(br#"{"version""#).unwrap();
    s.shutdown(Shutdown::Write).unwrap();
    let e = expect_err(&mut s, ErrorKind::BadMessage);
    assert!(e.message.contains("middle"), "{e}");
    expect_closed(&mut s);
    // A header cut short too.
    let mut s = raw(&h);
    s.write_all(&[0, 0]).unwrap();
    s.shutdown(Shutdown::Write).unwrap();
    expect_err(&mut s, ErrorKind::BadMessage);
    status_works(&h);
}

#[test]
fn other_protocol_version_is_unsupported_naming_both() {
    let h = start(ServerConfig::default());
    let mut s = raw(&h);
    // A newer client with a command this server does not know.
    write_frame(&mut s, br#"{"version":2,"command":{"op":"teleport"}}"#).unwrap();
    let e = expect_err(&mut s, ErrorKind::UnsupportedVersion);
    assert!(e.message.contains("version 2"), "{e}");
    assert!(e.message.contains("version 1"), "{e}");
    write_frame(&mut s, br#"{"version":0,"command":{"op":"status"}}"#).unwrap();
    expect_err(&mut s, ErrorKind::UnsupportedVersion);
    assert!(h.handler.peers.lock().unwrap().is_empty());
}

#[test]
fn handler_panic_is_internal_and_the_server_keeps_serving() {
    let h = start(ServerConfig::default());
    let mut c = Client::connect(&h.endpoint).unwrap();
    let err = c
        .call(Command::SnapshotDelete {
            snapshot: "boom".into(),
        })
        .unwrap_err();
    match err {
        ClientError::Remote(e) => {
            assert_eq!(e.kind, ErrorKind::Internal);
            assert!(e.message.contains("blew up"), "{e}");
            assert!(e.message.contains("snapshot-delete"), "{e}");
        }
        other => panic!("{other:?}"),
    }
    // Same connection, then a new one.
    assert_eq!(
        c.call(Command::Status).unwrap(),
        Reply::Deleted { id: "ok".into() }
    );
    status_works(&h);
}

#[test]
fn connections_beyond_the_cap_are_busy() {
    let h = start(ServerConfig {
        max_connections: 1,
        ..ServerConfig::default()
    });
    let mut first = Client::connect(&h.endpoint).unwrap();
    // Once answered, the first connection is surely admitted and counted.
    first.call(Command::Status).unwrap();
    let mut second = raw(&h);
    expect_err(&mut second, ErrorKind::Busy);
    expect_closed(&mut second);
    drop(first);
    // Wait (bounded) for the first connection's thread to notice the close.
    for _ in 0..3000 {
        if h.server.active_connections() == 0 {
            break;
        }
        thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(h.server.active_connections(), 0);
    status_works(&h);
}

#[test]
fn idle_connections_are_closed_by_the_read_timeout() {
    let h = start(ServerConfig {
        read_timeout: Duration::from_millis(50),
        ..ServerConfig::default()
    });
    let mut s = raw(&h);
    // Send nothing: the server gives up and closes; we see a clean end.
    expect_closed(&mut s);
    // A client stalled in the middle of a message is closed too.
    let mut s = raw(&h);
    s.write_all(&[0, 0, 0, 50, b'{']).unwrap();
    expect_closed(&mut s);
    status_works(&h);
}

#[test]
fn socket_is_world_connectable() {
    let h = start(ServerConfig::default());
    let mode = fs::metadata(&h.endpoint.socket)
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o666);
}

#[test]
fn stale_socket_is_replaced_live_one_and_non_socket_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let handler: Arc<dyn ControlHandler> = Arc::new(|_: &PeerCred, _: Command| {
        Ok::<_, ControlError>(Reply::Deleted { id: "x".into() })
    });

    // Stale: a socket file nobody listens on.
    let socket = dir.path().join("stale.sock");
    drop(UnixListener::bind(&socket).unwrap());
    assert!(socket.exists());
    let server = ControlServer::bind(&socket, handler.clone()).unwrap();

    // Live: refused, and the live server keeps its socket.
    let err = ControlServer::bind(&socket, handler.clone())
        .err()
        .expect("binding over a live server must fail");
    assert_eq!(err.kind(), io::ErrorKind::AddrInUse);
    let endpoint = Endpoint {
        protocol: 1,
        socket: socket.clone(),
        mountpoint: dir.path().into(),
    };
    assert!(client::call(&endpoint, Command::Status).is_ok());
    drop(server);

    // Not a socket: refused and left alone.
    let file = dir.path().join("file");
    fs::write(&file, b"precious").unwrap();
    let err = ControlServer::bind(&file, handler)
        .err()
        .expect("binding over a regular file must fail");
    assert_eq!(err.kind(), io::ErrorKind::AlreadyExists);
    assert_eq!(fs::read(&file).unwrap(), b"precious");
}

#[test]
fn shutdown_closes_connections_and_removes_the_socket() {
    let h = start(ServerConfig::default());
    let mut idle = raw(&h);
    let socket = h.endpoint.socket.clone();
    let (tx, rx) = mpsc::channel();
    let Harness { _dir, server, .. } = h;
    thread::spawn(move || {
        server.shutdown();
        let _ = tx.send(());
    });
    rx.recv_timeout(Duration::from_secs(60))
        .expect("shutdown did not finish");
    assert!(!socket.exists());
    expect_closed(&mut idle);
    assert!(UnixStream::connect(&socket).is_err());
}

/// Wait up to 30 s for `cond`.
fn eventually(what: &str, cond: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting: {what}");
        thread::sleep(Duration::from_millis(1));
    }
}

/// One connection per request, as the CLI makes them: once a connection
/// thread waits, the next connection is served by it, not by a new thread.
#[test]
fn a_thread_whose_connection_ended_serves_the_next_one() {
    let h = start(ServerConfig::default());
    for _ in 0..20 {
        status_works(&h);
        eventually("the connection thread to wait", || {
            h.server.idle_threads() == 1 && h.server.active_connections() == 0
        });
    }
    let threads = h.handler.threads.lock().unwrap().clone();
    assert_eq!(threads.len(), 20);
    assert!(
        threads.iter().all(|t| *t == threads[0]),
        "20 connections, one after another, took {} threads",
        threads
            .iter()
            .collect::<std::collections::HashSet<_>>()
            .len()
    );
}

/// At most IDLE_THREADS wait: of many connections open at once, the rest
/// end with their connection. Stopping ends the waiting ones, which hold
/// the handler (and through it, in the daemon, the whole filesystem).
#[test]
fn waiting_threads_are_bounded_and_end_when_the_server_stops() {
    let h = start(ServerConfig::default());
    let mut open: Vec<UnixStream> = (0..6).map(|_| raw(&h)).collect();
    eventually("six connections served", || {
        h.server.active_connections() == 6
    });
    open.clear();
    eventually("the connections to end", || {
        h.server.active_connections() == 0
    });
    eventually("IDLE_THREADS threads to wait", || {
        h.server.idle_threads() == IDLE_THREADS
    });
    thread::sleep(Duration::from_millis(50));
    assert_eq!(h.server.idle_threads(), IDLE_THREADS);
    let Harness {
        _dir,
        server,
        handler,
        ..
    } = h;
    drop(server);
    eventually("waiting threads to drop the handler", || {
        Arc::strong_count(&handler) == 1
    });
}

#[test]
fn drop_also_stops_the_server() {
    let h = start(ServerConfig::default());
    let socket = h.endpoint.socket.clone();
    let Harness { _dir, server, .. } = h;
    drop(server);
    assert!(!socket.exists());
}
