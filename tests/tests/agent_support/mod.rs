//! Shared harness for the agent tests: builds and starts the real
//! `krypton-agent` on a Unix socket (as root, on this host) and drives it
//! through the host client in `krypton::run`.
#![allow(dead_code)]

use std::fs;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use krypton::run::{Control, RunError, RunIo, RunOptions, Stdin, run_with_io};
use tokio::io::AsyncWrite;
use tokio::net::UnixStream;
use tokio::sync::{mpsc, oneshot};

/// Why agent tests cannot run here, if they cannot.
pub fn skip_reason() -> Option<String> {
    // SAFETY: geteuid has no side effects.
    if unsafe { libc::geteuid() } != 0 {
        return Some("agent tests need root (namespaces, mounts, cgroups)".into());
    }
    if !Path::new("/proc/self/ns/pid").exists() {
        return Some("no namespace support in this kernel".into());
    }
    None
}

/// Returns early from a test with a printed reason when agent tests cannot run.
#[macro_export]
macro_rules! require_agent_host {
    () => {
        if let Some(why) = agent_support::skip_reason() {
            eprintln!("SKIP: {why}");
            return;
        }
    };
}

fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"))
}

/// The agent binary: `$KRYPTON_AGENT_BIN`, or built with cargo once.
pub fn agent_bin() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        if let Some(p) = std::env::var_os("KRYPTON_AGENT_BIN") {
            return PathBuf::from(p);
        }
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let status = Command::new(cargo)
            .args(["build", "-q", "-p", "krypton-agent"])
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .status()
            .expect("run cargo build -p krypton-agent");
        assert!(status.success(), "building krypton-agent failed");
        target_dir().join("debug/krypton-agent")
    })
}

static SEQ: AtomicU32 = AtomicU32::new(0);

/// A scratch directory removed on drop.
#[derive(Debug)]
pub struct TempDir(pub PathBuf);

impl TempDir {
    /// Creates `/tmp/krypton-<tag>-<pid>-<n>`.
    pub fn new(tag: &str) -> TempDir {
        let n = SEQ.fetch_add(1, Ordering::Relaxed);
        let p = std::env::temp_dir().join(format!("krypton-{tag}-{}-{n}", std::process::id()));
        let _ = fs::remove_dir_all(&p);
        fs::create_dir_all(&p).expect("create temp dir");
        TempDir(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// A running agent; killed and cleaned up on drop (even on test failure).
#[derive(Debug)]
pub struct Agent {
    child: Child,
    pub socket: PathBuf,
    log: PathBuf,
    pub dir: TempDir,
}

impl Agent {
    /// Starts the agent on a fresh Unix socket and waits until it listens.
    pub fn start() -> Agent {
        Agent::start_with(&[])
    }

    /// Like `start`, with extra agent flags.
    pub fn start_with(extra: &[&str]) -> Agent {
        let dir = TempDir::new("agent");
        let socket = dir.0.join("agent.sock");
        let log = dir.0.join("agent.log");
        let logf = fs::File::create(&log).expect("agent log");
        let child = Command::new(agent_bin())
            .arg("--listen")
            .arg(format!("unix:{}", socket.display()))
            .arg("-v")
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(logf)
            .spawn()
            .expect("start krypton-agent");
        let mut agent = Agent {
            child,
            socket,
            log,
            dir,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::os::unix::net::UnixStream::connect(&agent.socket).is_err() {
            if let Ok(Some(st)) = agent.child.try_wait() {
                panic!("agent exited at start ({st}): {}", agent.log_text());
            }
            assert!(
                Instant::now() < deadline,
                "agent did not listen: {}",
                agent.log_text()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        agent
    }

    /// The agent's stderr so far.
    pub fn log_text(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The agent's pid.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits up to `t` for the agent to exit on its own.
    pub fn wait_exit(&mut self, t: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + t;
        while Instant::now() < deadline {
            if let Ok(Some(st)) = self.child.try_wait() {
                return Some(st);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    /// Connects a client stream.
    pub async fn connect(&self) -> UnixStream {
        UnixStream::connect(&self.socket)
            .await
            .expect("connect to agent")
    }

    /// Runs `opts` with `stdin` and returns (exit code, stdout, stderr).
    pub async fn run(&self, opts: &RunOptions, stdin: Stdin) -> Outcome {
        self.run_ctl(opts, stdin, None).await
    }

    /// Like `run`, with control events.
    pub async fn run_ctl(
        &self,
        opts: &RunOptions,
        stdin: Stdin,
        control: Option<mpsc::UnboundedReceiver<Control>>,
    ) -> Outcome {
        let mut out = Capture::default();
        let mut err = Capture::default();
        let r = self
            .run_with(opts, stdin, control, &mut out, &mut err)
            .await;
        Outcome {
            result: r,
            stdout: out.buf,
            stderr: err.buf,
        }
    }

    /// Fully general run with caller-supplied writers.
    pub async fn run_with(
        &self,
        opts: &RunOptions,
        stdin: Stdin,
        control: Option<mpsc::UnboundedReceiver<Control>>,
        stdout: &mut (dyn AsyncWrite + Unpin + Send),
        stderr: &mut (dyn AsyncWrite + Unpin + Send),
    ) -> Result<i32, RunError> {
        let mut opts = opts.clone();
        opts.timeout.get_or_insert(Duration::from_secs(60));
        let stream = self.connect().await;
        let io = RunIo {
            stdin,
            stdout,
            stderr,
            control,
            size: Some((33, 99)),
        };
        run_with_io(stream, &opts, io).await
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let pid = self.child.id();
        let _ = self.child.kill();
        let st = self.child.wait();
        if std::thread::panicking() {
            eprintln!("--- agent log ({st:?}) ---\n{}", self.log_text());
        }
        remove_agent_cgroups(pid);
    }
}

/// Removes cgroups the agent `pid` left behind (named `<pid>-<n>`).
fn remove_agent_cgroups(pid: u32) {
    let prefix = format!("{pid}-");
    let roots = [
        "/sys/fs/cgroup/krypton",
        "/sys/fs/cgroup/memory/krypton",
        "/sys/fs/cgroup/pids/krypton",
        "/sys/fs/cgroup/cpu/krypton",
    ];
    for root in roots {
        let Ok(entries) = fs::read_dir(root) else {
            continue;
        };
        for e in entries.flatten() {
            if e.file_name().to_string_lossy().starts_with(&prefix) {
                for _ in 0..50 {
                    if fs::remove_dir(e.path()).is_ok() {
                        break;
                    }
                    std::thread::sleep(Duration::from_millis(20));
                }
            }
        }
    }
}

/// Result of one run.
#[derive(Debug)]
pub struct Outcome {
    pub result: Result<i32, RunError>,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
}

impl Outcome {
    /// The exit code as `krypton run` would return it.
    pub fn code(&self) -> i32 {
        krypton::run::exit_code(&self.result)
    }
    pub fn out(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }
    pub fn err(&self) -> String {
        String::from_utf8_lossy(&self.stderr).into_owned()
    }
}

/// An in-memory writer that can fire a notification on the first write.
#[derive(Debug, Default)]
pub struct Capture {
    pub buf: Vec<u8>,
    pub first: Option<oneshot::Sender<()>>,
}

impl AsyncWrite for Capture {
    fn poll_write(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
        b: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        self.buf.extend_from_slice(b);
        if let Some(tx) = self.first.take() {
            let _ = tx.send(());
        }
        Poll::Ready(Ok(b.len()))
    }
    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

/// Options for `argv` with interactive stdin off.
pub fn cmd(argv: &[&str]) -> RunOptions {
    RunOptions {
        argv: argv.iter().map(|s| s.to_string()).collect(),
        ..Default::default()
    }
}

/// Shell command options.
pub fn sh(script: &str) -> RunOptions {
    cmd(&["/bin/sh", "-c", script])
}

/// Stdin from bytes.
pub fn bytes(b: Vec<u8>) -> Stdin {
    Stdin::Reader(Box::new(std::io::Cursor::new(b)))
}

/// Builds a small ext4 image with busybox-static (`/bin/busybox` on the
/// host) and a marker file; `None` with a reason if tools are missing.
pub fn busybox_image(dir: &Path) -> Result<PathBuf, String> {
    let busybox = Path::new("/bin/busybox");
    if !busybox.exists() {
        return Err("/bin/busybox missing (apt install busybox-static)".into());
    }
    let root = dir.join("rootfs");
    let make = || -> Result<PathBuf> {
        for d in ["bin", "etc", "proc", "sys", "dev", "tmp", "root"] {
            fs::create_dir_all(root.join(d))?;
        }
        fs::copy(busybox, root.join("bin/busybox"))?;
        let applets = "sh ls cat echo hostname ps head tail wc true false sleep id stat dd tr \
            grep test mkdir touch rm uname mount env kill readlink";
        for a in applets.split_whitespace() {
            std::os::unix::fs::symlink("busybox", root.join("bin").join(a))?;
        }
        fs::write(root.join("etc/krypton-marker"), "from-the-image\n")?;
        let img = dir.join("rootfs.ext4");
        let out = Command::new("mkfs.ext4")
            .args(["-q", "-F", "-d"])
            .arg(&root)
            .arg(&img)
            .arg("16M")
            .output()
            .context("run mkfs.ext4")?;
        if !out.status.success() {
            bail!("mkfs.ext4 failed: {}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(img)
    };
    make().map_err(|e| format!("cannot build busybox image: {e:#}"))
}

/// Loop devices currently backed by `img` (via `losetup -j`).
pub fn loops_for(img: &Path) -> String {
    Command::new("losetup")
        .arg("-j")
        .arg(img)
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default()
}

/// Helper for exit statuses of the agent process itself.
pub fn describe(st: &std::process::ExitStatus) -> String {
    match (st.code(), st.signal()) {
        (Some(c), _) => format!("code {c}"),
        (_, Some(s)) => format!("signal {s}"),
        _ => "?".into(),
    }
}
