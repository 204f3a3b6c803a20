//! The client side: find a mount's control socket ([`discover`]) and send it
//! commands ([`call`], or a [`Client`] for several on one connection).
//!
//! The client trusts nothing it reads: a missing or unparsable control file
//! means "not an AgentFS mount" (a dead mount, `ENOTCONN`, is named as such), and a reply that is not a well-framed
//! [`WireResponse`] is a [`ClientError::Protocol`] error rather than a panic.

use std::fs;
use std::io;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::endpoint::{control_file_path, Endpoint};
use crate::frame::{read_frame, write_message, FrameError};
use crate::protocol::{Command, ControlError, Reply, Request, Response, WireResponse};

/// How long the client waits for the daemon's answer. Generous: a snapshot
/// may wait for buffered writes to reach the daemon first.
pub const REPLY_TIMEOUT: Duration = Duration::from_secs(120);

/// Why a control call failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("{} is not an AgentFS mount (no .agentfs/control)", mount.display())]
    NotAgentFs { mount: PathBuf },
    #[error(
        "the AgentFS daemon of {m} is gone (transport endpoint is not connected); unmount it with fusermount3 -u {m}",
        m = mount.display()
    )]
    DeadMount { mount: PathBuf },
    #[error("cannot connect to the AgentFS control socket {}", socket.display())]
    Connect {
        socket: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("control connection failed")]
    Io(#[from] io::Error),
    #[error("bad reply from the AgentFS daemon: {0}")]
    Protocol(String),
    #[error(transparent)]
    Remote(#[from] ControlError),
}

/// Read `<mount>/.agentfs/control`. A FUSE mount whose daemon died answers
/// `ENOTCONN`: that is [`ClientError::DeadMount`], not "not AgentFS". So is
/// `ECONNABORTED`, what a request gets when it was waiting as the kernel
/// tore the connection down (after a daemon serving over io_uring dies, the
/// kernel ends its connection only once the ring is released, a moment later).
pub fn discover(mount: &Path) -> Result<Endpoint, ClientError> {
    let not_agentfs = || ClientError::NotAgentFs {
        mount: mount.to_path_buf(),
    };
    let bytes = fs::read(control_file_path(mount)).map_err(|e| {
        if matches!(
            e.raw_os_error(),
            Some(nix::libc::ENOTCONN | nix::libc::ECONNABORTED)
        ) {
            ClientError::DeadMount {
                mount: mount.to_path_buf(),
            }
        } else {
            not_agentfs()
        }
    })?;
    Endpoint::from_json_bytes(&bytes).map_err(|_| not_agentfs())
}

/// Send one command on a fresh connection and wait for its answer.
pub fn call(endpoint: &Endpoint, command: Command) -> Result<Reply, ClientError> {
    Client::connect(endpoint)?.call(command)
}

/// One connection to the daemon, carrying any number of requests in turn.
pub struct Client {
    stream: UnixStream,
}

impl Client {
    pub fn connect(endpoint: &Endpoint) -> Result<Client, ClientError> {
        let connect_error = |source| ClientError::Connect {
            socket: endpoint.socket.clone(),
            source,
        };
        let stream = UnixStream::connect(&endpoint.socket).map_err(connect_error)?;
        stream.set_read_timeout(Some(REPLY_TIMEOUT))?;
        stream.set_write_timeout(Some(REPLY_TIMEOUT))?;
        Ok(Client { stream })
    }

    /// Send `command` and wait for the answer; a daemon error is
    /// [`ClientError::Remote`].
    pub fn call(&mut self, command: Command) -> Result<Reply, ClientError> {
        self.request(command)?.map_err(ClientError::Remote)
    }

    /// Send `command` and return the daemon's answer as it came.
    pub fn request(&mut self, command: Command) -> Result<Response, ClientError> {
        write_message(&mut self.stream, &Request::new(command)).map_err(frame_error)?;
        let body = read_frame(&mut self.stream)
            .map_err(frame_error)?
            .ok_or_else(|| {
                ClientError::Protocol("the daemon closed the connection without answering".into())
            })?;
        let wire: WireResponse = serde_json::from_slice(&body)
            .map_err(|e| ClientError::Protocol(format!("unparsable reply: {e}")))?;
        Ok(wire.into())
    }
}

fn frame_error(e: FrameError) -> ClientError {
    match e {
        FrameError::Io(e) => ClientError::Io(e),
        other => ClientError::Protocol(other.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_directory_is_not_agentfs() {
        let dir = tempfile::tempdir().unwrap();
        let err = discover(dir.path()).unwrap_err();
        assert!(matches!(&err, ClientError::NotAgentFs { mount } if mount == dir.path()));
        assert_eq!(
            err.to_string(),
            format!(
                "{} is not an AgentFS mount (no .agentfs/control)",
                dir.path().display()
            )
        );
    }

    #[test]
    fn unparsable_control_file_is_not_agentfs() {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir(dir.path().join(".agentfs")).unwrap();
        fs::write(control_file_path(dir.path()), b"garbage").unwrap();
        assert!(matches!(
            discover(dir.path()),
            Err(ClientError::NotAgentFs { .. })
        ));
    }

    #[test]
    fn discover_reads_the_endpoint() {
        let dir = tempfile::tempdir().unwrap();
        let endpoint = Endpoint {
            protocol: 1,
            socket: dir.path().join("s.sock"),
            mountpoint: dir.path().to_path_buf(),
        };
        fs::create_dir(dir.path().join(".agentfs")).unwrap();
        fs::write(control_file_path(dir.path()), endpoint.to_json_bytes()).unwrap();
        assert_eq!(discover(dir.path()).unwrap(), endpoint);
    }

    #[test]
    fn connect_to_a_missing_socket_names_it() {
        let dir = tempfile::tempdir().unwrap();
        let endpoint = Endpoint {
            protocol: 1,
            socket: dir.path().join("nobody.sock"),
            mountpoint: dir.path().to_path_buf(),
        };
        let err = call(&endpoint, Command::Status).unwrap_err();
        match err {
            ClientError::Connect { socket, .. } => assert_eq!(socket, endpoint.socket),
            other => panic!("expected Connect, got {other:?}"),
        }
    }
}
