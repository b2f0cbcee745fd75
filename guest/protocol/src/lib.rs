//! Host-guest agent wire format.
//!
//! Every message travels in one frame:
//!
//! ```text
//! +----------------+---------+------------------------+
//! | len: u32 LE    | type u8 | payload (len - 1 bytes) |
//! +----------------+---------+------------------------+
//! ```
//!
//! `len` counts the type byte and the payload and is at most [`MAX_FRAME`].
//! Integers are little-endian; byte strings and UTF-8 strings are a `u32`
//! length followed by the bytes; lists are a `u32` count followed by the
//! items. Both sides send [`Message::Hello`] first. Per exec id the agent
//! answers `Exec` with `Started` or `ExecError`; after `Started` it sends
//! output chunks, one `OutputEof` per stream and finally `Exit`, so all
//! output is delivered before the exit status.
//!
//! Decoding never panics: malformed, oversized or truncated frames are
//! rejected with a [`ProtocolError`].

#[cfg(feature = "tokio")]
mod async_io;
mod codec;
mod io;
pub mod oci;
#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_oci;

#[cfg(feature = "tokio")]
pub use async_io::{read_message_async, write_message_async};
pub use codec::{decode, encode};
pub use io::{FrameReader, read_message, write_message};
pub use oci::OciSettings;

/// Protocol version carried in [`Message::Hello`].
pub const PROTOCOL_VERSION: u16 = 3;
/// Largest frame (type byte + payload), in bytes.
pub const MAX_FRAME: usize = 1 << 20;
/// Largest data chunk in `Stdin`/`Output` messages.
pub const MAX_CHUNK: usize = 64 << 10;
/// Largest single string (path, argument, env entry, message).
pub const MAX_STRING: usize = 64 << 10;
/// Most argv entries in one exec.
pub const MAX_ARGS: usize = 4096;
/// Most environment entries in one exec.
pub const MAX_ENV: usize = 4096;
/// Default vsock port the agent listens on.
pub const AGENT_VSOCK_PORT: u32 = 1024;
/// Most shared-directory mounts per exec.
pub const MAX_MOUNTS: usize = 32;
/// Longest virtio-fs mount tag.
pub const MAX_TAG: usize = 36;
/// Most image layers in one root (overlayfs stacks at most 500; OCI
/// images are limited to 127 by docker).
pub const MAX_LAYERS: usize = 256;
/// Longest `ExecRequest::user`.
pub const MAX_USER: usize = 256;

/// Capability bits exchanged in the hello.
pub mod caps {
    /// Exec in per-container namespaces.
    pub const NAMESPACES: u64 = 1 << 0;
    /// cgroup limits are applied.
    pub const CGROUPS: u64 = 1 << 1;
    /// PTY sessions (`tty = true`) and resize.
    pub const TTY: u64 = 1 << 2;
    /// Rootfs from a block device or image with a tmpfs overlay.
    pub const ROOTFS: u64 = 1 << 3;
    /// The agent powers the machine off on `Shutdown`.
    pub const SHUTDOWN: u64 = 1 << 4;
    /// The agent reseeds the kernel's RNG and sets the clock on `Restored`.
    pub const RESTORE: u64 = 1 << 5;
    /// virtio-fs shares mounted into containers (`ExecRequest::mounts`).
    pub const MOUNTS: u64 = 1 << 6;
    /// Roots stacked from image layers (`ExecRequest::image`).
    pub const LAYERS: u64 = 1 << 7;
    /// User names resolved in the container (`ExecRequest::user`).
    pub const USERS: u64 = 1 << 8;
    /// OCI bundle settings (`ExecRequest::oci`), joining a running
    /// container included.
    pub const OCI: u64 = 1 << 9;
}

/// Most entropy bytes in one `Restored`.
pub const MAX_ENTROPY: usize = 512;

/// Errors of the wire format.
#[derive(Debug, thiserror::Error)]
pub enum ProtocolError {
    /// The transport failed.
    #[error("transport error")]
    Io(#[source] std::io::Error),
    /// The peer closed the stream cleanly between frames.
    #[error("connection closed")]
    Closed,
    /// The stream ended inside a frame.
    #[error("connection closed mid-frame")]
    Truncated,
    /// The frame length is zero or above [`MAX_FRAME`].
    #[error("bad frame length {0}")]
    BadLength(u32),
    /// Unknown message type byte.
    #[error("unknown message type {0:#x}")]
    UnknownType(u8),
    /// The payload ended before a field.
    #[error("payload too short for {0}")]
    Short(&'static str),
    /// Bytes left over after the last field.
    #[error("{0} trailing bytes")]
    Trailing(usize),
    /// A length, count or value is beyond its bound.
    #[error("{field} out of bounds ({value})")]
    OutOfBounds {
        /// Which field.
        field: &'static str,
        /// The offending value.
        value: u64,
    },
    /// A string is not UTF-8 or contains NUL.
    #[error("invalid string in {0}")]
    BadString(&'static str),
    /// An enum tag has no meaning.
    #[error("invalid tag {value} for {field}")]
    BadTag {
        /// Which field.
        field: &'static str,
        /// The offending tag.
        value: u8,
    },
    /// The message to encode is larger than the bounds allow.
    #[error("message too large to encode")]
    TooLarge,
}

/// Which output stream a chunk belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Stream {
    /// Standard output (and the PTY in tty mode).
    Stdout,
    /// Standard error (unused in tty mode).
    Stderr,
}

/// cgroup limits for one container; `None` means unlimited.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Limits {
    /// `memory.max` in bytes.
    pub memory_bytes: Option<u64>,
    /// `pids.max`.
    pub pids: Option<u32>,
    /// `cpu.max` as (quota µs, period µs).
    pub cpu: Option<(u32, u32)>,
}

/// A request to run one process in a new container.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExecRequest {
    /// Exec id chosen by the host, unique per connection.
    pub id: u32,
    /// Program and arguments; `argv[0]` is looked up in `PATH`.
    pub argv: Vec<String>,
    /// `KEY=VALUE` entries.
    pub env: Vec<String>,
    /// Working directory inside the container (empty: `/`).
    pub cwd: String,
    /// User id.
    pub uid: u32,
    /// Group id.
    pub gid: u32,
    /// Allocate a PTY (stdout and stderr merged).
    pub tty: bool,
    /// Initial PTY rows.
    pub rows: u16,
    /// Initial PTY columns.
    pub cols: u16,
    /// Root filesystem: a block device or image file (ext4, mounted
    /// read-only under a tmpfs overlay); empty keeps the agent's root.
    pub rootfs: String,
    /// Hostname in the container's UTS namespace (empty: "krypton").
    pub hostname: String,
    /// cgroup limits.
    pub limits: Limits,
    /// Host directories (virtio-fs shares) mounted into the container.
    pub mounts: Vec<Mount>,
    /// The user as docker's `--user` takes it: `NAME|UID[:GROUP|GID]`,
    /// resolved through the container's own /etc/passwd and /etc/group
    /// (supplementary groups and HOME too). Empty: `uid` and `gid`.
    pub user: String,
    /// Root stacked from image layers (replaces `rootfs`).
    pub image: Option<ImageRoot>,
    /// OCI bundle settings (`krypton create`); replaces `rootfs` and `image`.
    pub oci: Option<Box<OciSettings>>,
}

/// A container root made of read-only filesystem images (EROFS) packed
/// into one disk, stacked with overlayfs under a writable upper layer.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ImageRoot {
    /// The disk holding the layers (a block device such as `/dev/vdb`).
    pub disk: String,
    /// The layers, bottom first.
    pub layers: Vec<Layer>,
    /// A block device holding an empty ext2/ext4 filesystem (formatted by
    /// the host) for the upper layer, such as `/dev/vdc`; empty: tmpfs.
    pub scratch: String,
}

/// Where one layer lies on [`ImageRoot::disk`], in bytes (4 KiB aligned).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Layer {
    /// Offset on the disk.
    pub offset: u64,
    /// Length of the image.
    pub size: u64,
}

impl ImageRoot {
    /// Checks the counts, that every layer is 4 KiB aligned and nonempty,
    /// and that a scratch disk is a `/dev` path other than the layer disk.
    pub fn check(&self) -> Result<(), ProtocolError> {
        let bad = |field: &'static str, value: u64| ProtocolError::OutOfBounds { field, value };
        if self.layers.is_empty() || self.layers.len() > MAX_LAYERS {
            return Err(bad("layer count", self.layers.len() as u64));
        }
        if !self.disk.starts_with('/') {
            return Err(bad("layer disk", self.disk.len() as u64));
        }
        if !self.scratch.is_empty()
            && (!self.scratch.starts_with("/dev/")
                || self.scratch.len() <= "/dev/".len()
                || self.scratch.split('/').any(|c| c == "..")
                || self.scratch == self.disk)
        {
            return Err(bad("scratch disk", self.scratch.len() as u64));
        }
        for l in &self.layers {
            if l.size == 0
                || (l.offset | l.size) & 4095 != 0
                || l.offset.checked_add(l.size).is_none()
            {
                return Err(bad("layer", l.offset));
            }
        }
        Ok(())
    }
}

/// A virtio-fs share mounted into the container.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Mount {
    /// The share's virtio-fs tag (1 to [`MAX_TAG`] bytes).
    pub tag: String,
    /// Absolute path in the container, without `..` components.
    pub target: String,
    /// Mount read-only (the host enforces it too).
    pub read_only: bool,
}

impl Mount {
    /// Checks the tag and the target path.
    pub fn check(&self) -> Result<(), ProtocolError> {
        let bad = |field: &'static str, len: usize| ProtocolError::OutOfBounds {
            field,
            value: len as u64,
        };
        if self.tag.is_empty() || self.tag.len() > MAX_TAG || self.tag.contains('\0') {
            return Err(bad("mount tag", self.tag.len()));
        }
        let t = &self.target;
        if !t.starts_with('/') || t == "/" || t.contains('\0') || t.split('/').any(|c| c == "..") {
            return Err(bad("mount target", t.len()));
        }
        Ok(())
    }
}

/// How a process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitStatus {
    /// Exited with this code.
    Code(i32),
    /// Killed by this signal.
    Signal(i32),
}

impl ExitStatus {
    /// Shell convention: the code, or 128 + signal.
    pub fn code(self) -> i32 {
        match self {
            ExitStatus::Code(c) => c,
            ExitStatus::Signal(s) => 128 + s,
        }
    }
}

/// One protocol message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    /// First message in both directions.
    Hello {
        /// [`PROTOCOL_VERSION`] of the sender.
        version: u16,
        /// [`caps`] bits of the sender.
        caps: u64,
    },
    /// Host → agent: start a process.
    Exec(Box<ExecRequest>),
    /// Host → agent: bytes for the process's stdin.
    Stdin {
        /// Exec id.
        id: u32,
        /// At most [`MAX_CHUNK`] bytes.
        data: Vec<u8>,
    },
    /// Host → agent: close the process's stdin.
    StdinEof {
        /// Exec id.
        id: u32,
    },
    /// Host → agent: deliver a signal.
    Signal {
        /// Exec id.
        id: u32,
        /// Signal number (1..=64).
        signo: i32,
    },
    /// Host → agent: new PTY size.
    Resize {
        /// Exec id.
        id: u32,
        /// Rows.
        rows: u16,
        /// Columns.
        cols: u16,
    },
    /// Host → agent: sync and power off (ignored unless the agent is PID 1).
    Shutdown,
    /// Host → agent: this VM was just restored from a snapshot that its
    /// siblings share. Mix in fresh entropy, reseed the kernel's CRNG and
    /// set the clock, before anything else runs.
    Restored {
        /// Fresh random bytes from the host (at most [`MAX_ENTROPY`]).
        entropy: Vec<u8>,
        /// The host's wall clock, ns since the Unix epoch.
        unix_time_ns: u64,
    },
    /// Agent → host: the process is running.
    Started {
        /// Exec id.
        id: u32,
        /// Agent-side pid of the container.
        pid: u32,
    },
    /// Agent → host: the process could not be started; terminal for `id`.
    ExecError {
        /// Exec id.
        id: u32,
        /// 125 setup failure, 126 not executable, 127 not found.
        code: u8,
        /// Human-readable reason.
        message: String,
    },
    /// Agent → host: output bytes.
    Output {
        /// Exec id.
        id: u32,
        /// Which stream.
        stream: Stream,
        /// At most [`MAX_CHUNK`] bytes.
        data: Vec<u8>,
    },
    /// Agent → host: no more bytes on this stream.
    OutputEof {
        /// Exec id.
        id: u32,
        /// Which stream.
        stream: Stream,
    },
    /// Agent → host: the process ended; always after both `OutputEof`s.
    Exit {
        /// Exec id.
        id: u32,
        /// Status.
        status: ExitStatus,
    },
    /// Either direction: a request failed (`id` 0: not tied to an exec).
    Error {
        /// Exec id or 0.
        id: u32,
        /// Human-readable reason.
        message: String,
    },
}
