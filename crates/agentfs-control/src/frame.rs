//! Message framing: a 4-byte big-endian body length, then that many bytes of
//! JSON. One connection carries any number of frames in sequence.
//!
//! The reader checks the declared length against [`MAX_MESSAGE_BYTES`] before
//! allocating, so a hostile length prefix costs nothing, and tells a clean end
//! of stream (between frames) apart from a frame cut short.

use std::io::{self, Read, Write};

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::protocol::MAX_MESSAGE_BYTES;

/// Why a frame could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("message of {len} bytes exceeds the limit of {MAX_MESSAGE_BYTES} bytes")]
    TooLarge { len: usize },
    #[error("connection closed in the middle of a message")]
    Truncated,
    #[error("message is not valid JSON for this protocol: {0}")]
    Json(#[from] serde_json::Error),
    #[error("control connection I/O failed")]
    Io(#[from] io::Error),
}

/// Write one frame holding `body`.
pub fn write_frame(w: &mut impl Write, body: &[u8]) -> Result<(), FrameError> {
    if body.len() > MAX_MESSAGE_BYTES {
        return Err(FrameError::TooLarge { len: body.len() });
    }
    // The check above bounds the length well below u32::MAX.
    let len = u32::try_from(body.len()).map_err(|_| FrameError::TooLarge { len: body.len() })?;
    let mut buf = Vec::with_capacity(4 + body.len());
    buf.extend_from_slice(&len.to_be_bytes());
    buf.extend_from_slice(body);
    w.write_all(&buf)?;
    w.flush()?;
    Ok(())
}

/// Serialize `message` as JSON and write it as one frame.
pub fn write_message<T: Serialize>(w: &mut impl Write, message: &T) -> Result<(), FrameError> {
    let body = serde_json::to_vec(message)?;
    write_frame(w, &body)
}

/// Read one frame's body. `Ok(None)` means the peer closed the stream cleanly
/// before the first byte of a frame.
pub fn read_frame(r: &mut impl Read) -> Result<Option<Vec<u8>>, FrameError> {
    let mut header = [0u8; 4];
    if !fill(r, &mut header, true)? {
        return Ok(None);
    }
    let len = u32::from_be_bytes(header) as usize;
    if len > MAX_MESSAGE_BYTES {
        return Err(FrameError::TooLarge { len });
    }
    let mut body = vec![0u8; len];
    fill(r, &mut body, false)?;
    Ok(Some(body))
}

/// Read one frame and parse it as JSON. `Ok(None)` as for [`read_frame`].
pub fn read_message<T: DeserializeOwned>(r: &mut impl Read) -> Result<Option<T>, FrameError> {
    match read_frame(r)? {
        None => Ok(None),
        Some(body) => Ok(Some(serde_json::from_slice(&body)?)),
    }
}

/// Fill `buf` completely. Returns `Ok(false)` only when `eof_ok` and the
/// stream ended before any byte was read; an end after some bytes is
/// [`FrameError::Truncated`].
fn fill(r: &mut impl Read, buf: &mut [u8], eof_ok: bool) -> Result<bool, FrameError> {
    let mut done = 0;
    while done < buf.len() {
        match r.read(&mut buf[done..]) {
            Ok(0) if done == 0 && eof_ok => return Ok(false),
            Ok(0) => return Err(FrameError::Truncated),
            Ok(n) => done += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(FrameError::Io(e)),
        }
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{Command, Request};
    use std::io::Cursor;

    #[test]
    fn round_trip_of_several_frames_on_one_stream() {
        let mut wire = Vec::new();
        let a = Request::new(Command::Status);
        let b = Request::new(Command::SnapshotDelete {
            snapshot: "s9".into(),
        });
        write_message(&mut wire, &a).unwrap();
        write_message(&mut wire, &b).unwrap();
        write_frame(&mut wire, b"").unwrap();
        let first_len = u32::from_be_bytes(wire[..4].try_into().unwrap()) as usize;
        assert_eq!(first_len, serde_json::to_vec(&a).unwrap().len());

        let mut r = Cursor::new(wire);
        assert_eq!(read_message::<Request>(&mut r).unwrap(), Some(a));
        assert_eq!(read_message::<Request>(&mut r).unwrap(), Some(b));
        assert_eq!(read_frame(&mut r).unwrap(), Some(Vec::new()));
        assert_eq!(read_frame(&mut r).unwrap(), None);
    }

    #[test]
    fn oversized_length_is_refused_before_reading_the_body() {
        let mut wire = ((MAX_MESSAGE_BYTES + 1) as u32).to_be_bytes().to_vec();
        wire.extend_from_slice(b"{}");
        let err = read_frame(&mut Cursor::new(wire)).unwrap_err();
        assert!(
            matches!(err, FrameError::TooLarge { len } if len == MAX_MESSAGE_BYTES + 1),
            "{err:?}"
        );
        let err = write_frame(&mut Vec::new(), &vec![b' '; MAX_MESSAGE_BYTES + 1]).unwrap_err();
        assert!(matches!(err, FrameError::TooLarge { .. }), "{err:?}");
    }

    #[test]
    fn exactly_max_bytes_is_accepted() {
        let mut wire = Vec::new();
        write_frame(&mut wire, &vec![b'x'; MAX_MESSAGE_BYTES]).unwrap();
        let body = read_frame(&mut Cursor::new(wire)).unwrap().unwrap();
        assert_eq!(body.len(), MAX_MESSAGE_BYTES);
    }

    #[test]
    fn cut_short_frames_are_truncated_not_eof() {
        // Header cut short.
        let err = read_frame(&mut Cursor::new(vec![0u8, 0])).unwrap_err();
        assert!(matches!(err, FrameError::Truncated), "{err:?}");
        // Body cut short.
        let mut wire = 10u32.to_be_bytes().to_vec();
        wire.extend_from_slice(b"{\"a\"");
        let err = read_frame(&mut Cursor::new(wire)).unwrap_err();
        assert!(matches!(err, FrameError::Truncated), "{err:?}");
    }

    #[test]
    fn garbage_body_is_a_json_error() {
        let mut wire = Vec::new();
        write_frame(&mut wire, b"\xff\xfenot json").unwrap();
        let err = read_message::<Request>(&mut Cursor::new(wire)).unwrap_err();
        assert!(matches!(err, FrameError::Json(_)), "{err:?}");
    }
}
