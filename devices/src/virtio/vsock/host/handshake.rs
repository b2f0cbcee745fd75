//! The hybrid-vsock text handshake: `CONNECT <port>\n`, answered
//! `OK <hostport>\n`.

use tokio::io::{AsyncRead, AsyncReadExt};

/// Longest accepted `CONNECT` line, newline included (Firecracker uses 32).
pub const MAX_LINE: usize = 32;

/// Why a `CONNECT` line was rejected.
#[derive(Debug, thiserror::Error)]
pub enum HandshakeError {
    /// The line is not `CONNECT <port>`.
    #[error("malformed CONNECT line")]
    Malformed,
    /// No newline within [`MAX_LINE`] bytes.
    #[error("CONNECT line too long")]
    TooLong,
    /// The peer closed or failed before the newline.
    #[error("reading the CONNECT line")]
    Io(#[source] std::io::Error),
}

/// Parses `CONNECT <port>` (keyword case-insensitive, newline optional).
pub fn parse_connect(line: &[u8]) -> Result<u32, HandshakeError> {
    let line = std::str::from_utf8(line).map_err(|_| HandshakeError::Malformed)?;
    let line = line.strip_suffix('\n').unwrap_or(line);
    let line = line.strip_suffix('\r').unwrap_or(line);
    let mut words = line.split(' ').filter(|w| !w.is_empty());
    let (Some(cmd), Some(port), None) = (words.next(), words.next(), words.next()) else {
        return Err(HandshakeError::Malformed);
    };
    if !cmd.eq_ignore_ascii_case("connect") || !port.bytes().all(|b| b.is_ascii_digit()) {
        return Err(HandshakeError::Malformed);
    }
    port.parse().map_err(|_| HandshakeError::Malformed)
}

/// The reply to an accepted connection.
pub fn ok_line(host_port: u32) -> Vec<u8> {
    format!("OK {host_port}\n").into_bytes()
}

/// Reads one `CONNECT` line byte by byte, so no data after it is consumed.
pub async fn read_connect<R: AsyncRead + Unpin>(r: &mut R) -> Result<u32, HandshakeError> {
    let mut line = Vec::with_capacity(MAX_LINE);
    while line.len() < MAX_LINE {
        let b = r.read_u8().await.map_err(HandshakeError::Io)?;
        line.push(b);
        if b == b'\n' {
            return parse_connect(&line);
        }
    }
    Err(HandshakeError::TooLong)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_connect_lines() {
        assert_eq!(parse_connect(b"CONNECT 52\n").ok(), Some(52));
        assert_eq!(parse_connect(b"connect 1024\n").ok(), Some(1024));
        assert_eq!(parse_connect(b"Connect 7\r\n").ok(), Some(7));
        assert_eq!(parse_connect(b"CONNECT 4294967295\n").ok(), Some(u32::MAX));
        for bad in [
            &b"CONNECT\n"[..],
            b"CONNECT -1\n",
            b"CONNECT 4294967296\n",
            b"LISTEN 5\n",
            b"CONNECT 5 6\n",
            b"CONNECT +5\n",
            b"\xff\n",
        ] {
            assert!(parse_connect(bad).is_err(), "{bad:?}");
        }
        assert_eq!(ok_line(1 << 30), b"OK 1073741824\n");
    }

    #[test]
    fn reads_only_the_line() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime");
        rt.block_on(async {
            let mut input: &[u8] = b"CONNECT 9\nrest";
            assert_eq!(read_connect(&mut input).await.ok(), Some(9));
            assert_eq!(input, b"rest");
            let mut long: &[u8] = &[b'x'; 64];
            assert!(matches!(
                read_connect(&mut long).await,
                Err(HandshakeError::TooLong)
            ));
            let mut short: &[u8] = b"CONN";
            assert!(matches!(
                read_connect(&mut short).await,
                Err(HandshakeError::Io(_))
            ));
        });
    }
}
