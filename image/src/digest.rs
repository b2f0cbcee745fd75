//! `sha256:<hex>` content digests and a hashing writer.

use std::fmt;
use std::io::{self, Read, Write};

use sha2::{Digest as _, Sha256};

/// Digest parsing errors.
#[derive(Debug, thiserror::Error)]
pub enum DigestError {
    /// Only sha256 is supported.
    #[error("unsupported digest algorithm in {0:?} (only sha256)")]
    Algorithm(String),
    /// Not 64 lowercase hex digits.
    #[error("malformed digest {0:?}")]
    Malformed(String),
}

/// A validated `sha256:` digest.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Digest(String);

impl Digest {
    /// Parses `sha256:<64 lowercase hex>`.
    pub fn parse(s: &str) -> Result<Digest, DigestError> {
        let Some((alg, hex)) = s.split_once(':') else {
            return Err(DigestError::Malformed(s.chars().take(100).collect()));
        };
        if alg != "sha256" {
            return Err(DigestError::Algorithm(s.chars().take(100).collect()));
        }
        if hex.len() != 64
            || !hex
                .bytes()
                .all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(&c))
        {
            return Err(DigestError::Malformed(s.chars().take(100).collect()));
        }
        Ok(Digest(s.to_string()))
    }

    /// The digest of `bytes`.
    pub fn of(bytes: &[u8]) -> Digest {
        Digest::from_hasher(Sha256::new_with_prefix(bytes))
    }

    fn from_hasher(h: Sha256) -> Digest {
        let out = h.finalize();
        let mut s = String::with_capacity(71);
        s.push_str("sha256:");
        for b in out {
            s.push_str(&format!("{b:02x}"));
        }
        Digest(s)
    }

    /// The 64 hex digits.
    pub fn hex(&self) -> &str {
        &self.0[7..]
    }

    /// The 12-digit short form docker prints.
    pub fn short(&self) -> &str {
        &self.0[7..19]
    }

    /// The whole `sha256:...` string.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A reader that hashes and counts what passes through it and optionally
/// copies it to a writer (the blob's temp file).
#[derive(Debug)]
pub struct Tee<R, W> {
    inner: R,
    copy: W,
    hasher: Sha256,
    /// Bytes read so far.
    pub count: u64,
    limit: u64,
}

impl<R, W> Tee<R, W> {
    /// The reader.
    pub fn inner_ref(&self) -> &R {
        &self.inner
    }
}

impl<R: Read, W: Write> Tee<R, W> {
    /// Reads from `inner`, copying to `copy`; fails past `limit` bytes.
    pub fn new(inner: R, copy: W, limit: u64) -> Self {
        Tee {
            inner,
            copy,
            hasher: Sha256::new(),
            count: 0,
            limit,
        }
    }

    /// Reads what remains (a decompressor may stop before the end).
    pub fn drain(&mut self) -> io::Result<()> {
        let mut buf = vec![0u8; 64 << 10];
        while self.read(&mut buf)? != 0 {}
        Ok(())
    }

    /// The digest of everything read, and the writer.
    pub fn finish(self) -> (Digest, W) {
        (Digest::from_hasher(self.hasher), self.copy)
    }
}

impl<R: Read, W: Write> Read for Tee<R, W> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.count += n as u64;
        if self.count > self.limit {
            return Err(io::Error::other(format!(
                "more than the {} bytes announced",
                self.limit
            )));
        }
        self.hasher.update(&buf[..n]);
        self.copy.write_all(&buf[..n])?;
        Ok(n)
    }
}

/// A writer that only hashes and counts.
#[derive(Debug, Default)]
pub struct HashSink {
    hasher: Sha256,
    /// Bytes written.
    pub count: u64,
}

impl HashSink {
    /// The digest of everything written.
    pub fn finish(self) -> Digest {
        Digest::from_hasher(self.hasher)
    }
}

impl Write for HashSink {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.hasher.update(buf);
        self.count += buf.len() as u64;
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_and_hash() {
        let d = Digest::of(b"");
        assert_eq!(
            d.as_str(),
            "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        assert_eq!(Digest::parse(d.as_str()).ok(), Some(d.clone()));
        assert_eq!(d.short(), "e3b0c44298fc");
        assert!(Digest::parse("sha512:00").is_err());
        assert!(Digest::parse(&d.as_str().to_uppercase().replace("SHA256", "sha256")).is_err());
        assert!(Digest::parse("sha256:abc").is_err());
    }

    #[test]
    fn tee_hashes_copies_and_limits() {
        let mut out = Vec::new();
        let mut t = Tee::new(&b"hello"[..], &mut out, 5);
        t.drain().unwrap_or_else(|e| panic!("{e}"));
        let (d, _) = t.finish();
        assert_eq!(d, Digest::of(b"hello"));
        assert_eq!(out, b"hello");
        let mut t = Tee::new(&b"hello!"[..], std::io::sink(), 5);
        assert!(t.drain().is_err());
    }
}
