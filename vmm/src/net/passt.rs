//! Starting passt (Debian's `passt` package) for one VM.
//!
//! passt runs in the foreground (`-f`) as our child, for one client only
//! (`-1`: it quits when the VM's connection closes, even if we are killed),
//! on a socket in a private directory (mode 0700; when we run as root,
//! passt drops to `nobody`, so the directory is handed to `nobody`). We
//! wait for the socket, connect once, and kill passt when the VM stops
//! (drop); the socket directory is removed as soon as we are connected,
//! so nothing is left behind even when we are killed. Published ports
//! become `-t HOST:GUEST` / `-u HOST:GUEST`. The guest gets fixed
//! addresses (`-a`, `-n`, `-g`; see [`super::guest_cmdline`]) instead of
//! copies of the host's, and DNS queries to [`super::PASST_DNS`] go to the
//! host's resolver.

use std::io;
use std::os::unix::fs::{DirBuilderExt, MetadataExt};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use super::{PortMap, Proto};

/// How long passt gets to create its socket.
const START_TIMEOUT: Duration = Duration::from_secs(10);
/// The program started.
const PROGRAM: &str = "passt";

/// Errors starting passt.
#[derive(Debug, thiserror::Error)]
pub enum PasstError {
    /// No `passt` on PATH.
    #[error("passt not installed (Debian/Ubuntu: apt-get install passt)")]
    NotInstalled,
    /// Creating the private socket directory failed.
    #[error("passt: cannot create a socket directory in {}", dir.display())]
    TempDir {
        /// Where.
        dir: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// Spawning passt failed for another reason.
    #[error("cannot start passt")]
    Spawn(#[source] io::Error),
    /// passt exited before its socket was ready.
    #[error("passt exited at start ({status}): {line}")]
    Exited {
        /// Its exit status.
        status: std::process::ExitStatus,
        /// Its last meaningful stderr line.
        line: String,
    },
    /// The socket did not appear in time.
    #[error("passt did not create its socket within {} s", START_TIMEOUT.as_secs())]
    Timeout,
}

/// A running passt; killed and its directory removed on drop.
#[derive(Debug)]
pub struct Passt {
    child: Child,
    dir: PathBuf,
}

impl Passt {
    /// Starts passt with `ports` forwarded and returns it with the
    /// connected socket.
    pub fn start(ports: &[PortMap]) -> Result<(Passt, UnixStream), PasstError> {
        Self::start_program(Path::new(PROGRAM), ports)
    }

    /// [`Passt::start`] with another passt binary (tests).
    pub fn start_program(
        program: &Path,
        ports: &[PortMap],
    ) -> Result<(Passt, UnixStream), PasstError> {
        let dir = private_dir()?;
        let sock = dir.join("passt.sock");
        let log = dir.join("passt.stderr");
        let stderr = std::fs::File::create(&log)
            .map(Stdio::from)
            .unwrap_or_else(|_| Stdio::null());
        let mut cmd = Command::new(program);
        let prefix = super::PASST_PREFIX.to_string();
        cmd.args(["-f", "-1", "-q", "-s"])
            .arg(&sock)
            .args(["-a", super::PASST_GUEST_ADDR, "-n", &prefix])
            .args([
                "-g",
                super::PASST_GATEWAY,
                "--dns-forward",
                super::PASST_DNS,
            ])
            .args(port_args(ports))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr);
        let child = match cmd.spawn() {
            Ok(c) => c,
            Err(e) => {
                let _ = std::fs::remove_dir_all(&dir);
                return Err(if e.kind() == io::ErrorKind::NotFound {
                    PasstError::NotInstalled
                } else {
                    PasstError::Spawn(e)
                });
            }
        };
        let mut passt = Passt { child, dir };
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Ok(s) = UnixStream::connect(&sock) {
                // Connected: passt (`-1`) takes no other client, so the
                // socket path and its directory go now; a krypton killed
                // later leaves nothing in the temp dir.
                let _ = std::fs::remove_dir_all(&passt.dir);
                return Ok((passt, s));
            }
            if let Ok(Some(status)) = passt.child.try_wait() {
                let line = last_line(&log);
                return Err(PasstError::Exited { status, line });
            }
            if Instant::now() > deadline {
                return Err(PasstError::Timeout);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// passt's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The private socket directory (removed once connected).
    #[cfg(test)]
    pub fn socket_dir(&self) -> &Path {
        &self.dir
    }
}

impl Drop for Passt {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The first executable `passt` in the directories of `path` (a PATH value).
pub fn find_on_path(path: Option<&std::ffi::OsStr>) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    std::env::split_paths(path?)
        .filter(|d| !d.as_os_str().is_empty())
        .map(|d| d.join(PROGRAM))
        .find(|p| {
            std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
}

/// passt's forwarding options for `ports`.
pub fn port_args(ports: &[PortMap]) -> Vec<String> {
    ports
        .iter()
        .flat_map(|p| {
            let flag = match p.proto {
                Proto::Tcp => "-t",
                Proto::Udp => "-u",
            };
            [flag.to_owned(), format!("{}:{}", p.host, p.guest)]
        })
        .collect()
}

/// A new mode-0700 directory under the temp dir, owned by `nobody` when we
/// are root (passt's own user then).
fn private_dir() -> Result<PathBuf, PasstError> {
    static N: AtomicU32 = AtomicU32::new(0);
    let base = std::env::temp_dir();
    let err = |source| PasstError::TempDir {
        dir: base.clone(),
        source,
    };
    let dir = base.join(format!(
        "krypton-passt-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(&dir)
        .map_err(err)?;
    let meta = std::fs::metadata(&dir).map_err(err)?;
    if meta.uid() == 0 {
        let (uid, gid) = nobody();
        if let Err(e) = std::os::unix::fs::chown(&dir, Some(uid), Some(gid)) {
            let _ = std::fs::remove_dir_all(&dir);
            return Err(err(e));
        }
    }
    Ok(dir)
}

/// `nobody`'s uid and gid from /etc/passwd (65534 if absent).
fn nobody() -> (u32, u32) {
    let passwd = std::fs::read_to_string("/etc/passwd").unwrap_or_default();
    passwd
        .lines()
        .find_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            match f.as_slice() {
                ["nobody", _, uid, gid, ..] => Some((uid.parse().ok()?, gid.parse().ok()?)),
                _ => None,
            }
        })
        .unwrap_or((65534, 65534))
}

/// The last stderr line that says something (not passt's syslog noise).
fn last_line(log: &Path) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    text.lines()
        .rev()
        .map(str::trim)
        .find(|l| !l.is_empty() && !l.starts_with("Failed to send"))
        .unwrap_or("no message")
        .to_owned()
}
