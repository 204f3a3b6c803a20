//! The control protocol's messages: what a client asks ([`Request`], [`Command`]),
//! what the daemon answers ([`Reply`], [`ControlError`]) and the wire views of
//! snapshots, branches, bindings and status.
//!
//! Everything here is plain serde data so that the daemon (which converts its
//! core types into these views) and the CLI (which never sees core types) share
//! one definition. The JSON shapes are part of the protocol and are pinned by
//! the tests at the bottom of this file:
//!
//! - a request is `{"version": 1, "command": {"op": "snapshot-create", "name": .., "branch": ..}}`;
//! - a reply is adjacently tagged, `{"reply": "snapshots", "value": [..]}`, because
//!   several replies carry a list, which an internally tagged enum cannot hold;
//! - a response is `{"ok": <reply>}` or `{"err": {"kind": "not-found", "message": ".."}}`.
//!
//! Ids are strings such as `"b1"` (branch) or `"s2"` (snapshot). Times
//! (`created_unix`) are seconds since the Unix epoch as an `f64`, with the
//! fractional part carrying sub-second precision.

use std::fmt;

use serde::{Deserialize, Serialize};

/// The protocol version this crate speaks. A server answers any other version
/// with [`ErrorKind::UnsupportedVersion`].
pub const PROTOCOL_VERSION: u32 = 1;

/// The largest message body (the JSON after the length prefix) either side accepts.
pub const MAX_MESSAGE_BYTES: usize = 1 << 20;

/// One request: the protocol version the client speaks and what it asks for.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct Request {
    pub version: u32,
    pub command: Command,
}

impl Request {
    /// A request for `command` at this crate's [`PROTOCOL_VERSION`].
    pub fn new(command: Command) -> Request {
        Request {
            version: PROTOCOL_VERSION,
            command,
        }
    }

    /// Decode one message body (the bytes after the length prefix), as the
    /// server does: the version first, so that a newer client's unknown
    /// command is answered [`ErrorKind::UnsupportedVersion`] rather than
    /// [`ErrorKind::BadMessage`]; then the whole request.
    ///
    /// Total on any input: every byte string gives a request or an error
    /// whose message says what is wrong, never a panic. Nesting deeper than
    /// serde_json's limit (128 levels) is an error, not a deep recursion.
    /// Unknown fields are ignored, and nothing in the body can speak for the
    /// caller's identity: the server takes that from the socket.
    pub fn decode(body: &[u8]) -> Result<Request, ControlError> {
        let malformed = |e: serde_json::Error| {
            ControlError::bad_message(format!("malformed control request: {e}")).tidy()
        };
        if body.len() > MAX_MESSAGE_BYTES {
            return Err(ControlError::bad_message(format!(
                "message of {} bytes exceeds the limit of {MAX_MESSAGE_BYTES} bytes",
                body.len()
            )));
        }
        let envelope: Envelope = serde_json::from_slice(body).map_err(malformed)?;
        if envelope.version != PROTOCOL_VERSION {
            return Err(ControlError::unsupported_version(envelope.version));
        }
        serde_json::from_slice(body).map_err(malformed)
    }
}

/// Only the version of a request, read before the rest.
#[derive(Deserialize)]
struct Envelope {
    version: u32,
}

/// What a client can ask the daemon to do. Who is asking comes from the
/// socket's peer credentials, never from the message.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
#[serde(tag = "op", rename_all = "kebab-case")]
pub enum Command {
    /// Snapshot a branch; `branch: None` means the caller's own branch.
    SnapshotCreate {
        name: Option<String>,
        branch: Option<String>,
    },
    SnapshotList,
    SnapshotDelete {
        snapshot: String,
    },
    /// Create a writable branch from a snapshot (id or name).
    BranchCreate {
        from: String,
        name: Option<String>,
    },
    BranchList,
    /// Delete a branch; `force` also drops its bindings and open handles.
    BranchDelete {
        branch: String,
        force: bool,
    },
    /// Bind process `pid` (and the processes it forks afterwards) to `branch`.
    BranchBind {
        branch: String,
        pid: u32,
    },
    /// Like `BranchBind`, for a process that sees `branch` through a private
    /// view of its own root (`branch-exec` in a mount namespace with
    /// `.agentfs/branches/<branch>` bind-mounted over the mount path). Such a
    /// process never looks names up in the shared mount root, so its binding
    /// does not stop the kernel from caching the root's entries for others.
    BranchBindPrivate {
        branch: String,
        pid: u32,
    },
    BranchUnbind {
        pid: u32,
    },
    Status,
    /// Apply `branch`'s changes since its branch point onto its parent (the
    /// branch its base snapshot was taken of), atomically. Paths both
    /// changed refuse the commit unless `resolve` picks a side.
    BranchCommit {
        branch: String,
        #[serde(default)]
        resolve: Option<CommitResolve>,
        /// Delete `branch` once committed.
        #[serde(default)]
        delete: bool,
    },
    /// What changed from view `a` to view `b` (each a branch or snapshot,
    /// by name or id), sorted by path. A long answer comes in pages: ask
    /// again with `offset` set to the previous reply's `next`.
    Diff {
        a: String,
        b: String,
        #[serde(default)]
        offset: u64,
    },
    /// Sent by `export` before it changes host directory `dir`: if `dir` is
    /// (in, or around) the mount's own lower directory, make every tree
    /// (branch and snapshot) stop naming the lower paths about to change,
    /// durably, before answering; elsewhere nothing is done. `paths` (it and
    /// everything below it about to be renamed, replaced or deleted) and
    /// `touched` (a directory about to be created or given a mode: its own
    /// entries stay) are relative to `dir`. `dir` and every path are written
    /// as diff paths are ([`path_to_wire`]).
    LowerDetach {
        dir: String,
        #[serde(default)]
        paths: Vec<String>,
        #[serde(default)]
        touched: Vec<String>,
    },
}

/// A path's bytes as protocol text: UTF-8 as is, every other byte as
/// `\xNN`, a backslash as `\\` (as diff paths are written).
pub fn path_to_wire(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len());
    for chunk in bytes.utf8_chunks() {
        for c in chunk.valid().chars() {
            if c == '\\' {
                out.push_str("\\\\");
            } else {
                out.push(c);
            }
        }
        for b in chunk.invalid() {
            out.push_str(&format!("\\x{b:02x}"));
        }
    }
    out
}

/// The bytes of a path written by [`path_to_wire`] (or by diff).
pub fn path_from_wire(text: &str) -> Vec<u8> {
    let b = text.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 1 < b.len() {
            if b[i + 1] == b'\\' {
                out.push(b'\\');
                i += 2;
                continue;
            }
            let hex = |c: u8| (c as char).to_digit(16);
            if b[i + 1] == b'x' && i + 4 <= b.len() {
                if let (Some(hi), Some(lo)) = (hex(b[i + 2]), hex(b[i + 3])) {
                    out.push((hi * 16 + lo) as u8);
                    i += 4;
                    continue;
                }
            }
        }
        out.push(b[i]);
        i += 1;
    }
    out
}

/// Which side wins a path both the branch and its parent changed.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum CommitResolve {
    /// The committed branch's change wins (`--theirs`).
    Theirs,
    /// The parent's state wins (`--ours`).
    Ours,
}

impl Command {
    /// The command's wire name (`"snapshot-create"`, ...), for logs and messages.
    pub fn op(&self) -> &'static str {
        match self {
            Command::SnapshotCreate { .. } => "snapshot-create",
            Command::SnapshotList => "snapshot-list",
            Command::SnapshotDelete { .. } => "snapshot-delete",
            Command::BranchCreate { .. } => "branch-create",
            Command::BranchList => "branch-list",
            Command::BranchDelete { .. } => "branch-delete",
            Command::BranchBind { .. } => "branch-bind",
            Command::BranchBindPrivate { .. } => "branch-bind-private",
            Command::BranchUnbind { .. } => "branch-unbind",
            Command::Status => "status",
            Command::BranchCommit { .. } => "branch-commit",
            Command::Diff { .. } => "diff",
            Command::LowerDetach { .. } => "lower-detach",
        }
    }
}

/// A snapshot as the protocol shows it.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct SnapshotView {
    /// `"s<N>"`.
    pub id: String,
    /// The user's name for it; may be empty when none was given.
    pub name: String,
    /// Id of the branch it was taken from.
    pub branch: String,
    /// Seconds since the Unix epoch.
    pub created_unix: f64,
    /// Ids of the branches created from this snapshot.
    pub children: Vec<String>,
}

/// A branch as the protocol shows it.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct BranchView {
    /// `"b<N>"`.
    pub id: String,
    pub name: String,
    /// Id of the snapshot it was created from; `None` for the initial branch.
    pub from: Option<String>,
    /// Seconds since the Unix epoch.
    pub created_unix: f64,
    /// Whether unbound processes see this branch.
    pub is_default: bool,
    pub open_handles: u64,
    pub bound_processes: u64,
}

/// One process binding.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct BindingView {
    pub pid: u32,
    /// Branch id.
    pub branch: String,
    pub branch_name: String,
}

fn dev_fuse() -> String {
    "dev-fuse".into()
}

/// The daemon's state at a glance.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct StatusView {
    /// The daemon crate's version.
    pub version: String,
    /// The protocol version the daemon speaks.
    pub protocol: u32,
    pub mountpoint: String,
    pub backstore: String,
    /// `"transport"` or `"passthrough"`.
    pub data_path: String,
    /// How requests reach the daemon: `"dev-fuse"` (read from /dev/fuse) or
    /// `"io-uring"` (FUSE over io_uring, a queue per CPU). Absent from
    /// daemons older than the field: `"dev-fuse"`.
    #[serde(default = "dev_fuse")]
    pub request_channel: String,
    /// Branch id unbound processes see.
    pub default_branch: String,
    /// Branch id the caller (the peer of the control socket) sees.
    pub caller_branch: String,
    pub branches: Vec<BranchView>,
    pub snapshots: u64,
    pub bindings: Vec<BindingView>,
    pub open_handles: u64,
    pub content_objects: u64,
    pub content_bytes: u64,
    pub cow_clones: u64,
    pub fs_bytes_free: u64,
}

/// One path both sides of a commit changed.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct ConflictView {
    /// Path from the branch root, `/`-separated, no leading `/` (`.` for the root).
    pub path: String,
    /// What the committed branch did to it: `added`, `modified`, `deleted` or `moved`.
    pub child: String,
    /// What the parent did to it since the branch point.
    pub parent: String,
}

/// What a `branch-commit` did, or why it did not.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct CommitView {
    /// The committed branch's id.
    pub branch: String,
    /// The branch it was committed into.
    pub parent: String,
    /// The snapshot both were compared against (the branch point).
    pub base: String,
    /// Whether the parent now holds the branch's changes. `false`: refused
    /// because of `conflicts`; nothing changed.
    pub committed: bool,
    /// The parent had not changed since the branch point: it took the branch's tree as is.
    pub fast_path: bool,
    /// Nodes the branch changed since the branch point.
    pub branch_changes: u64,
    /// Nodes the parent changed since the branch point.
    pub parent_changes: u64,
    /// Paths both changed: why it was refused, or what `resolve` settled.
    pub conflicts: Vec<ConflictView>,
    /// How conflicts were settled, if they were.
    pub resolve: Option<CommitResolve>,
    /// Whether the branch was deleted after the commit.
    pub deleted: bool,
    /// How long the commit took in the daemon, in milliseconds.
    pub millis: f64,
}

/// One changed path of a diff.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct DiffEntryView {
    /// `added`, `deleted`, `modified`, `renamed` or `type_changed`.
    pub change: String,
    /// Path from the root, `/`-separated, no leading `/`: in the second view
    /// (the first for `deleted`). UTF-8 as is; other bytes as `\xNN`, a
    /// backslash as `\\`.
    pub path: String,
    /// `renamed`: the path in the first view.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<String>,
    /// `file`, `dir`, `symlink`, `fifo`, `char_device`, `block_device` or `socket`.
    #[serde(rename = "type")]
    pub entry_type: String,
    /// `type_changed`: the type in the first view.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub old_type: Option<String>,
    /// `modified`, `renamed`: what changed (`data`, `mode`, `owner`,
    /// `target`, `xattrs`, `times`, `replaced`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub what: Vec<String>,
}

/// One page of a diff.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct DiffView {
    /// The first view's id (`b<N>` or `s<N>`).
    pub a: String,
    /// The second view's id.
    pub b: String,
    /// Changes in the whole diff.
    pub total: u64,
    /// Index of this page's first change.
    pub offset: u64,
    pub changes: Vec<DiffEntryView>,
    /// The offset to ask for the next page; `None` on the last page.
    pub next: Option<u64>,
    /// Node ids whose node differs (the work the diff did follows this, not
    /// the tree size).
    pub changed_nodes: u64,
    /// Nodes the diff read.
    pub nodes_read: u64,
    /// How long the diff took in the daemon, in milliseconds.
    pub millis: f64,
}

/// What a `lower-detach` did.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct DetachView {
    /// Whether the directory is the mount's lower directory (or inside it,
    /// or holds it); `false`: nothing was to be done.
    pub lower: bool,
    /// Lower directories read into the trees where they were unread.
    pub dirs_read: u64,
    /// Lower files copied (or reflinked) into the backstore.
    pub files_copied: u64,
    /// Bytes of those files.
    pub bytes_copied: u64,
    /// How long it took in the daemon, in milliseconds.
    pub millis: f64,
}

/// A successful answer. Serialized adjacently tagged:
/// `{"reply": "branch", "value": {..}}`.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
#[serde(tag = "reply", content = "value", rename_all = "kebab-case")]
pub enum Reply {
    Snapshot(SnapshotView),
    Snapshots(Vec<SnapshotView>),
    Branch(BranchView),
    Branches(Vec<BranchView>),
    Bound { pid: u32, branch: String },
    Unbound { pid: u32, was_bound: bool },
    Deleted { id: String },
    Status(StatusView),
    Commit(CommitView),
    Diff(DiffView),
    Detached(DetachView),
}

/// Why a request failed, as a client can act on it.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[serde(rename_all = "kebab-case")]
pub enum ErrorKind {
    NotFound,
    NameTaken,
    Busy,
    PermissionDenied,
    InvalidArgument,
    /// The message could not be read: bad framing, too large, or not valid JSON
    /// for a [`Request`].
    BadMessage,
    UnsupportedVersion,
    Internal,
}

impl ErrorKind {
    /// The kind's wire name (`"not-found"`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::NotFound => "not-found",
            ErrorKind::NameTaken => "name-taken",
            ErrorKind::Busy => "busy",
            ErrorKind::PermissionDenied => "permission-denied",
            ErrorKind::InvalidArgument => "invalid-argument",
            ErrorKind::BadMessage => "bad-message",
            ErrorKind::UnsupportedVersion => "unsupported-version",
            ErrorKind::Internal => "internal",
        }
    }
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A failed request. `Display` is the message alone, written for a person.
#[derive(thiserror::Error, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[error("{message}")]
pub struct ControlError {
    pub kind: ErrorKind,
    pub message: String,
}

impl ControlError {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> ControlError {
        ControlError {
            kind,
            message: message.into(),
        }
    }

    pub fn not_found(message: impl Into<String>) -> ControlError {
        ControlError::new(ErrorKind::NotFound, message)
    }

    pub fn name_taken(message: impl Into<String>) -> ControlError {
        ControlError::new(ErrorKind::NameTaken, message)
    }

    pub fn busy(message: impl Into<String>) -> ControlError {
        ControlError::new(ErrorKind::Busy, message)
    }

    pub fn permission_denied(message: impl Into<String>) -> ControlError {
        ControlError::new(ErrorKind::PermissionDenied, message)
    }

    pub fn invalid_argument(message: impl Into<String>) -> ControlError {
        ControlError::new(ErrorKind::InvalidArgument, message)
    }

    pub fn bad_message(message: impl Into<String>) -> ControlError {
        ControlError::new(ErrorKind::BadMessage, message)
    }

    pub fn internal(message: impl Into<String>) -> ControlError {
        ControlError::new(ErrorKind::Internal, message)
    }

    /// This error with its message made fit to show: one line (control
    /// characters such as a newline or an escape written as `\n`, `\u{1b}`),
    /// at most [`MAX_ERROR_MESSAGE_CHARS`] characters (then `...`). Messages
    /// may quote what a client sent (an unknown `op`, a name), and a client
    /// can send anything.
    pub fn tidy(mut self) -> ControlError {
        self.message = one_line(&self.message, MAX_ERROR_MESSAGE_CHARS);
        self
    }

    /// The answer to a request at a protocol version this side does not speak.
    pub fn unsupported_version(got: u32) -> ControlError {
        ControlError::new(
            ErrorKind::UnsupportedVersion,
            format!(
                "unsupported control protocol version {got} (this daemon speaks version {PROTOCOL_VERSION})"
            ),
        )
    }
}

/// The longest error message, in characters, a server sends (see [`ControlError::tidy`]).
pub const MAX_ERROR_MESSAGE_CHARS: usize = 512;

/// `text` on one line with control characters escaped, cut to `max` characters.
fn one_line(text: &str, max: usize) -> String {
    let mut out = String::with_capacity(text.len().min(max + 3));
    for (kept, c) in text.chars().enumerate() {
        if kept >= max {
            out.push_str("...");
            break;
        }
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

/// The result of one request.
pub type Response = Result<Reply, ControlError>;

/// How a [`Response`] travels: `{"ok": <Reply>}` or `{"err": <ControlError>}`.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
#[serde(rename_all = "lowercase")]
// One lives per message, briefly; boxing would only obscure the wire type.
#[allow(clippy::large_enum_variant)]
pub enum WireResponse {
    Ok(Reply),
    Err(ControlError),
}

impl From<Response> for WireResponse {
    fn from(response: Response) -> WireResponse {
        match response {
            Ok(reply) => WireResponse::Ok(reply),
            Err(err) => WireResponse::Err(err),
        }
    }
}

impl From<WireResponse> for Response {
    fn from(wire: WireResponse) -> Response {
        match wire {
            WireResponse::Ok(reply) => Ok(reply),
            WireResponse::Err(err) => Err(err),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn snapshot() -> SnapshotView {
        SnapshotView {
            id: "s2".into(),
            name: "before-refactor".into(),
            branch: "b1".into(),
            created_unix: 1_700_000_000.25,
            children: vec!["b3".into()],
        }
    }

    fn branch() -> BranchView {
        BranchView {
            id: "b1".into(),
            name: "main".into(),
            from: None,
            created_unix: 1_700_000_000.5,
            is_default: true,
            open_handles: 3,
            bound_processes: 1,
        }
    }

    fn all_commands() -> Vec<Command> {
        vec![
            Command::SnapshotCreate {
                name: Some("n".into()),
                branch: None,
            },
            Command::SnapshotCreate {
                name: None,
                branch: Some("b2".into()),
            },
            Command::SnapshotList,
            Command::SnapshotDelete {
                snapshot: "s1".into(),
            },
            Command::BranchCreate {
                from: "s1".into(),
                name: Some("x".into()),
            },
            Command::BranchList,
            Command::BranchDelete {
                branch: "b2".into(),
                force: true,
            },
            Command::BranchBind {
                branch: "b2".into(),
                pid: 42,
            },
            Command::BranchBindPrivate {
                branch: "b2".into(),
                pid: 43,
            },
            Command::BranchUnbind { pid: 42 },
            Command::Status,
            Command::BranchCommit {
                branch: "b2".into(),
                resolve: Some(CommitResolve::Theirs),
                delete: true,
            },
            Command::Diff {
                a: "base".into(),
                b: "b2".into(),
                offset: 0,
            },
            Command::LowerDetach {
                dir: "/src/proj".into(),
                paths: vec!["a".into(), "bad\\xff".into()],
                touched: vec!["d".into()],
            },
        ]
    }

    fn all_replies() -> Vec<Reply> {
        vec![
            Reply::Snapshot(snapshot()),
            Reply::Snapshots(vec![snapshot(), snapshot()]),
            Reply::Snapshots(vec![]),
            Reply::Branch(branch()),
            Reply::Branches(vec![branch()]),
            Reply::Bound {
                pid: 7,
                branch: "b2".into(),
            },
            Reply::Unbound {
                pid: 7,
                was_bound: false,
            },
            Reply::Deleted { id: "s1".into() },
            Reply::Status(StatusView {
                version: "0.1.0".into(),
                protocol: PROTOCOL_VERSION,
                mountpoint: "/mnt".into(),
                backstore: "/var/store".into(),
                data_path: "passthrough".into(),
                request_channel: "io-uring".into(),
                default_branch: "b1".into(),
                caller_branch: "b2".into(),
                branches: vec![branch()],
                snapshots: 4,
                bindings: vec![BindingView {
                    pid: 9,
                    branch: "b2".into(),
                    branch_name: "feature".into(),
                }],
                open_handles: 5,
                content_objects: 6,
                content_bytes: 7,
                cow_clones: 8,
                fs_bytes_free: 9,
            }),
            Reply::Commit(CommitView {
                branch: "b2".into(),
                parent: "b1".into(),
                base: "s1".into(),
                committed: false,
                fast_path: false,
                branch_changes: 3,
                parent_changes: 2,
                conflicts: vec![ConflictView {
                    path: "src/a.rs".into(),
                    child: "modified".into(),
                    parent: "deleted".into(),
                }],
                resolve: None,
                deleted: false,
                millis: 0.5,
            }),
            Reply::Diff(DiffView {
                a: "s1".into(),
                b: "b2".into(),
                total: 3,
                offset: 1,
                changes: vec![
                    DiffEntryView {
                        change: "renamed".into(),
                        path: "new".into(),
                        from: Some("old".into()),
                        entry_type: "file".into(),
                        old_type: None,
                        what: vec!["data".into()],
                    },
                    DiffEntryView {
                        change: "type_changed".into(),
                        path: "x\\xff".into(),
                        from: None,
                        entry_type: "dir".into(),
                        old_type: Some("file".into()),
                        what: vec![],
                    },
                ],
                next: None,
                changed_nodes: 4,
                nodes_read: 9,
                millis: 0.1,
            }),
            Reply::Detached(DetachView {
                lower: true,
                dirs_read: 2,
                files_copied: 3,
                bytes_copied: 4,
                millis: 0.2,
            }),
        ]
    }

    #[test]
    fn wire_paths_round_trip_every_byte() {
        for bytes in [
            &b"plain/path.rs"[..],
            b"a\\x41",
            b"back\\",
            b"bad\xffbyte",
            b"new\nline",
            "\u{e9}t\u{e9}".as_bytes(),
            b"",
        ] {
            let text = path_to_wire(bytes);
            assert_eq!(path_from_wire(&text), bytes, "{text}");
        }
        assert_eq!(path_to_wire(b"x\xff\\"), "x\\xff\\\\");
        // Old clients leave the lists out.
        let minimal: Request = serde_json::from_value(
            json!({"version": 1, "command": {"op": "lower-detach", "dir": "/x"}}),
        )
        .unwrap();
        assert_eq!(
            minimal.command,
            Command::LowerDetach {
                dir: "/x".into(),
                paths: vec![],
                touched: vec![]
            }
        );
    }

    #[test]
    fn every_command_round_trips() {
        for command in all_commands() {
            let request = Request::new(command);
            let text = serde_json::to_string(&request).unwrap();
            let back: Request = serde_json::from_str(&text).unwrap();
            assert_eq!(back, request, "{text}");
            let value: serde_json::Value = serde_json::from_str(&text).unwrap();
            assert_eq!(value["command"]["op"], request.command.op(), "{text}");
        }
    }

    #[test]
    fn every_reply_round_trips_ok_and_err() {
        for reply in all_replies() {
            let wire = WireResponse::from(Ok(reply.clone()));
            let text = serde_json::to_string(&wire).unwrap();
            let back: WireResponse = serde_json::from_str(&text).unwrap();
            assert_eq!(Response::from(back), Ok(reply), "{text}");
        }
        for kind in [
            ErrorKind::NotFound,
            ErrorKind::NameTaken,
            ErrorKind::Busy,
            ErrorKind::PermissionDenied,
            ErrorKind::InvalidArgument,
            ErrorKind::BadMessage,
            ErrorKind::UnsupportedVersion,
            ErrorKind::Internal,
        ] {
            let err = ControlError::new(kind, "why");
            let text = serde_json::to_string(&WireResponse::Err(err.clone())).unwrap();
            let value: serde_json::Value = serde_json::from_str(&text).unwrap();
            assert_eq!(value["err"]["kind"], kind.as_str());
            let back: WireResponse = serde_json::from_str(&text).unwrap();
            assert_eq!(Response::from(back), Err(err));
        }
    }

    #[test]
    fn json_shapes_are_pinned() {
        let request = Request::new(Command::BranchBind {
            branch: "b2".into(),
            pid: 42,
        });
        assert_eq!(
            serde_json::to_value(&request).unwrap(),
            json!({"version": 1, "command": {"op": "branch-bind", "branch": "b2", "pid": 42}})
        );
        assert_eq!(
            serde_json::to_value(Request::new(Command::Status)).unwrap(),
            json!({"version": 1, "command": {"op": "status"}})
        );
        assert_eq!(
            serde_json::to_value(Request::new(Command::BranchCommit {
                branch: "feature".into(),
                resolve: Some(CommitResolve::Ours),
                delete: false,
            }))
            .unwrap(),
            json!({"version": 1, "command": {"op": "branch-commit", "branch": "feature", "resolve": "ours", "delete": false}})
        );
        // Older clients leave the options out.
        let minimal: Request = serde_json::from_value(
            json!({"version": 1, "command": {"op": "branch-commit", "branch": "feature"}}),
        )
        .unwrap();
        assert_eq!(
            minimal.command,
            Command::BranchCommit {
                branch: "feature".into(),
                resolve: None,
                delete: false
            }
        );
        let ok = WireResponse::Ok(Reply::Deleted { id: "s1".into() });
        assert_eq!(
            serde_json::to_value(&ok).unwrap(),
            json!({"ok": {"reply": "deleted", "value": {"id": "s1"}}})
        );
        let err = WireResponse::Err(ControlError::not_found("no branch \"x\""));
        assert_eq!(
            serde_json::to_value(&err).unwrap(),
            json!({"err": {"kind": "not-found", "message": "no branch \"x\""}})
        );
    }

    #[test]
    fn tidy_messages_are_one_bounded_line() {
        let err = ControlError::bad_message("unknown variant `a\nb\r\u{1b}[31mc`").tidy();
        assert_eq!(err.message, "unknown variant `a\\nb\\r\\u{1b}[31mc`");
        let long = ControlError::not_found("x".repeat(10_000)).tidy();
        assert_eq!(long.message.chars().count(), MAX_ERROR_MESSAGE_CHARS + 3);
        assert!(long.message.ends_with("..."));
        assert_eq!(long.kind, ErrorKind::NotFound);
        let short = ControlError::busy("fine as it is").tidy();
        assert_eq!(short.message, "fine as it is");
        // An op echoed back from a request is tidied by the decoder.
        let err =
            Request::decode(br#"{"version": 1, "command": {"op": "\nx\u001b"}}"#).unwrap_err();
        assert!(
            !err.message.contains('\n') && !err.message.contains('\u{1b}'),
            "{err}"
        );
    }

    #[test]
    fn control_error_displays_its_message_only() {
        let err = ControlError::permission_denied("only the mount owner may snapshot");
        assert_eq!(err.to_string(), "only the mount owner may snapshot");
        let v = ControlError::unsupported_version(7);
        assert!(v.message.contains('7') && v.message.contains('1'), "{v}");
    }
}
