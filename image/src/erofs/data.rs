//! The data area: file contents are streamed into consecutive blocks as the
//! tar is read. Big files whose chunks are all zeros keep those chunks as
//! holes (chunk-based inodes with null entries); only the last partial
//! block of a file is held back, to be stored inline after its inode.

use std::io::{Read, Seek, SeekFrom, Write};

use super::ConvertError;
use super::format::{BLK, BLK_BITS, BLK_USIZE, NULL_ADDR};
use super::tree::FileData;

/// Files at least this big are checked for all-zero chunks.
const SPARSE_MIN: u64 = 64 << 10;
/// At most this many chunks per file: bigger files get bigger chunks.
const MAX_CHUNKS: u64 = 1 << 16;

/// Writes blocks sequentially from block 1 (block 0 holds the superblock).
#[derive(Debug)]
pub(crate) struct DataWriter<W: Write + Seek> {
    out: W,
    /// Next free block.
    next_blk: u64,
    max_bytes: u64,
    buf: Vec<u8>,
    /// Bytes of tails still allowed in memory.
    inline_budget: u64,
}

impl<W: Write + Seek> DataWriter<W> {
    /// Starts an image: block 0 is zeros until the superblock is written.
    pub(crate) fn new(
        mut out: W,
        max_bytes: u64,
        inline_budget: u64,
    ) -> Result<Self, ConvertError> {
        out.write_all(&[0u8; BLK_USIZE])?;
        Ok(DataWriter {
            out,
            next_blk: 1,
            max_bytes,
            buf: Vec::new(),
            inline_budget,
        })
    }

    /// Fails if `blocks` more blocks would pass the size limit or the
    /// 32-bit block addresses.
    pub(crate) fn reserve(&self, blocks: u64) -> Result<u32, ConvertError> {
        let end = self.next_blk.saturating_add(blocks);
        if end.saturating_mul(BLK) > self.max_bytes {
            return Err(ConvertError::ImageTooLarge(self.max_bytes));
        }
        u32::try_from(end).map_err(|_| ConvertError::ImageTooLarge(self.max_bytes))?;
        Ok(self.next_blk as u32)
    }

    /// Appends `data` padded with zeros to whole blocks; returns its first block.
    pub(crate) fn write_blocks(&mut self, data: &[u8]) -> Result<u32, ConvertError> {
        let blocks = (data.len() as u64).div_ceil(BLK);
        let at = self.reserve(blocks)?;
        self.out.write_all(data)?;
        let pad = (blocks * BLK) as usize - data.len();
        if pad > 0 {
            self.out.write_all(&[0u8; BLK_USIZE][..pad])?;
        }
        self.next_blk += blocks;
        Ok(at)
    }

    /// Reserves `tail` bytes of memory for an inline tail if allowed.
    fn take_budget(&mut self, tail: usize, inline_room: usize) -> bool {
        if tail <= inline_room && tail as u64 <= self.inline_budget {
            self.inline_budget -= tail as u64;
            true
        } else {
            false
        }
    }

    /// Streams a regular file of `size` bytes from `r`. `inline_room` is how
    /// many tail bytes fit in the inode's block after its core and xattrs.
    pub(crate) fn write_file(
        &mut self,
        r: &mut impl Read,
        size: u64,
        inline_room: usize,
    ) -> Result<FileData, ConvertError> {
        // Fail early rather than after streaming most of a huge file.
        self.reserve(size.div_ceil(BLK))?;
        let chunkbits = chunk_bits(size);
        let chunk = 1u64 << chunkbits;
        let sparse = size >= SPARSE_MIN;
        let step = if sparse {
            chunk
        } else {
            size.clamp(1, 1 << 20)
        };
        let mut buf = std::mem::take(&mut self.buf);
        buf.resize(step.min(size) as usize, 0);
        let mut map = Vec::new();
        let mut holes = false;
        let mut tail = Vec::new();
        let mut first = None;
        let mut off = 0u64;
        while off < size {
            let n = step.min(size - off) as usize;
            let b = &mut buf[..n];
            read_full(r, b)?;
            off += n as u64;
            if sparse && all_zero(b) {
                map.push(NULL_ADDR);
                holes = true;
                continue;
            }
            let last = off == size;
            let part = n % BLK_USIZE;
            let at = if last && !holes && part != 0 && self.take_budget(part, inline_room) {
                tail = b[n - part..].to_vec();
                let whole = &b[..n - part];
                let at = self.reserve(0)?;
                if !whole.is_empty() {
                    self.write_blocks(whole)?;
                }
                at
            } else {
                self.write_blocks(b)?
            };
            first.get_or_insert(at);
            map.push(at);
        }
        self.buf = buf;
        if holes {
            return Ok(FileData::Chunked { chunkbits, map });
        }
        Ok(FileData::Flat {
            blkaddr: first.unwrap_or(0),
            tail,
        })
    }

    /// Appends metadata bytes (their blocks were reserved by the caller).
    pub(crate) fn write_raw(&mut self, bytes: &[u8]) -> Result<(), ConvertError> {
        self.out.write_all(bytes)?;
        Ok(())
    }

    /// Writes `bytes` at absolute image offset `at` (after the data area).
    pub(crate) fn write_at(&mut self, at: u64, bytes: &[u8]) -> Result<(), ConvertError> {
        self.out.seek(SeekFrom::Start(at))?;
        self.out.write_all(bytes)?;
        Ok(())
    }

    /// Flushes and gives the output back.
    pub(crate) fn finish(mut self) -> Result<W, ConvertError> {
        self.out.flush()?;
        Ok(self.out)
    }
}

/// log2 of the chunk size for a file of `size` bytes: one block, or bigger
/// so that the file has at most [`MAX_CHUNKS`] chunks.
pub(crate) fn chunk_bits(size: u64) -> u32 {
    let mut bits = BLK_BITS;
    while size.div_ceil(1 << bits) > MAX_CHUNKS && bits < 40 {
        bits += 1;
    }
    bits
}

/// Reads exactly `buf.len()` bytes: a short tar entry is a truncated archive.
fn read_full(r: &mut impl Read, buf: &mut [u8]) -> Result<(), ConvertError> {
    r.read_exact(buf).map_err(|e| match e.kind() {
        std::io::ErrorKind::UnexpectedEof => ConvertError::Truncated,
        _ => ConvertError::Tar(e.to_string()),
    })
}

/// A block of zeros to compare against.
static ZEROS: [u8; BLK_USIZE] = [0; BLK_USIZE];

/// Whether every byte is zero (slice equality is a `memcmp`, fast even in
/// unoptimized builds).
fn all_zero(b: &[u8]) -> bool {
    b.chunks(BLK_USIZE).all(|c| c == &ZEROS[..c.len()])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zero_detection() {
        let mut v = vec![0u8; 10000];
        assert!(all_zero(&v));
        v[9999] = 1;
        assert!(!all_zero(&v));
        v[9999] = 0;
        v[3] = 1;
        assert!(!all_zero(&v[1..]));
    }

    #[test]
    fn chunk_sizes_grow_with_files() {
        assert_eq!(chunk_bits(0), 12);
        assert_eq!(chunk_bits(256 << 20), 12);
        assert_eq!(chunk_bits((256 << 20) + 1), 13);
        assert_eq!(chunk_bits(5 << 30), 17);
    }
}
