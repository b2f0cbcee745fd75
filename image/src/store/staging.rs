//! Blobs on their way into the store: written to `tmp/`, verified, then
//! renamed in under the lock together with the reference that needs them.
//! Dropped without [`Staging::commit`], it removes its temp files.

use std::fs;
use std::io::{self, BufReader, Read, Write};
use std::path::PathBuf;

use super::{Store, StoreError, io_err};
use crate::digest::{Digest, HashSink, Tee};
use crate::manifest::{Compression, Manifest};

/// Blobs verified and waiting to be committed.
#[derive(Debug)]
pub struct Staging<'a> {
    store: &'a Store,
    files: Vec<(PathBuf, Digest)>,
}

/// A reader whose failures are remembered, so a network error seen through
/// a decompressor is reported as what it is.
struct Remember<R> {
    inner: R,
    error: Option<String>,
}

impl<R: Read> Read for Remember<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.inner
            .read(buf)
            .inspect_err(|e| self.error = Some(e.to_string()))
    }
}

/// A decompressing reader for `c`.
pub(crate) fn decoder<'r, R: Read + 'r>(r: R, c: Compression) -> io::Result<Box<dyn Read + 'r>> {
    Ok(match c {
        Compression::None => Box::new(r),
        Compression::Gzip => Box::new(flate2::read::MultiGzDecoder::new(BufReader::with_capacity(
            256 << 10,
            r,
        ))),
        Compression::Zstd => Box::new(
            ruzstd::decoding::StreamingDecoder::new(BufReader::with_capacity(256 << 10, r))
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, format!("zstd: {e}")))?,
        ),
    })
}

impl<'a> Staging<'a> {
    /// Starts staging into `store`.
    pub fn new(store: &'a Store) -> Self {
        Staging {
            store,
            files: Vec::new(),
        }
    }

    /// Takes over another staging's files (from a download thread).
    pub fn absorb(&mut self, mut other: Staging<'_>) {
        self.files.append(&mut other.files);
    }

    /// Stages `bytes`, checking them against `expected` when given.
    pub fn add_bytes(
        &mut self,
        bytes: &[u8],
        expected: Option<&Digest>,
        what: &str,
    ) -> Result<Digest, StoreError> {
        let actual = Digest::of(bytes);
        if let Some(e) = expected
            && *e != actual
        {
            return Err(StoreError::DigestMismatch {
                what: what.into(),
                expected: e.clone(),
                actual,
            });
        }
        if self.store.has_blob(&actual) || self.files.iter().any(|(_, d)| *d == actual) {
            return Ok(actual);
        }
        let (p, mut f) = self.store.temp_file()?;
        self.files.push((p.clone(), actual.clone()));
        f.write_all(bytes).map_err(io_err("writing", &p))?;
        Ok(actual)
    }

    /// Streams a blob to a temp file, checking its size and digest; for a
    /// layer (`Some((compression, diff_id))`) it is also decompressed on the
    /// way and the uncompressed digest checked against the config's diff_id.
    /// `progress` gets the bytes read so far.
    pub fn add_stream<R: Read>(
        &mut self,
        r: R,
        expected: Option<&Digest>,
        size: Option<u64>,
        layer: Option<(Compression, &Digest)>,
        progress: &mut dyn FnMut(u64),
    ) -> Result<Digest, StoreError> {
        let unknown = Digest::of(b"");
        let expected_or = expected.unwrap_or(&unknown);
        let what = || match expected {
            Some(e) => format!("blob {e}"),
            None => "blob".to_string(),
        };
        let (p, f) = self.store.temp_file()?;
        self.files.push((p.clone(), expected_or.clone()));
        let slot = self.files.len() - 1;
        let f = io::BufWriter::with_capacity(1 << 20, f);
        let mut src = Remember {
            inner: r,
            error: None,
        };
        let mut tee = Tee::new(&mut src, f, size.unwrap_or(64 << 30));
        let read_err = |e: io::Error, remembered: Option<String>| match remembered {
            Some(net) => StoreError::Io {
                what: "downloading",
                path: PathBuf::from(what()),
                source: io::Error::other(net),
            },
            None => StoreError::Layer {
                digest: expected_or.clone(),
                source: e,
            },
        };
        let mut counted = Progress {
            tee: &mut tee,
            progress,
            last: 0,
        };
        let diff = match layer {
            Some((c, diff_id)) => {
                let mut sink = HashSink::default();
                let res = decoder(&mut counted, c).and_then(|mut d| io::copy(&mut d, &mut sink));
                if let Err(e) = res {
                    let net = src_error(&counted);
                    if net.is_none() && counted.drain().is_ok() {
                        // Bytes that are not what was announced explain
                        // a decompression failure best.
                        let count = tee.count;
                        let (actual, _) = tee.finish();
                        if let Some(exp) = expected
                            && actual != *exp
                        {
                            return Err(StoreError::DigestMismatch {
                                what: what(),
                                expected: exp.clone(),
                                actual,
                            });
                        }
                        if let Some(s) = size
                            && s != count
                        {
                            return Err(StoreError::SizeMismatch {
                                what: what(),
                                expected: s,
                                actual: count,
                            });
                        }
                    }
                    return Err(read_err(e, net));
                }
                Some((sink.finish(), diff_id))
            }
            None => None,
        };
        if let Err(e) = counted.drain() {
            let net = src_error(&counted);
            return Err(read_err(e, net));
        }
        let count = tee.count;
        let (actual, w) = tee.finish();
        let f = w
            .into_inner()
            .map_err(|e| io_err("writing", &p)(e.into_error()))?;
        drop(f);
        if let Some(s) = size
            && s != count
        {
            return Err(StoreError::SizeMismatch {
                what: what(),
                expected: s,
                actual: count,
            });
        }
        if let Some(e) = expected
            && actual != *e
        {
            return Err(StoreError::DigestMismatch {
                what: what(),
                expected: e.clone(),
                actual,
            });
        }
        if let Some((got, want)) = diff
            && got != *want
        {
            return Err(StoreError::DigestMismatch {
                what: format!("layer {actual} (uncompressed)"),
                expected: want.clone(),
                actual: got,
            });
        }
        self.files[slot].1 = actual.clone();
        Ok(actual)
    }

    /// Moves the staged blobs in, checks the image is complete, and points
    /// `keys` at `manifest_digest`, all under the store lock.
    pub fn commit(
        mut self,
        manifest_digest: &Digest,
        manifest: &Manifest,
        keys: &[String],
    ) -> Result<(), StoreError> {
        let _g = self.store.lock()?;
        for (tmp, d) in std::mem::take(&mut self.files) {
            let dst = self.store.blob_path(&d);
            if dst.is_file() {
                let _ = fs::remove_file(&tmp);
            } else if let Err(e) = fs::rename(&tmp, &dst) {
                let _ = fs::remove_file(&tmp);
                return Err(io_err("storing", &dst)(e));
            }
        }
        let mut needed = vec![manifest_digest.clone(), manifest.config.digest("config")?];
        for l in &manifest.layers {
            needed.push(l.digest("layer")?);
        }
        if let Some(missing) = needed.into_iter().find(|d| !self.store.has_blob(d)) {
            return Err(StoreError::MissingBlob(missing));
        }
        for k in keys {
            self.store.set_ref(k, manifest_digest)?;
        }
        Ok(())
    }
}

fn src_error<R, W>(p: &Progress<'_, '_, &mut Remember<R>, W>) -> Option<String> {
    p.tee.inner_ref().error.clone()
}

struct Progress<'t, 'p, R, W> {
    tee: &'t mut Tee<R, W>,
    progress: &'p mut dyn FnMut(u64),
    last: u64,
}

impl<R: Read, W: Write> Progress<'_, '_, R, W> {
    fn drain(&mut self) -> io::Result<()> {
        let mut buf = vec![0u8; 64 << 10];
        while self.read(&mut buf)? != 0 {}
        Ok(())
    }
}

impl<R: Read, W: Write> Read for Progress<'_, '_, R, W> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.tee.read(buf)?;
        if self.tee.count - self.last >= 256 << 10 || n == 0 {
            self.last = self.tee.count;
            (self.progress)(self.tee.count);
        }
        Ok(n)
    }
}

impl Drop for Staging<'_> {
    fn drop(&mut self) {
        for (p, _) in &self.files {
            let _ = fs::remove_file(p);
        }
    }
}
