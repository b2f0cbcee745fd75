//! Host side of `krypton run`: drives one exec on the guest agent over any
//! byte stream (the VM's vsock channel, or a Unix socket in tests).
//!
//! [`run_command`] wires the exec to this process's stdio, forwards
//! Ctrl-C/SIGTERM/SIGHUP/SIGQUIT as `Signal` and SIGWINCH as `Resize`, and
//! puts the terminal in raw mode with `tty`. [`run_with_io`] is the same
//! engine with caller-supplied streams and control events.
//!
//! Exit codes: the command's own; 126/127 when it cannot be started; 128+N
//! when killed by signal N; [`RunError::exit_code`] gives 125 for agent or
//! transport failures, 124 for a timeout and 126/127 for a command that
//! could not be started.

mod session;
mod stdio;
#[cfg(test)]
mod tests;
mod timeline;

use std::time::Duration;

pub use krypton_protocol::Limits;
pub use session::{Control, RunIo, Stdin, run_with_io};
pub use stdio::{run_command, run_command_ctl};
pub use timeline::Timeline;

/// Exit code for agent, transport or setup failures (docker's 125).
pub const EXIT_RUNTIME_FAILURE: i32 = 125;
/// Exit code when `timeout` expires (coreutils `timeout`'s 124).
pub const EXIT_TIMEOUT: i32 = 124;

/// What to run and how.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    /// Program and arguments (non-empty).
    pub argv: Vec<String>,
    /// `KEY=VALUE` environment entries.
    pub env: Vec<String>,
    /// Working directory in the container (empty: `/`).
    pub cwd: String,
    /// User id.
    pub uid: u32,
    /// Group id.
    pub gid: u32,
    /// Allocate a PTY; stdout and stderr are merged.
    pub tty: bool,
    /// Forward local stdin; otherwise the command's stdin is at EOF.
    pub interactive: bool,
    /// Root filesystem in the guest (block device or image path); empty
    /// keeps the agent's root.
    pub rootfs: String,
    /// Container hostname (empty: "krypton").
    pub hostname: String,
    /// cgroup limits.
    pub limits: Limits,
    /// virtio-fs shares to mount in the container.
    pub mounts: Vec<krypton_protocol::Mount>,
    /// `NAME|UID[:GROUP|GID]`, resolved in the container; empty: uid, gid.
    pub user: String,
    /// Root stacked from image layers (replaces `rootfs`).
    pub image: Option<krypton_protocol::ImageRoot>,
    /// Give up after this long (exit code 124).
    pub timeout: Option<Duration>,
    /// Where to record "agent ready", "exec started" and "exit status".
    pub timeline: Option<Timeline>,
    /// The VM was restored from a shared snapshot: before the exec, the
    /// agent gets fresh entropy and the time (`Message::Restored`).
    pub restored: bool,
    /// OCI bundle settings (`krypton create`, `krypton exec`).
    pub oci: Option<Box<krypton_protocol::OciSettings>>,
    /// Receives the agent-side pid when the command has started.
    pub started: Option<std::sync::mpsc::Sender<u32>>,
}

/// Why a run failed before the command's exit status was known.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// Framing or transport failure.
    #[error("agent connection failed")]
    Protocol(
        #[from]
        #[source]
        krypton_protocol::ProtocolError,
    ),
    /// The agent speaks another protocol version or skipped the hello.
    #[error("agent handshake failed: {0}")]
    Handshake(String),
    /// The agent reported an error.
    #[error("agent error: {0}")]
    Agent(String),
    /// Writing local output failed.
    #[error("local i/o failed")]
    Io(#[source] std::io::Error),
    /// The options are unusable (e.g. empty argv).
    #[error("invalid run options: {0}")]
    Invalid(&'static str),
    /// `timeout` expired.
    #[error("timed out")]
    Timeout,
    /// The command could not be started: 126 (not executable) or 127 (not
    /// found), with the agent's reason.
    #[error("{message}")]
    NotStarted {
        /// 126 or 127.
        code: i32,
        /// Why, e.g. "/no/such: No such file or directory".
        message: String,
    },
}

impl RunError {
    /// The process exit code for this failure: 124 on timeout, else 125.
    pub fn exit_code(&self) -> i32 {
        match self {
            RunError::Timeout => EXIT_TIMEOUT,
            RunError::NotStarted { code, .. } => *code,
            _ => EXIT_RUNTIME_FAILURE,
        }
    }
}

/// Collapses a run result into a process exit code.
pub fn exit_code(result: &Result<i32, RunError>) -> i32 {
    match result {
        Ok(code) => *code,
        Err(e) => e.exit_code(),
    }
}
