//! Hand-written payload encoding and decoding.

mod oci;

use crate::{
    ExecRequest, ExitStatus, ImageRoot, Layer, Limits, MAX_ARGS, MAX_CHUNK, MAX_ENTROPY, MAX_ENV,
    MAX_FRAME, MAX_LAYERS, MAX_MOUNTS, MAX_STRING, MAX_USER, Message, Mount, ProtocolError, Stream,
};

const T_HELLO: u8 = 0x01;
const T_EXEC: u8 = 0x10;
const T_STDIN: u8 = 0x11;
const T_STDIN_EOF: u8 = 0x12;
const T_SIGNAL: u8 = 0x13;
const T_RESIZE: u8 = 0x14;
const T_SHUTDOWN: u8 = 0x15;
const T_RESTORED: u8 = 0x16;
const T_STARTED: u8 = 0x20;
const T_EXEC_ERROR: u8 = 0x21;
const T_OUTPUT: u8 = 0x22;
const T_OUTPUT_EOF: u8 = 0x23;
const T_EXIT: u8 = 0x24;
const T_ERROR: u8 = 0x30;

struct Writer(Vec<u8>);

impl Writer {
    fn u8(&mut self, v: u8) {
        self.0.push(v);
    }
    fn u16(&mut self, v: u16) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    fn u32(&mut self, v: u32) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    fn i32(&mut self, v: i32) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    fn u64(&mut self, v: u64) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    fn bytes(&mut self, b: &[u8], max: usize) -> Result<(), ProtocolError> {
        if b.len() > max {
            return Err(ProtocolError::TooLarge);
        }
        // Bounded by `max` (< 4 GiB) above.
        self.u32(b.len() as u32);
        self.0.extend_from_slice(b);
        Ok(())
    }
    fn str(&mut self, s: &str) -> Result<(), ProtocolError> {
        if s.contains('\0') {
            return Err(ProtocolError::BadString("encode"));
        }
        self.bytes(s.as_bytes(), MAX_STRING)
    }
    fn strs(&mut self, v: &[String], max: usize) -> Result<(), ProtocolError> {
        if v.len() > max {
            return Err(ProtocolError::TooLarge);
        }
        self.u32(v.len() as u32);
        v.iter().try_for_each(|s| self.str(s))
    }
    fn stream(&mut self, s: Stream) {
        self.u8(match s {
            Stream::Stdout => 1,
            Stream::Stderr => 2,
        });
    }
}

/// Encodes `msg` as a complete frame (length, type, payload).
pub fn encode(msg: &Message) -> Result<Vec<u8>, ProtocolError> {
    let mut w = Writer(vec![0; 4]);
    match msg {
        Message::Hello { version, caps } => {
            w.u8(T_HELLO);
            w.u16(*version);
            w.u64(*caps);
        }
        Message::Exec(e) => {
            w.u8(T_EXEC);
            w.u32(e.id);
            if e.argv.is_empty() {
                return Err(ProtocolError::TooLarge);
            }
            w.strs(&e.argv, MAX_ARGS)?;
            w.strs(&e.env, MAX_ENV)?;
            w.str(&e.cwd)?;
            w.u32(e.uid);
            w.u32(e.gid);
            w.u8(u8::from(e.tty));
            w.u16(e.rows);
            w.u16(e.cols);
            w.str(&e.rootfs)?;
            w.str(&e.hostname)?;
            w.u64(e.limits.memory_bytes.unwrap_or(0));
            w.u32(e.limits.pids.unwrap_or(0));
            let (q, p) = e.limits.cpu.unwrap_or((0, 0));
            w.u32(q);
            w.u32(p);
            if e.mounts.len() > MAX_MOUNTS {
                return Err(ProtocolError::TooLarge);
            }
            // Bounded by MAX_MOUNTS above.
            w.u32(e.mounts.len() as u32);
            for m in &e.mounts {
                m.check()?;
                w.str(&m.tag)?;
                w.str(&m.target)?;
                w.u8(u8::from(m.read_only));
            }
            if e.user.len() > MAX_USER {
                return Err(ProtocolError::TooLarge);
            }
            w.str(&e.user)?;
            encode_image(&mut w, e.image.as_ref())?;
            oci::encode(&mut w, e.oci.as_deref())?;
        }
        Message::Stdin { id, data } => {
            w.u8(T_STDIN);
            w.u32(*id);
            w.bytes(data, MAX_CHUNK)?;
        }
        Message::StdinEof { id } => {
            w.u8(T_STDIN_EOF);
            w.u32(*id);
        }
        Message::Signal { id, signo } => {
            w.u8(T_SIGNAL);
            w.u32(*id);
            w.i32(*signo);
        }
        Message::Resize { id, rows, cols } => {
            w.u8(T_RESIZE);
            w.u32(*id);
            w.u16(*rows);
            w.u16(*cols);
        }
        Message::Shutdown => w.u8(T_SHUTDOWN),
        Message::Restored {
            entropy,
            unix_time_ns,
        } => {
            w.u8(T_RESTORED);
            w.bytes(entropy, MAX_ENTROPY)?;
            w.u64(*unix_time_ns);
        }
        Message::Started { id, pid } => {
            w.u8(T_STARTED);
            w.u32(*id);
            w.u32(*pid);
        }
        Message::ExecError { id, code, message } => {
            w.u8(T_EXEC_ERROR);
            w.u32(*id);
            w.u8(*code);
            w.str(message)?;
        }
        Message::Output { id, stream, data } => {
            w.u8(T_OUTPUT);
            w.u32(*id);
            w.stream(*stream);
            w.bytes(data, MAX_CHUNK)?;
        }
        Message::OutputEof { id, stream } => {
            w.u8(T_OUTPUT_EOF);
            w.u32(*id);
            w.stream(*stream);
        }
        Message::Exit { id, status } => {
            w.u8(T_EXIT);
            w.u32(*id);
            match status {
                ExitStatus::Code(c) => {
                    w.u8(0);
                    w.i32(*c);
                }
                ExitStatus::Signal(s) => {
                    w.u8(1);
                    w.i32(*s);
                }
            }
        }
        Message::Error { id, message } => {
            w.u8(T_ERROR);
            w.u32(*id);
            w.str(message)?;
        }
    }
    let len = w.0.len() - 4;
    if len > MAX_FRAME {
        return Err(ProtocolError::TooLarge);
    }
    w.0[..4].copy_from_slice(&(len as u32).to_le_bytes());
    Ok(w.0)
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], ProtocolError> {
        if self.0.len() < n {
            return Err(ProtocolError::Short(what));
        }
        let (head, tail) = self.0.split_at(n);
        self.0 = tail;
        Ok(head)
    }
    fn arr<const N: usize>(&mut self, what: &'static str) -> Result<[u8; N], ProtocolError> {
        let mut a = [0; N];
        a.copy_from_slice(self.take(N, what)?);
        Ok(a)
    }
    fn u8(&mut self, what: &'static str) -> Result<u8, ProtocolError> {
        Ok(self.arr::<1>(what)?[0])
    }
    fn u16(&mut self, what: &'static str) -> Result<u16, ProtocolError> {
        Ok(u16::from_le_bytes(self.arr(what)?))
    }
    fn u32(&mut self, what: &'static str) -> Result<u32, ProtocolError> {
        Ok(u32::from_le_bytes(self.arr(what)?))
    }
    fn i32(&mut self, what: &'static str) -> Result<i32, ProtocolError> {
        Ok(i32::from_le_bytes(self.arr(what)?))
    }
    fn u64(&mut self, what: &'static str) -> Result<u64, ProtocolError> {
        Ok(u64::from_le_bytes(self.arr(what)?))
    }
    fn bytes(&mut self, max: usize, what: &'static str) -> Result<&'a [u8], ProtocolError> {
        let n = self.u32(what)?;
        if n as usize > max {
            return Err(ProtocolError::OutOfBounds {
                field: what,
                value: n.into(),
            });
        }
        self.take(n as usize, what)
    }
    fn str(&mut self, what: &'static str) -> Result<String, ProtocolError> {
        let b = self.bytes(MAX_STRING, what)?;
        let s = std::str::from_utf8(b).map_err(|_| ProtocolError::BadString(what))?;
        if s.contains('\0') {
            return Err(ProtocolError::BadString(what));
        }
        Ok(s.to_owned())
    }
    fn strs(&mut self, max: usize, what: &'static str) -> Result<Vec<String>, ProtocolError> {
        let n = self.u32(what)?;
        // Each string needs at least its 4-byte length, so a count larger
        // than the remaining bytes / 4 is malformed; this also bounds the
        // allocation below.
        if n as usize > max || n as usize > self.0.len() / 4 {
            return Err(ProtocolError::OutOfBounds {
                field: what,
                value: n.into(),
            });
        }
        (0..n).map(|_| self.str(what)).collect()
    }
    fn stream(&mut self) -> Result<Stream, ProtocolError> {
        match self.u8("stream")? {
            1 => Ok(Stream::Stdout),
            2 => Ok(Stream::Stderr),
            value => Err(ProtocolError::BadTag {
                field: "stream",
                value,
            }),
        }
    }
}

/// `ImageRoot`: a presence byte, then disk, scratch and the layers.
fn encode_image(w: &mut Writer, image: Option<&ImageRoot>) -> Result<(), ProtocolError> {
    let Some(img) = image else {
        w.u8(0);
        return Ok(());
    };
    img.check().map_err(|_| ProtocolError::TooLarge)?;
    w.u8(1);
    w.str(&img.disk)?;
    w.str(&img.scratch)?;
    // Bounded by MAX_LAYERS (checked above).
    w.u32(img.layers.len() as u32);
    for l in &img.layers {
        w.u64(l.offset);
        w.u64(l.size);
    }
    Ok(())
}

fn decode_image(r: &mut Reader<'_>) -> Result<Option<ImageRoot>, ProtocolError> {
    match r.u8("image")? {
        0 => return Ok(None),
        1 => {}
        value => {
            return Err(ProtocolError::BadTag {
                field: "image",
                value,
            });
        }
    }
    let disk = r.str("layer disk")?;
    let scratch = r.str("scratch")?;
    let count = r.u32("layer count")? as usize;
    if count > MAX_LAYERS {
        return Err(ProtocolError::OutOfBounds {
            field: "layer count",
            value: count as u64,
        });
    }
    let mut layers = Vec::with_capacity(count);
    for _ in 0..count {
        layers.push(Layer {
            offset: r.u64("layer offset")?,
            size: r.u64("layer size")?,
        });
    }
    let img = ImageRoot {
        disk,
        layers,
        scratch,
    };
    img.check()?;
    Ok(Some(img))
}

fn signo(v: i32, field: &'static str) -> Result<i32, ProtocolError> {
    if (1..=64).contains(&v) {
        Ok(v)
    } else {
        Err(ProtocolError::OutOfBounds {
            field,
            value: v as u32 as u64,
        })
    }
}

/// Decodes one frame body: the type byte followed by the payload (the
/// 4-byte length already stripped).
pub fn decode(body: &[u8]) -> Result<Message, ProtocolError> {
    let mut r = Reader(body);
    let ty = r.u8("type")?;
    let msg = match ty {
        T_HELLO => Message::Hello {
            version: r.u16("version")?,
            caps: r.u64("caps")?,
        },
        T_EXEC => {
            let id = r.u32("id")?;
            let argv = r.strs(MAX_ARGS, "argv")?;
            if argv.is_empty() {
                return Err(ProtocolError::OutOfBounds {
                    field: "argv",
                    value: 0,
                });
            }
            let env = r.strs(MAX_ENV, "env")?;
            let cwd = r.str("cwd")?;
            let uid = r.u32("uid")?;
            let gid = r.u32("gid")?;
            let tty = match r.u8("tty")? {
                0 => false,
                1 => true,
                value => {
                    return Err(ProtocolError::BadTag {
                        field: "tty",
                        value,
                    });
                }
            };
            let rows = r.u16("rows")?;
            let cols = r.u16("cols")?;
            let rootfs = r.str("rootfs")?;
            let hostname = r.str("hostname")?;
            if hostname.len() > 64 {
                return Err(ProtocolError::OutOfBounds {
                    field: "hostname",
                    value: hostname.len() as u64,
                });
            }
            let mem = r.u64("memory")?;
            let pids = r.u32("pids")?;
            let quota = r.u32("cpu quota")?;
            let period = r.u32("cpu period")?;
            if (quota == 0) != (period == 0) {
                return Err(ProtocolError::OutOfBounds {
                    field: "cpu",
                    value: quota.into(),
                });
            }
            let limits = Limits {
                memory_bytes: (mem != 0).then_some(mem),
                pids: (pids != 0).then_some(pids),
                cpu: (period != 0).then_some((quota, period)),
            };
            let count = r.u32("mount count")? as usize;
            if count > MAX_MOUNTS {
                return Err(ProtocolError::OutOfBounds {
                    field: "mount count",
                    value: count as u64,
                });
            }
            let mut mounts = Vec::with_capacity(count);
            for _ in 0..count {
                let m = Mount {
                    tag: r.str("mount tag")?,
                    target: r.str("mount target")?,
                    read_only: match r.u8("mount ro")? {
                        0 => false,
                        1 => true,
                        value => {
                            return Err(ProtocolError::BadTag {
                                field: "mount ro",
                                value,
                            });
                        }
                    },
                };
                m.check()?;
                mounts.push(m);
            }
            let user = r.str("user")?;
            if user.len() > MAX_USER {
                return Err(ProtocolError::OutOfBounds {
                    field: "user",
                    value: user.len() as u64,
                });
            }
            let image = decode_image(&mut r)?;
            let oci = oci::decode(&mut r)?;
            Message::Exec(Box::new(ExecRequest {
                id,
                argv,
                env,
                cwd,
                uid,
                gid,
                tty,
                rows,
                cols,
                rootfs,
                hostname,
                limits,
                mounts,
                user,
                image,
                oci,
            }))
        }
        T_STDIN => Message::Stdin {
            id: r.u32("id")?,
            data: r.bytes(MAX_CHUNK, "data")?.to_vec(),
        },
        T_STDIN_EOF => Message::StdinEof { id: r.u32("id")? },
        T_SIGNAL => Message::Signal {
            id: r.u32("id")?,
            signo: signo(r.i32("signo")?, "signo")?,
        },
        T_RESIZE => Message::Resize {
            id: r.u32("id")?,
            rows: r.u16("rows")?,
            cols: r.u16("cols")?,
        },
        T_SHUTDOWN => Message::Shutdown,
        T_RESTORED => Message::Restored {
            entropy: r.bytes(MAX_ENTROPY, "entropy")?.to_vec(),
            unix_time_ns: r.u64("unix_time_ns")?,
        },
        T_STARTED => Message::Started {
            id: r.u32("id")?,
            pid: r.u32("pid")?,
        },
        T_EXEC_ERROR => Message::ExecError {
            id: r.u32("id")?,
            code: r.u8("code")?,
            message: r.str("message")?,
        },
        T_OUTPUT => Message::Output {
            id: r.u32("id")?,
            stream: r.stream()?,
            data: r.bytes(MAX_CHUNK, "data")?.to_vec(),
        },
        T_OUTPUT_EOF => Message::OutputEof {
            id: r.u32("id")?,
            stream: r.stream()?,
        },
        T_EXIT => {
            let id = r.u32("id")?;
            let status = match r.u8("status kind")? {
                0 => ExitStatus::Code(r.i32("code")?),
                1 => ExitStatus::Signal(signo(r.i32("signal")?, "signal")?),
                value => {
                    return Err(ProtocolError::BadTag {
                        field: "status kind",
                        value,
                    });
                }
            };
            Message::Exit { id, status }
        }
        T_ERROR => Message::Error {
            id: r.u32("id")?,
            message: r.str("message")?,
        },
        other => return Err(ProtocolError::UnknownType(other)),
    };
    if !r.0.is_empty() {
        return Err(ProtocolError::Trailing(r.0.len()));
    }
    Ok(msg)
}
