//! Async (tokio) frame I/O.

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::io::check_len;
use crate::{Message, ProtocolError, decode, encode};

/// Reads one message; [`ProtocolError::Closed`] on a clean end of stream.
///
/// Not cancel-safe: dropping the future mid-frame loses the stream position.
pub async fn read_message_async<R: AsyncRead + Unpin>(r: &mut R) -> Result<Message, ProtocolError> {
    let mut len = [0u8; 4];
    let mut got = 0;
    while got < 4 {
        match r.read(&mut len[got..]).await.map_err(ProtocolError::Io)? {
            0 if got == 0 => return Err(ProtocolError::Closed),
            0 => return Err(ProtocolError::Truncated),
            n => got += n,
        }
    }
    let len = check_len(u32::from_le_bytes(len))?;
    let mut body = vec![0; len];
    r.read_exact(&mut body).await.map_err(|e| match e.kind() {
        std::io::ErrorKind::UnexpectedEof => ProtocolError::Truncated,
        _ => ProtocolError::Io(e),
    })?;
    decode(&body)
}

/// Encodes and writes one message, then flushes.
pub async fn write_message_async<W: AsyncWrite + Unpin>(
    w: &mut W,
    msg: &Message,
) -> Result<(), ProtocolError> {
    let frame = encode(msg)?;
    w.write_all(&frame).await.map_err(ProtocolError::Io)?;
    w.flush().await.map_err(ProtocolError::Io)
}
