//! QEMU's stream network framing (`-netdev stream`, passt, gvproxy
//! `-listen-qemu`): every Ethernet frame is preceded by its length as a
//! 4-byte big-endian number. Pure code, no I/O, so it is tested and fuzzed
//! on its own and builds everywhere.

/// Bytes of the length prefix.
pub const LEN_PREFIX: usize = 4;
/// Largest frame accepted either way: a 65535-byte IP packet plus an
/// Ethernet header with VLAN tags, with some slack.
pub const MAX_FRAME: usize = 65562;

/// Errors decoding the stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// The peer announced a frame longer than [`MAX_FRAME`].
    #[error("peer announced a {0}-byte frame (limit {MAX_FRAME})")]
    TooLong(u32),
    /// The stream ended inside a frame.
    #[error("stream ended inside a frame ({have} of {want} bytes)")]
    Truncated {
        /// Bytes of the prefix or frame received.
        have: usize,
        /// Bytes expected.
        want: usize,
    },
}

/// The length prefix of a `len`-byte frame, or `None` if `len` is above
/// [`MAX_FRAME`].
pub fn encode_prefix(len: usize) -> Option<[u8; LEN_PREFIX]> {
    if len > MAX_FRAME {
        return None;
    }
    u32::try_from(len).ok().map(u32::to_be_bytes)
}

/// Incremental decoder: feed it whatever the socket returned; it yields
/// whole frames. Holds at most one partial frame.
#[derive(Debug, Default)]
pub struct FrameDecoder {
    prefix: [u8; LEN_PREFIX],
    prefix_have: usize,
    /// The frame being filled once the prefix is complete.
    frame: Option<(Vec<u8>, usize)>,
}

impl FrameDecoder {
    /// A decoder at a frame boundary.
    pub fn new() -> Self {
        Self::default()
    }

    /// Consumes bytes from the front of `input` until a frame is complete
    /// (returned) or `input` is empty (`Ok(None)`). After an error the
    /// stream is unusable and the caller should disconnect.
    pub fn decode(&mut self, input: &mut &[u8]) -> Result<Option<Vec<u8>>, FrameError> {
        loop {
            if let Some((frame, want)) = &mut self.frame {
                let n = (*want - frame.len()).min(input.len());
                let (head, rest) = input.split_at(n);
                frame.extend_from_slice(head);
                *input = rest;
                if frame.len() < *want {
                    return Ok(None);
                }
                return Ok(self.frame.take().map(|(f, _)| f));
            }
            if input.is_empty() {
                return Ok(None);
            }
            let n = (LEN_PREFIX - self.prefix_have).min(input.len());
            let (head, rest) = input.split_at(n);
            self.prefix[self.prefix_have..self.prefix_have + n].copy_from_slice(head);
            self.prefix_have += n;
            *input = rest;
            if self.prefix_have < LEN_PREFIX {
                return Ok(None);
            }
            self.prefix_have = 0;
            let len = u32::from_be_bytes(self.prefix);
            let want = usize::try_from(len)
                .ok()
                .filter(|&l| l <= MAX_FRAME)
                .ok_or(FrameError::TooLong(len))?;
            self.frame = Some((Vec::with_capacity(want), want));
        }
    }

    /// Whether the decoder sits at a frame boundary (an EOF now is clean).
    pub fn at_boundary(&self) -> bool {
        self.prefix_have == 0 && self.frame.is_none()
    }

    /// Checks an end of stream: an error if it cut a frame or prefix short.
    pub fn finish(&self) -> Result<(), FrameError> {
        match &self.frame {
            Some((f, want)) => Err(FrameError::Truncated {
                have: f.len(),
                want: *want,
            }),
            None if self.prefix_have > 0 => Err(FrameError::Truncated {
                have: self.prefix_have,
                want: LEN_PREFIX,
            }),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn framed(frames: &[&[u8]]) -> Vec<u8> {
        let mut v = Vec::new();
        for f in frames {
            v.extend_from_slice(&encode_prefix(f.len()).expect("small"));
            v.extend_from_slice(f);
        }
        v
    }

    fn decode_all(d: &mut FrameDecoder, mut input: &[u8]) -> Result<Vec<Vec<u8>>, FrameError> {
        let mut out = Vec::new();
        while !input.is_empty() {
            if let Some(f) = d.decode(&mut input)? {
                out.push(f);
            }
        }
        Ok(out)
    }

    #[test]
    fn whole_frames_in_one_read() {
        let a = [1u8; 60];
        let b = [2u8; 1514];
        let mut d = FrameDecoder::new();
        let got = decode_all(&mut d, &framed(&[&a, &b])).expect("decode");
        assert_eq!(got, vec![a.to_vec(), b.to_vec()]);
        assert!(d.at_boundary());
        assert_eq!(d.finish(), Ok(()));
    }

    #[test]
    fn every_split_point_gives_the_same_frames() {
        let a: Vec<u8> = (0..100u8).collect();
        let b = vec![0xaa; 14];
        let stream = framed(&[&a, &[], &b]);
        for cut in 0..=stream.len() {
            let mut d = FrameDecoder::new();
            let mut got = decode_all(&mut d, &stream[..cut]).expect("first part");
            got.extend(decode_all(&mut d, &stream[cut..]).expect("second part"));
            assert_eq!(got, vec![a.clone(), Vec::new(), b.clone()], "cut at {cut}");
        }
        // Byte by byte, the length prefix split in every way.
        let mut d = FrameDecoder::new();
        let mut got = Vec::new();
        for byte in stream.chunks(1) {
            got.extend(decode_all(&mut d, byte).expect("byte"));
        }
        assert_eq!(got.len(), 3);
    }

    #[test]
    fn oversized_lengths_are_errors() {
        let mut d = FrameDecoder::new();
        let mut input: &[u8] = &((MAX_FRAME as u32) + 1).to_be_bytes();
        assert_eq!(
            d.decode(&mut input),
            Err(FrameError::TooLong(MAX_FRAME as u32 + 1))
        );
        let mut d = FrameDecoder::new();
        let mut input: &[u8] = &[0xff; 8];
        assert_eq!(d.decode(&mut input), Err(FrameError::TooLong(u32::MAX)));
        // The largest allowed frame passes.
        let big = vec![7u8; MAX_FRAME];
        let mut d = FrameDecoder::new();
        assert_eq!(decode_all(&mut d, &framed(&[&big])), Ok(vec![big]));
        assert_eq!(encode_prefix(MAX_FRAME + 1), None);
    }

    #[test]
    fn eof_mid_frame_or_prefix_is_reported() {
        let stream = framed(&[&[5u8; 20]]);
        let mut d = FrameDecoder::new();
        assert!(decode_all(&mut d, &stream[..10]).expect("part").is_empty());
        assert_eq!(d.finish(), Err(FrameError::Truncated { have: 6, want: 20 }));
        let mut d = FrameDecoder::new();
        decode_all(&mut d, &stream[..3]).expect("prefix part");
        assert!(!d.at_boundary());
        assert_eq!(d.finish(), Err(FrameError::Truncated { have: 3, want: 4 }));
    }
}
