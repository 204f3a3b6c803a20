//! Fuzzing the control protocol's decoder, without cargo-fuzz: proptest
//! runners feed the frame reader ([`read_frame`]), the request decoder
//! ([`Request::decode`]) and a live [`ControlServer`] with arbitrary bytes,
//! mutated valid requests, truncated frames, wrong and oversized length
//! prefixes, deeply nested JSON, invalid UTF-8, and every command with every
//! field of a wrong type. The contract checked on every input: no panic, and
//! either a request or one clear error (`bad-message`, or
//! `unsupported-version` for a foreign version), one line for a person.
//!
//! Case counts: each runner's default keeps the whole file to a few seconds;
//! `AGENTFS_FUZZ_CASES=N` runs every runner with N cases (the long mode).
//! Each runner prints how many inputs it executed, e.g.
//! `fuzz: decode_arbitrary_bytes: 4000 executions`, and a failing input is
//! shrunk and printed by proptest.

use std::io::{self, Cursor, Read, Write};
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use agentfs_control::frame::{read_frame, write_frame, FrameError};
use agentfs_control::{
    Command, ControlError, ControlServer, ErrorKind, PeerCred, Reply, Request, ServerConfig,
    WireResponse, MAX_ERROR_MESSAGE_CHARS, MAX_MESSAGE_BYTES,
};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestError, TestRunner};
use serde_json::{json, Value};

/// Run `test` on `cases` inputs from `strategy` (or `AGENTFS_FUZZ_CASES`),
/// print the number of executions, and fail with proptest's minimal input.
fn fuzz<S: Strategy>(
    name: &str,
    default_cases: u32,
    strategy: S,
    test: impl Fn(S::Value) -> Result<(), TestCaseError>,
) where
    S::Value: std::fmt::Debug,
{
    let cases = std::env::var("AGENTFS_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default_cases);
    let executions = AtomicU64::new(0);
    let mut runner = TestRunner::new(Config {
        cases,
        failure_persistence: None,
        ..Config::default()
    });
    let result = runner.run(&strategy, |input| {
        executions.fetch_add(1, Ordering::Relaxed);
        test(input)
    });
    println!(
        "fuzz: {name}: {} executions",
        executions.load(Ordering::Relaxed)
    );
    match result {
        Ok(()) => {}
        Err(TestError::Fail(why, input)) => panic!("{name}: {why}\nminimal input: {input:#?}"),
        Err(TestError::Abort(why)) => panic!("{name}: aborted: {why}"),
    }
}

/// The decoder's contract on one body: a request that survives a round trip,
/// or a clear error of a kind a malformed message may get.
fn check_decode(body: &[u8]) -> Result<Option<ControlError>, TestCaseError> {
    match Request::decode(body) {
        Ok(request) => {
            let again = serde_json::to_vec(&request).expect("a request serializes");
            prop_assert_eq!(Request::decode(&again).ok(), Some(request));
            Ok(None)
        }
        Err(err) => {
            prop_assert!(
                matches!(
                    err.kind,
                    ErrorKind::BadMessage | ErrorKind::UnsupportedVersion
                ),
                "unexpected kind {:?} for a malformed message",
                err.kind
            );
            prop_assert!(!err.message.trim().is_empty(), "empty message");
            prop_assert!(
                !err.message.chars().any(char::is_control),
                "not one clean line: {:?}",
                err.message
            );
            prop_assert!(err.message.chars().count() <= MAX_ERROR_MESSAGE_CHARS + 3);
            Ok(Some(err))
        }
    }
}

fn valid_requests() -> Vec<Value> {
    vec![
        json!({"version": 1, "command": {"op": "snapshot-create", "name": "n", "branch": null}}),
        json!({"version": 1, "command": {"op": "snapshot-create"}}),
        json!({"version": 1, "command": {"op": "snapshot-list"}}),
        json!({"version": 1, "command": {"op": "snapshot-delete", "snapshot": "s1"}}),
        json!({"version": 1, "command": {"op": "branch-create", "from": "s1", "name": "x"}}),
        json!({"version": 1, "command": {"op": "branch-list"}}),
        json!({"version": 1, "command": {"op": "branch-delete", "branch": "b2", "force": true}}),
        json!({"version": 1, "command": {"op": "branch-bind", "branch": "b2", "pid": 42}}),
        json!({"version": 1, "command": {"op": "branch-bind-private", "branch": "b2", "pid": 43}}),
        json!({"version": 1, "command": {"op": "branch-unbind", "pid": 42}}),
        json!({"version": 1, "command": {"op": "status"}}),
        json!({"version": 1, "command": {"op": "diff", "a": "base", "b": "b2", "offset": 0}}),
        json!({"version": 1, "command": {"op": "branch-commit", "branch": "b2", "resolve": "theirs", "delete": true}}),
    ]
}

/// A JSON value of any shape, a few levels deep.
fn any_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>()
            .prop_map(|f| serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number)),
        ".{0,12}".prop_map(Value::String),
    ];
    leaf.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::btree_map("[a-z_]{0,8}", inner, 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// A valid request's bytes after random edits: flips, inserts, deletions, cuts.
fn mutated_request() -> impl Strategy<Value = Vec<u8>> {
    let edits = prop::collection::vec((0..4u8, any::<prop::sample::Index>(), any::<u8>()), 0..8);
    (prop::sample::select(valid_requests()), edits).prop_map(|(request, edits)| {
        let mut bytes = serde_json::to_vec(&request).unwrap();
        for (kind, at, byte) in edits {
            if bytes.is_empty() {
                bytes.push(byte);
                continue;
            }
            let i = at.index(bytes.len());
            match kind {
                0 => bytes[i] = byte,
                1 => bytes.insert(i, byte),
                2 => {
                    bytes.remove(i);
                }
                _ => bytes.truncate(i),
            }
        }
        bytes
    })
}

/// Text made of JSON's own tokens, so that the parser gets deep into it.
fn json_token_soup() -> impl Strategy<Value = Vec<u8>> {
    let token = prop::sample::select(vec![
        "{",
        "}",
        "[",
        "]",
        ":",
        ",",
        "\"",
        "\"version\"",
        "\"command\"",
        "\"op\"",
        "\"status\"",
        "\"branch-bind\"",
        "\"pid\"",
        "1",
        "-1",
        "4294967296",
        "1e999",
        "0.5",
        "null",
        "true",
        "false",
        "\"\\u0000\"",
        "\"\\ud800\"",
        "\\",
        " ",
        "\u{fffd}",
    ]);
    prop::collection::vec(token, 0..64).prop_map(|t| t.concat().into_bytes())
}

#[test]
fn decode_arbitrary_bytes() {
    let bytes = prop_oneof![
        prop::collection::vec(any::<u8>(), 0..512),
        mutated_request(),
        json_token_soup(),
        any_json().prop_map(|v| serde_json::to_vec(&v).unwrap()),
        (any_json(), any_json()).prop_map(|(version, command)| {
            serde_json::to_vec(&json!({"version": version, "command": command})).unwrap()
        }),
    ];
    fuzz("decode_arbitrary_bytes", 20_000, bytes, |body| {
        check_decode(&body)?;
        Ok(())
    });
}

/// For each command, each field: every JSON type other than the field's own
/// is `bad-message`; `null` is fine only for optional fields; a missing
/// required field is `bad-message`; unknown fields are ignored.
#[test]
fn every_command_with_wrong_field_types() {
    #[derive(Clone, Copy, Debug, PartialEq)]
    enum Ty {
        Str,
        OptStr,
        Pid,
        Bool,
    }
    let fields: Vec<(&str, &str, Ty)> = vec![
        ("snapshot-create", "name", Ty::OptStr),
        ("snapshot-create", "branch", Ty::OptStr),
        ("snapshot-delete", "snapshot", Ty::Str),
        ("branch-create", "from", Ty::Str),
        ("branch-create", "name", Ty::OptStr),
        ("branch-delete", "branch", Ty::Str),
        ("branch-delete", "force", Ty::Bool),
        ("branch-bind", "branch", Ty::Str),
        ("branch-bind", "pid", Ty::Pid),
        ("branch-bind-private", "branch", Ty::Str),
        ("branch-bind-private", "pid", Ty::Pid),
        ("branch-unbind", "pid", Ty::Pid),
        ("diff", "a", Ty::Str),
        ("diff", "b", Ty::Str),
        ("branch-commit", "branch", Ty::Str),
    ];
    let base = |op: &str| -> Value {
        valid_requests()
            .into_iter()
            .find(|r| r["command"]["op"] == op && r["command"].as_object().unwrap().len() > 1)
            .unwrap_or_else(|| panic!("no full example of {op}"))
    };
    let accepts = |ty: Ty, v: &Value| match ty {
        Ty::Str => v.is_string(),
        Ty::OptStr => v.is_string() || v.is_null(),
        Ty::Bool => v.is_boolean(),
        Ty::Pid => v.as_u64().is_some_and(|n| n <= u64::from(u32::MAX)),
    };
    // Missing required fields.
    for (op, field, ty) in &fields {
        let mut request = base(op);
        request["command"].as_object_mut().unwrap().remove(*field);
        let result = Request::decode(&serde_json::to_vec(&request).unwrap());
        if *ty == Ty::OptStr {
            assert!(result.is_ok(), "{op} without optional {field}: {result:?}");
        } else {
            let err = result.expect_err("a missing required field must be refused");
            assert_eq!(err.kind, ErrorKind::BadMessage, "{op} without {field}");
            assert!(err.message.contains(field), "{op}/{field}: {}", err.message);
        }
    }
    // Wrong version types and values.
    for version in [
        json!("1"),
        json!(-1),
        json!(1.5),
        json!(null),
        json!([1]),
        json!({}),
    ] {
        let body = serde_json::to_vec(&json!({"version": version, "command": {"op": "status"}}));
        let err = Request::decode(&body.unwrap()).unwrap_err();
        assert_eq!(err.kind, ErrorKind::BadMessage, "version {version}");
    }
    let err = Request::decode(br#"{"version": 4294967296, "command": {"op": "status"}}"#);
    assert_eq!(err.unwrap_err().kind, ErrorKind::BadMessage);
    let err = Request::decode(br#"{"version": 2, "command": {"op": "no-such-op", "x": []}}"#);
    assert_eq!(err.unwrap_err().kind, ErrorKind::UnsupportedVersion);
    // `op` itself of a wrong type.
    for op in [
        json!(1),
        json!(null),
        json!(["status"]),
        json!({"op": "status"}),
    ] {
        let body = serde_json::to_vec(&json!({"version": 1, "command": {"op": op}})).unwrap();
        assert_eq!(
            Request::decode(&body).unwrap_err().kind,
            ErrorKind::BadMessage
        );
    }

    let cases = (prop::sample::select(fields), any_json(), any_json());
    fuzz(
        "every_command_with_wrong_field_types",
        10_000,
        cases,
        |((op, field, ty), value, extra)| {
            let mut request = base(op);
            request["command"][field] = value.clone();
            // An unknown field never matters.
            request["command"]["x-unknown"] = extra.clone();
            request["x-unknown"] = extra;
            let body = serde_json::to_vec(&request).unwrap();
            let result = check_decode(&body)?;
            if accepts(ty, &value) {
                prop_assert!(
                    result.is_none(),
                    "{op}.{field} = {value} refused: {result:?}"
                );
            } else {
                let err = result.expect("checked above");
                prop_assert_eq!(
                    err.kind,
                    ErrorKind::BadMessage,
                    "{}.{} = {}",
                    op,
                    field,
                    value
                );
            }
            Ok(())
        },
    );
}

#[test]
fn invalid_utf8_anywhere_is_bad_message() {
    let cases = (
        prop::sample::select(valid_requests()),
        any::<prop::sample::Index>(),
        prop::sample::select(vec![
            vec![0xffu8],
            vec![0xfe],
            vec![0xc0, 0x80],
            vec![0xed, 0xa0, 0x80],
            vec![0xf8, 0x88, 0x80, 0x80, 0x80],
            vec![0x80],
            vec![0xe2, 0x82],
        ]),
    );
    fuzz(
        "invalid_utf8_anywhere",
        2000,
        cases,
        |(request, at, bad)| {
            let text = serde_json::to_string(&request).unwrap();
            // Inside a string literal when there is one, else anywhere.
            let quotes: Vec<usize> = text.match_indices('"').map(|(i, _)| i + 1).collect();
            let i = if quotes.is_empty() {
                at.index(text.len() + 1)
            } else {
                quotes[at.index(quotes.len())]
            };
            let mut body = text.into_bytes();
            body.splice(i..i, bad);
            let err = check_decode(&body)?;
            prop_assert!(err.is_some(), "invalid UTF-8 accepted: {:?}", body);
            prop_assert_eq!(err.unwrap().kind, ErrorKind::BadMessage);
            Ok(())
        },
    );
}

/// A reader that fails the test if anything past the first `limit` bytes is
/// read: an oversized length prefix must be refused from the header alone.
struct NoBodyReads {
    inner: Cursor<Vec<u8>>,
    limit: u64,
}

impl Read for NoBodyReads {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let left = self.limit - self.inner.position();
        if left == 0 {
            panic!("the reader asked for the body of an oversized frame");
        }
        let n = buf.len().min(left as usize);
        self.inner.read(&mut buf[..n])
    }
}

#[test]
fn frames_of_arbitrary_streams() {
    // Streams made of chunks: well-formed frames, frames whose prefix lies,
    // oversized prefixes, and raw bytes.
    let chunk = prop_oneof![
        prop::collection::vec(any::<u8>(), 0..64).prop_map(|body| {
            let mut f = (body.len() as u32).to_be_bytes().to_vec();
            f.extend(body);
            f
        }),
        (prop::collection::vec(any::<u8>(), 0..64), -8i64..8).prop_map(|(body, skew)| {
            let len = (body.len() as i64 + skew).max(0) as u32;
            let mut f = len.to_be_bytes().to_vec();
            f.extend(body);
            f
        }),
        ((MAX_MESSAGE_BYTES as u32 + 1)..=u32::MAX).prop_map(|len| len.to_be_bytes().to_vec()),
        prop::collection::vec(any::<u8>(), 0..16),
    ];
    let streams = prop::collection::vec(chunk, 0..8).prop_map(|c| c.concat());
    fuzz("frames_of_arbitrary_streams", 10_000, streams, |stream| {
        let total = stream.len() as u64;
        let mut r = Cursor::new(stream);
        loop {
            let before = r.position();
            match read_frame(&mut r) {
                Ok(None) => {
                    prop_assert_eq!(before, total, "clean end reported mid-stream");
                    break;
                }
                Ok(Some(body)) => {
                    prop_assert!(body.len() <= MAX_MESSAGE_BYTES);
                    prop_assert_eq!(r.position(), before + 4 + body.len() as u64);
                    // Whatever the body, the decoder has an answer.
                    check_decode(&body)?;
                }
                Err(FrameError::TooLarge { len }) => {
                    prop_assert!(len > MAX_MESSAGE_BYTES);
                    prop_assert_eq!(r.position(), before + 4, "read past an oversized header");
                    break;
                }
                Err(FrameError::Truncated) => {
                    prop_assert_eq!(r.position(), total);
                    break;
                }
                Err(other) => prop_assert!(false, "unexpected frame error {other:?}"),
            }
        }
        Ok(())
    });
}

#[test]
fn truncated_and_mislabelled_frames() {
    let cases = (
        prop::sample::select(valid_requests()),
        any::<prop::sample::Index>(),
    );
    fuzz(
        "truncated_and_mislabelled_frames",
        2000,
        cases,
        |(request, at)| {
            let mut wire = Vec::new();
            write_frame(&mut wire, &serde_json::to_vec(&request).unwrap()).unwrap();
            // Cut anywhere: a clean end only before the first byte.
            let cut = at.index(wire.len());
            let got = read_frame(&mut Cursor::new(wire[..cut].to_vec()));
            if cut == 0 {
                prop_assert!(matches!(got, Ok(None)));
            } else {
                prop_assert!(
                    matches!(got, Err(FrameError::Truncated)),
                    "cut at {cut}: {got:?}"
                );
            }
            // A prefix claiming fewer bytes: the body read is a prefix of the JSON.
            let short = (wire.len() - 4).saturating_sub(1 + at.index(wire.len() - 4));
            let mut lying = (short as u32).to_be_bytes().to_vec();
            lying.extend_from_slice(&wire[4..]);
            let body = read_frame(&mut Cursor::new(lying)).unwrap().unwrap();
            prop_assert_eq!(body.len(), short);
            prop_assert!(check_decode(&body)?.is_some(), "a cut request decoded");
            // A prefix claiming more bytes than sent.
            let mut long = ((wire.len() - 4 + 1 + at.index(64)) as u32)
                .to_be_bytes()
                .to_vec();
            long.extend_from_slice(&wire[4..]);
            prop_assert!(matches!(
                read_frame(&mut Cursor::new(long)),
                Err(FrameError::Truncated)
            ));
            Ok(())
        },
    );
}

#[test]
fn oversized_length_prefixes_are_refused_from_the_header() {
    let lens = prop_oneof![
        Just(MAX_MESSAGE_BYTES as u32 + 1),
        Just(u32::MAX),
        (MAX_MESSAGE_BYTES as u32 + 1)..=u32::MAX,
    ];
    fuzz("oversized_length_prefixes", 1000, lens, |len| {
        let mut wire = len.to_be_bytes().to_vec();
        wire.extend_from_slice(b"{\"version\": 1}");
        let mut r = NoBodyReads {
            inner: Cursor::new(wire),
            limit: 4,
        };
        let got = read_frame(&mut r);
        prop_assert!(
            matches!(got, Err(FrameError::TooLarge { len: l }) if l == len as usize),
            "{got:?}"
        );
        Ok(())
    });
    // A body just over the limit handed to the decoder directly.
    let big = vec![b' '; MAX_MESSAGE_BYTES + 1];
    assert_eq!(
        Request::decode(&big).unwrap_err().kind,
        ErrorKind::BadMessage
    );
}

/// Nesting up to what fits in 1 MiB (500,000 levels): refused where a value
/// of a known type is expected (serde_json's recursion limit, 128 levels,
/// stops the command's buffering), skipped without recursion in an unknown
/// field of the envelope, and never a stack overflow.
#[test]
fn deep_nesting_is_an_error_not_a_stack_overflow() {
    // Run on a small stack: a decoder that recursed per level would overflow
    // it long before 100,000 levels.
    let worker = std::thread::Builder::new()
        .stack_size(256 * 1024)
        .spawn(|| {
            let (mut refused, mut limited, mut skipped) = (0, 0, 0);
            for depth in [129usize, 1_000, 100_000, 500_000] {
                let arrays = format!("{}{}", "[".repeat(depth), "]".repeat(depth));
                let objects = format!("{}1{}", "{\"a\":".repeat(depth), "}".repeat(depth));
                for nest in [&arrays, &objects] {
                    let status = "{\"op\": \"status\"}";
                    let must_fail = [
                        format!("{{\"version\": 1, \"command\": {nest}}}"),
                        format!("{{\"version\": {nest}, \"command\": {status}}}"),
                        format!("{{\"version\": 1, \"command\": {{\"op\": \"status\", \"x\": {nest}}}}}"),
                        format!("{{\"version\": 1, \"command\": {{\"x\": {nest}, \"op\": \"status\"}}}}"),
                        nest.clone(),
                    ];
                    for body in must_fail.iter().filter(|b| b.len() <= MAX_MESSAGE_BYTES) {
                        let err = Request::decode(body.as_bytes())
                            .expect_err("nesting this deep where a typed value goes is refused");
                        assert_eq!(err.kind, ErrorKind::BadMessage, "depth {depth}");
                        assert!(!err.message.is_empty());
                        if err.message.contains("recursion limit") {
                            limited += 1;
                        }
                        refused += 1;
                    }
                    let ignored = format!("{{\"version\": 1, \"extra\": {nest}, \"command\": {status}}}");
                    if ignored.len() <= MAX_MESSAGE_BYTES {
                        let request = Request::decode(ignored.as_bytes())
                            .expect("an unknown field is skipped, however deep");
                        assert_eq!(request, Request::new(Command::Status));
                        skipped += 1;
                    }
                }
            }
            (refused, limited, skipped)
        })
        .unwrap();
    let (refused, limited, skipped) = worker
        .join()
        .expect("the decoder overflowed a 256 KiB stack");
    assert!(
        refused >= 30 && skipped >= 7,
        "{refused} refused, {skipped} skipped"
    );
    // The command is buffered before its tag is known: that is where a
    // recursive parse would go deep, and where the limit must stop it.
    assert!(
        limited >= 8,
        "only {limited} of {refused} hit the recursion limit"
    );
}

/// A live server with a handler that answers everything: garbage on many
/// connections never stops it, and it still answers a good request after.
#[test]
fn a_server_survives_garbage_on_many_connections() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("fuzz.sock");
    let handled = Arc::new(AtomicU64::new(0));
    let counter = Arc::clone(&handled);
    let handler = move |_: &PeerCred, _: Command| -> Result<Reply, ControlError> {
        counter.fetch_add(1, Ordering::Relaxed);
        Ok(Reply::Deleted { id: "ok".into() })
    };
    let config = ServerConfig {
        read_timeout: Duration::from_secs(2),
        ..ServerConfig::default()
    };
    let server = ControlServer::bind_with(&socket, Arc::new(handler), config).unwrap();

    let chunks = prop::collection::vec(
        prop_oneof![
            prop::collection::vec(any::<u8>(), 0..256),
            mutated_request().prop_map(|b| {
                let mut f = (b.len() as u32).to_be_bytes().to_vec();
                f.extend(b);
                f
            }),
            ((MAX_MESSAGE_BYTES as u32 + 1)..=u32::MAX).prop_map(|l| l.to_be_bytes().to_vec()),
        ],
        1..4,
    );
    fuzz("server_garbage_connections", 500, chunks, |chunks| {
        let mut s = UnixStream::connect(&socket).map_err(|e| TestCaseError::fail(e.to_string()))?;
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        for c in &chunks {
            // The server may close first (after an oversized prefix): fine.
            if s.write_all(c).is_err() {
                break;
            }
        }
        let _ = s.shutdown(std::net::Shutdown::Write);
        // Every frame it answers is a well-formed response; then it closes.
        loop {
            match read_frame(&mut s) {
                Ok(Some(body)) => {
                    let wire: Result<WireResponse, _> = serde_json::from_slice(&body);
                    prop_assert!(wire.is_ok(), "unparsable response {:?}", body);
                    if let Ok(WireResponse::Err(e)) = wire {
                        prop_assert!(!e.message.chars().any(char::is_control), "{:?}", e.message);
                    }
                }
                Ok(None) => break,
                // Reset by a server that closed with unread input: also an end.
                Err(FrameError::Io(_)) => break,
                Err(e) => prop_assert!(false, "bad response framing: {e}"),
            }
        }
        Ok(())
    });
    let mut s = UnixStream::connect(&socket).unwrap();
    let request = serde_json::to_vec(&Request::new(Command::Status)).unwrap();
    write_frame(&mut s, &request).unwrap();
    let body = read_frame(&mut s).unwrap().expect("an answer");
    let wire: WireResponse = serde_json::from_slice(&body).unwrap();
    assert_eq!(wire, WireResponse::Ok(Reply::Deleted { id: "ok".into() }));
    assert!(handled.load(Ordering::Relaxed) >= 1);
    drop(server);
}
