//! A tiny little-endian binary codec for snapshot state: fixed field order,
//! length-prefixed sequences, every read bounds-checked. The reader faces
//! files anyone could have written, so it never panics and never allocates
//! more than the input could hold.

/// Why decoding failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CodecError {
    /// The input ended inside a field.
    #[error("state ends early (needed {need} more bytes at offset {at})")]
    Truncated {
        /// Where.
        at: usize,
        /// Bytes missing.
        need: usize,
    },
    /// A value that cannot be what the field holds.
    #[error("invalid {0} in saved state")]
    Invalid(&'static str),
    /// A sequence longer than its field allows.
    #[error("{what} has {len} entries (at most {max})")]
    TooLong {
        /// The field.
        what: &'static str,
        /// Length found.
        len: u64,
        /// Limit.
        max: usize,
    },
    /// Bytes left over after the last field.
    #[error("{0} unexpected bytes after the saved state")]
    Trailing(usize),
}

/// Appends fields to a buffer.
#[derive(Debug, Default)]
pub struct Writer {
    buf: Vec<u8>,
}

impl Writer {
    /// An empty writer.
    pub fn new() -> Self {
        Self::default()
    }
    /// The bytes written.
    pub fn into_bytes(self) -> Vec<u8> {
        self.buf
    }
    /// One byte.
    pub fn u8(&mut self, v: u8) {
        self.buf.push(v);
    }
    /// A bool as one byte.
    pub fn bool(&mut self, v: bool) {
        self.buf.push(u8::from(v));
    }
    /// u16 LE.
    pub fn u16(&mut self, v: u16) {
        self.buf.extend_from_slice(&v.to_le_bytes());
    }
    /// u32 LE.
    pub fn u32(&mut self, v: u32) {
        self.buf.extend_from_slice(&v.to_le_bytes());
    }
    /// u64 LE.
    pub fn u64(&mut self, v: u64) {
        self.buf.extend_from_slice(&v.to_le_bytes());
    }
    /// A length (u32) then the bytes.
    pub fn bytes(&mut self, v: &[u8]) {
        self.len(v.len());
        self.buf.extend_from_slice(v);
    }
    /// A sequence length.
    pub fn len(&mut self, n: usize) {
        self.u32(u32::try_from(n).unwrap_or(u32::MAX));
    }
}

/// Reads fields back, in the order they were written.
#[derive(Debug)]
pub struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    /// Reads from `buf`.
    pub fn new(buf: &'a [u8]) -> Self {
        Reader { buf, pos: 0 }
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], CodecError> {
        let rest = self.buf.len() - self.pos;
        if n > rest {
            return Err(CodecError::Truncated {
                at: self.pos,
                need: n - rest,
            });
        }
        let s = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], CodecError> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.take(N)?);
        Ok(a)
    }

    /// One byte.
    pub fn u8(&mut self) -> Result<u8, CodecError> {
        Ok(self.array::<1>()?[0])
    }
    /// A bool; anything but 0 or 1 is invalid.
    pub fn bool(&mut self) -> Result<bool, CodecError> {
        match self.u8()? {
            0 => Ok(false),
            1 => Ok(true),
            _ => Err(CodecError::Invalid("boolean")),
        }
    }
    /// u16 LE.
    pub fn u16(&mut self) -> Result<u16, CodecError> {
        Ok(u16::from_le_bytes(self.array()?))
    }
    /// u32 LE.
    pub fn u32(&mut self) -> Result<u32, CodecError> {
        Ok(u32::from_le_bytes(self.array()?))
    }
    /// u64 LE.
    pub fn u64(&mut self) -> Result<u64, CodecError> {
        Ok(u64::from_le_bytes(self.array()?))
    }
    /// A sequence length of at most `max`.
    pub fn len(&mut self, what: &'static str, max: usize) -> Result<usize, CodecError> {
        let n = self.u32()?;
        if n as usize > max {
            return Err(CodecError::TooLong {
                what,
                len: u64::from(n),
                max,
            });
        }
        Ok(n as usize)
    }
    /// Length-prefixed bytes, at most `max`.
    pub fn bytes(&mut self, what: &'static str, max: usize) -> Result<Vec<u8>, CodecError> {
        let n = self.len(what, max)?;
        Ok(self.take(n)?.to_vec())
    }
    /// Fails unless every byte was read.
    pub fn finish(self) -> Result<(), CodecError> {
        match self.buf.len() - self.pos {
            0 => Ok(()),
            n => Err(CodecError::Trailing(n)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_round_trip_and_truncation_is_reported() {
        let mut w = Writer::new();
        w.u8(7);
        w.bool(true);
        w.u16(0xbeef);
        w.u32(0xdead_beef);
        w.u64(u64::MAX - 1);
        w.bytes(b"abc");
        let b = w.into_bytes();
        let mut r = Reader::new(&b);
        assert_eq!(r.u8(), Ok(7));
        assert_eq!(r.bool(), Ok(true));
        assert_eq!(r.u16(), Ok(0xbeef));
        assert_eq!(r.u32(), Ok(0xdead_beef));
        assert_eq!(r.u64(), Ok(u64::MAX - 1));
        assert_eq!(r.bytes("x", 3), Ok(b"abc".to_vec()));
        assert_eq!(r.finish(), Ok(()));

        let mut r = Reader::new(&b[..3]);
        r.u8().ok();
        r.bool().ok();
        assert_eq!(r.u16(), Err(CodecError::Truncated { at: 2, need: 1 }));
        let mut r = Reader::new(&b[15..]);
        assert!(matches!(r.bytes("x", 2), Err(CodecError::TooLong { .. })));
        assert_eq!(
            Reader::new(&[2]).bool(),
            Err(CodecError::Invalid("boolean"))
        );
        assert_eq!(Reader::new(&[0, 0]).finish(), Err(CodecError::Trailing(2)));
    }
}
