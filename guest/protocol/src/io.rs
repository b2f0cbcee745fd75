//! Blocking frame I/O over any `Read`/`Write`.

use std::io::{ErrorKind, Read, Write};

use crate::{MAX_FRAME, Message, ProtocolError, decode, encode};

/// Checks a frame length prefix.
pub(crate) fn check_len(len: u32) -> Result<usize, ProtocolError> {
    if len == 0 || len as usize > MAX_FRAME {
        return Err(ProtocolError::BadLength(len));
    }
    Ok(len as usize)
}

/// Reads exactly `buf.len()` bytes; `Ok(false)` on a clean EOF before
/// the first byte when `eof_ok`.
fn read_full<R: Read>(r: &mut R, buf: &mut [u8], eof_ok: bool) -> Result<bool, ProtocolError> {
    let mut got = 0;
    while got < buf.len() {
        match r.read(&mut buf[got..]) {
            Ok(0) if got == 0 && eof_ok => return Ok(false),
            Ok(0) => return Err(ProtocolError::Truncated),
            Ok(n) => got += n,
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(ProtocolError::Io(e)),
        }
    }
    Ok(true)
}

/// Reads one message; [`ProtocolError::Closed`] on a clean end of stream.
pub fn read_message<R: Read>(r: &mut R) -> Result<Message, ProtocolError> {
    FrameReader::default().read(r)
}

/// Reuses one buffer across frames.
#[derive(Debug, Default)]
pub struct FrameReader {
    buf: Vec<u8>,
}

impl FrameReader {
    /// Reads one message; [`ProtocolError::Closed`] on a clean end of stream.
    pub fn read<R: Read>(&mut self, r: &mut R) -> Result<Message, ProtocolError> {
        let mut len = [0u8; 4];
        if !read_full(r, &mut len, true)? {
            return Err(ProtocolError::Closed);
        }
        let len = check_len(u32::from_le_bytes(len))?;
        self.buf.resize(len, 0);
        read_full(r, &mut self.buf, false)?;
        decode(&self.buf)
    }
}

/// Encodes and writes one message (one `write_all`, then flush).
pub fn write_message<W: Write>(w: &mut W, msg: &Message) -> Result<(), ProtocolError> {
    let frame = encode(msg)?;
    w.write_all(&frame).map_err(ProtocolError::Io)?;
    w.flush().map_err(ProtocolError::Io)
}
