//! Krypton as an OCI runtime: runc's command-line contract (`create`,
//! `start`, `state`, `kill`, `delete`, `exec`, `ps`, `features`), so that
//! podman (through conmon) and containerd's runc shim can drive it. Each
//! container is a utility VM run by a detached monitor process
//! (monitor.rs) whose pid is the container's pid for the engine.
//!
//! Errors are one line on stderr (and a JSON or text record in `--log`)
//! with exit status 1, as runc does.

mod console;
pub mod exec;
mod monitor;
pub mod spec;
pub mod state;
mod vm;

use std::io::{BufRead, Read, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use state::{Root, StateError, Status};

pub use exec::{ExecArgs, ExecChildArgs};
pub use monitor::MonitorArgs;

/// Default `--root`.
pub const DEFAULT_ROOT: &str = "/run/krypton";

/// The global options every engine passes.
#[derive(Debug, Clone)]
pub struct Globals {
    /// State directory.
    pub root: Root,
    /// Where errors are recorded for the engine.
    pub log: Option<PathBuf>,
    /// `--log-format json`.
    pub json: bool,
    /// `--systemd-cgroup` (accepted; see the README).
    pub systemd_cgroup: bool,
}

/// Options of `krypton create`.
#[derive(clap::Args, Debug)]
pub struct CreateArgs {
    /// Bundle directory (holding config.json).
    #[arg(short, long, default_value = ".")]
    pub bundle: PathBuf,
    /// Write the container's pid (the monitor's) here.
    #[arg(long)]
    pub pid_file: Option<PathBuf>,
    /// Send the master of a new PTY to this Unix socket.
    #[arg(long)]
    pub console_socket: Option<PathBuf>,
    /// Accepted for compatibility (the guest agent pivots its own root).
    #[arg(long)]
    pub no_pivot: bool,
    /// Accepted for compatibility (there is no host keyring in a VM).
    #[arg(long)]
    pub no_new_keyring: bool,
    /// Extra fds to pass: only 0 is supported.
    #[arg(long, default_value_t = 0)]
    pub preserve_fds: u32,
    /// Container ID.
    pub id: String,
}

/// A command taking only the container ID.
#[derive(clap::Args, Debug)]
pub struct IdArgs {
    /// Container ID.
    pub id: String,
}

/// Options of `krypton kill`.
#[derive(clap::Args, Debug)]
pub struct KillArgs {
    /// Signal every process (the same here: the container's init
    /// forwards to its process, and SIGKILL ends the whole container).
    #[arg(short, long)]
    pub all: bool,
    /// Container ID.
    pub id: String,
    /// Signal name or number (default TERM).
    pub signal: Option<String>,
}

/// Options of `krypton delete`.
#[derive(clap::Args, Debug)]
pub struct DeleteArgs {
    /// Kill a running container first.
    #[arg(short, long)]
    pub force: bool,
    /// Container ID.
    pub id: String,
}

/// Options of `krypton ps`.
#[derive(clap::Args, Debug)]
pub struct PsArgs {
    /// table or json.
    #[arg(short, long, default_value = "table", value_parser = ["table", "json"])]
    pub format: String,
    /// Container ID.
    pub id: String,
}

/// Prints the error for the engine: stderr and the `--log` file; exit 1.
pub fn fail(g: &Globals, msg: &str) -> ExitCode {
    eprintln!("krypton: error: {msg}");
    if let Some(path) = &g.log {
        let line = if g.json {
            serde_json::json!({"level": "error", "msg": msg, "time": state::now_rfc3339()})
                .to_string()
        } else {
            format!("time=\"{}\" level=error msg={msg:?}", state::now_rfc3339())
        };
        if let Ok(mut f) = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
        {
            let _ = writeln!(f, "{line}");
        }
    }
    ExitCode::from(1)
}

fn done(g: &Globals, r: Result<(), String>) -> ExitCode {
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(msg) => fail(g, &msg),
    }
}

fn s(e: StateError) -> String {
    crate::cli::one_line(&e)
}

/// `krypton create`.
pub fn create(g: &Globals, a: CreateArgs) -> ExitCode {
    done(g, create_inner(g, a))
}

fn create_inner(g: &Globals, a: CreateArgs) -> Result<(), String> {
    if a.preserve_fds != 0 {
        return Err("--preserve-fds is not supported".into());
    }
    let bundle = std::fs::canonicalize(&a.bundle)
        .map_err(|e| format!("bundle {}: {e}", a.bundle.display()))?;
    let root = &g.root;
    let lock = root.create(&a.id).map_err(s)?;
    let r = (|| {
        // Refuse a bad bundle here, before a monitor starts.
        let pad = root.dir(&a.id).join("empty");
        std::fs::create_dir_all(&pad).map_err(|e| format!("{}: {e}", pad.display()))?;
        let plan = spec::load(&bundle, &pad).map_err(|e| e.to_string())?;
        let tty = match &a.console_socket {
            Some(sock) => {
                if !plan.terminal {
                    return Err("--console-socket given but process.terminal is false".into());
                }
                let (master, slave) = console::openpty().map_err(|e| format!("openpty: {e}"))?;
                console::send_master(sock, &master)
                    .map_err(|e| format!("console socket {}: {e}", sock.display()))?;
                Some(slave)
            }
            None if plan.terminal => {
                return Err("process.terminal is true but no --console-socket was given".into());
            }
            None => None,
        };
        let mut args = global_args(g);
        args.extend([
            "oci-monitor".into(),
            "--bundle".into(),
            bundle.clone().into_os_string(),
        ]);
        args.push(a.id.clone().into());
        let pid = spawn_detached(&args, tty, "the monitor")?;
        if let Some(p) = &a.pid_file {
            write_pid_file(p, pid)?;
        }
        Ok(())
    })();
    if r.is_err() {
        let _ = root.remove(&a.id);
    }
    drop(lock);
    r
}

/// The global options again, for a re-executed krypton.
fn global_args(g: &Globals) -> Vec<std::ffi::OsString> {
    let mut v: Vec<std::ffi::OsString> = vec!["--root".into(), g.root.0.clone().into()];
    if let Some(l) = &g.log {
        v.extend(["--log".into(), l.clone().into()]);
        v.extend([
            "--log-format".into(),
            (if g.json { "json" } else { "text" }).into(),
        ]);
    }
    v
}

/// Writes `pid` to `path` (atomically, as runc does).
fn write_pid_file(path: &Path, pid: u32) -> Result<(), String> {
    let tmp = path.with_extension("krypton-tmp");
    std::fs::write(&tmp, pid.to_string())
        .and_then(|()| std::fs::rename(&tmp, path))
        .map_err(|e| format!("pid file {}: {e}", path.display()))
}

/// Starts `krypton ARGS` in a new session (with `tty` as its stdio and
/// controlling terminal) and waits for its readiness line: `ok`, or
/// `err MESSAGE`. Returns its pid; it is not waited for (it outlives us
/// and is reaped by the engine, a subreaper).
#[expect(
    clippy::multiple_unsafe_ops_per_block,
    reason = "the pre_exec closure is one sequence of async-signal-safe calls"
)]
fn spawn_detached(
    args: &[std::ffi::OsString],
    tty: Option<OwnedFd>,
    what: &str,
) -> Result<u32, String> {
    let exe = std::env::current_exe().map_err(|e| format!("cannot find krypton: {e}"))?;
    let mut fds = [0; 2];
    // SAFETY: fds is a valid out array of two ints.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } < 0 {
        return Err(format!("pipe: {}", std::io::Error::last_os_error()));
    }
    use std::os::fd::FromRawFd;
    // SAFETY: pipe2 returned a fresh read end that we now own.
    let r = unsafe { OwnedFd::from_raw_fd(fds[0]) };
    // SAFETY: likewise the write end.
    let w = unsafe { OwnedFd::from_raw_fd(fds[1]) };
    let wfd = w.as_raw_fd();
    let mut cmd = Command::new(exe);
    cmd.args(args).env(monitor::READY_FD_ENV, wfd.to_string());
    let has_tty = tty.is_some();
    if let Some(t) = tty {
        let dup = |t: &OwnedFd| t.try_clone().map_err(|e| format!("dup: {e}"));
        cmd.stdin(Stdio::from(dup(&t)?))
            .stdout(Stdio::from(dup(&t)?))
            .stderr(Stdio::from(t));
    }
    use std::os::unix::process::CommandExt;
    // SAFETY: the closure only makes async-signal-safe system calls.
    unsafe {
        cmd.pre_exec(move || {
            if libc::setsid() < 0 {
                return Err(std::io::Error::last_os_error());
            }
            if has_tty && libc::ioctl(0, libc::TIOCSCTTY, 0) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            // The readiness pipe survives the exec.
            if libc::fcntl(wfd, libc::F_SETFD, 0) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = cmd
        .spawn()
        .map_err(|e| format!("cannot start {what}: {e}"))?;
    drop(w);
    drop(cmd);
    let mut line = String::new();
    let mut reader = std::io::BufReader::new(std::fs::File::from(r));
    let _ = reader.by_ref().take(64 << 10).read_line(&mut line);
    let line = line.trim();
    if line == "ok" {
        return Ok(child.id());
    }
    let _ = child.kill();
    let _ = child.wait();
    Err(match line.strip_prefix("err ") {
        Some(msg) => msg.to_string(),
        None => format!("{what} exited before it was ready"),
    })
}

/// Sends one request line to the container's monitor; its reply line
/// (without `ok`), or the error it gave.
fn request(root: &Root, id: &str, line: &str, wait: Duration) -> Result<String, String> {
    use std::os::unix::net::UnixStream;
    let path = root.socket(id);
    let mut c = UnixStream::connect(&path)
        .map_err(|e| format!("cannot reach the monitor of {id} ({}): {e}", path.display()))?;
    c.set_read_timeout(Some(wait)).map_err(|e| e.to_string())?;
    writeln!(c, "{line}").map_err(|e| format!("monitor of {id}: {e}"))?;
    let mut reply = String::new();
    std::io::BufReader::new(c)
        .take(64 << 10)
        .read_line(&mut reply)
        .map_err(|e| format!("monitor of {id}: {e}"))?;
    let reply = reply.trim();
    match reply.split_once(' ').unwrap_or((reply, "")) {
        ("ok", rest) => Ok(rest.to_string()),
        ("err", msg) => Err(msg.to_string()),
        _ => Err(format!("the monitor of {id} ended without an answer")),
    }
}

/// `krypton start`.
pub fn start(g: &Globals, a: IdArgs) -> ExitCode {
    done(
        g,
        (|| {
            let st = g.root.load(&a.id).map_err(s)?;
            match st.live_status() {
                Status::Created => {}
                Status::Running => return Err(format!("container {} is already running", a.id)),
                Status::Stopped => {
                    return Err(format!("cannot start container {}: it has stopped", a.id));
                }
            }
            request(&g.root, &a.id, "start", Duration::from_secs(600)).map(|_| ())
        })(),
    )
}

/// `krypton state`.
pub fn state(g: &Globals, a: IdArgs) -> ExitCode {
    done(
        g,
        (|| {
            let st = g.root.load(&a.id).map_err(s)?;
            let text = serde_json::to_string_pretty(&st.spec_view()).map_err(|e| e.to_string())?;
            writeln!(std::io::stdout(), "{text}").map_err(|e| e.to_string())
        })(),
    )
}

/// Signal numbers by name (with or without SIG).
pub fn parse_signal(s: &str) -> Result<i32, String> {
    if let Ok(n) = s.parse::<i32>() {
        return if (1..=64).contains(&n) {
            Ok(n)
        } else {
            Err(format!("invalid signal {s}"))
        };
    }
    let name = s.to_ascii_uppercase();
    let name = name.strip_prefix("SIG").unwrap_or(&name);
    let n = match name {
        "HUP" => libc::SIGHUP,
        "INT" => libc::SIGINT,
        "QUIT" => libc::SIGQUIT,
        "ILL" => libc::SIGILL,
        "TRAP" => libc::SIGTRAP,
        "ABRT" | "IOT" => libc::SIGABRT,
        "BUS" => libc::SIGBUS,
        "FPE" => libc::SIGFPE,
        "KILL" => libc::SIGKILL,
        "USR1" => libc::SIGUSR1,
        "SEGV" => libc::SIGSEGV,
        "USR2" => libc::SIGUSR2,
        "PIPE" => libc::SIGPIPE,
        "ALRM" => libc::SIGALRM,
        "TERM" => libc::SIGTERM,
        "STKFLT" => libc::SIGSTKFLT,
        "CHLD" | "CLD" => libc::SIGCHLD,
        "CONT" => libc::SIGCONT,
        "STOP" => libc::SIGSTOP,
        "TSTP" => libc::SIGTSTP,
        "TTIN" => libc::SIGTTIN,
        "TTOU" => libc::SIGTTOU,
        "URG" => libc::SIGURG,
        "XCPU" => libc::SIGXCPU,
        "XFSZ" => libc::SIGXFSZ,
        "VTALRM" => libc::SIGVTALRM,
        "PROF" => libc::SIGPROF,
        "WINCH" => libc::SIGWINCH,
        "IO" | "POLL" => libc::SIGIO,
        "PWR" => libc::SIGPWR,
        "SYS" => libc::SIGSYS,
        _ => return Err(format!("invalid signal {s}")),
    };
    Ok(n)
}

/// `krypton kill`.
pub fn kill(g: &Globals, a: KillArgs) -> ExitCode {
    done(
        g,
        (|| {
            let signo = parse_signal(a.signal.as_deref().unwrap_or("TERM"))?;
            let st = g.root.load(&a.id).map_err(s)?;
            if st.live_status() == Status::Stopped {
                return Err(format!("container {} is not running", a.id));
            }
            match request(
                &g.root,
                &a.id,
                &format!("kill {signo}"),
                Duration::from_secs(30),
            ) {
                Ok(_) => Ok(()),
                // The monitor cannot answer: SIGKILL still ends the container.
                Err(_) if signo == libc::SIGKILL => kill_monitor(st.pid),
                Err(e) => Err(e),
            }
        })(),
    )
}

fn kill_monitor(pid: u32) -> Result<(), String> {
    let p = libc::pid_t::try_from(pid).map_err(|_| format!("bad pid {pid}"))?;
    // SAFETY: kill has no memory effects.
    if unsafe { libc::kill(p, libc::SIGKILL) } < 0 {
        let e = std::io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::ESRCH) {
            return Err(format!("kill {pid}: {e}"));
        }
    }
    Ok(())
}

/// Waits until `pid` is gone (or a zombie).
fn wait_gone(pid: u32, limit: Duration) -> bool {
    let t = Instant::now();
    while state::pid_alive(pid) {
        if t.elapsed() > limit {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    true
}

/// `krypton delete`.
pub fn delete(g: &Globals, a: DeleteArgs) -> ExitCode {
    done(
        g,
        (|| {
            let st = match g.root.load(&a.id) {
                Ok(st) => st,
                Err(StateError::NotFound(_)) if a.force => {
                    // A half-made directory (create failed), or nothing at all.
                    let _ = state::check_id(&a.id).map(|()| g.root.remove(&a.id));
                    return Ok(());
                }
                Err(e) => return Err(s(e)),
            };
            let lock = g.root.lock(&a.id).map_err(s)?;
            match st.live_status() {
                Status::Stopped => {}
                Status::Running if !a.force => {
                    return Err(format!(
                        "cannot delete container {} that is not stopped: running",
                        a.id
                    ));
                }
                Status::Running => {
                    let _ = request(&g.root, &a.id, "kill 9", Duration::from_secs(10));
                    if !wait_gone(st.pid, Duration::from_secs(10)) {
                        kill_monitor(st.pid)?;
                        wait_gone(st.pid, Duration::from_secs(10));
                    }
                }
                // Never started: nothing of the workload to lose.
                Status::Created => {
                    kill_monitor(st.pid)?;
                    wait_gone(st.pid, Duration::from_secs(10));
                }
            }
            g.root.remove(&a.id).map_err(s)?;
            drop(lock);
            Ok(())
        })(),
    )
}

/// `krypton ps`: the container's processes run in the guest; the host
/// process that stands for them is the monitor.
pub fn ps(g: &Globals, a: PsArgs) -> ExitCode {
    done(
        g,
        (|| {
            let st = g.root.load(&a.id).map_err(s)?;
            let pids: Vec<u32> = (st.live_status() != Status::Stopped)
                .then_some(st.pid)
                .into_iter()
                .collect();
            let text = if a.format == "json" {
                serde_json::to_string(&pids).map_err(|e| e.to_string())?
            } else {
                let mut t = "PID CMD".to_string();
                for p in &pids {
                    t.push_str(&format!("\n{p} krypton oci-monitor {}", a.id));
                }
                t
            };
            writeln!(std::io::stdout(), "{text}").map_err(|e| e.to_string())
        })(),
    )
}

/// `krypton features`: what this runtime supports, as the runtime spec's
/// features document.
pub fn features(g: &Globals) -> ExitCode {
    let caps: Vec<String> = spec::cap_names().map(|c| format!("CAP_{c}")).collect();
    let doc = serde_json::json!({
        "ociVersionMin": "1.0.0",
        "ociVersionMax": state::OCI_VERSION,
        "hooks": [],
        "mountOptions": ["ro", "rw", "nosuid", "suid", "nodev", "dev", "noexec", "exec",
            "relatime", "strictatime", "noatime", "sync", "async", "bind", "rbind",
            "private", "rprivate", "slave", "rslave", "shared", "rshared"],
        "linux": {
            "namespaces": ["mount", "pid", "uts", "ipc", "network", "cgroup"],
            "capabilities": caps,
            "cgroup": {"v1": false, "v2": true, "systemd": false, "systemdUser": false},
            "seccomp": {"enabled": false},
            "apparmor": {"enabled": false},
            "selinux": {"enabled": false},
        },
        "annotations": {"io.github.krypton.vm": "true"},
    });
    done(
        g,
        writeln!(std::io::stdout(), "{doc:#}").map_err(|e| e.to_string()),
    )
}

/// The hidden `oci-monitor`.
pub fn monitor(g: &Globals, a: MonitorArgs) -> ExitCode {
    monitor::run(&g.root, a)
}

/// Sends the VMM's log records to `--log` (JSON lines with
/// `--log-format json`), else to `ROOT/ID/monitor.log`.
pub fn route_log(b: &mut env_logger::Builder, g: &Globals, id: Option<&str>) {
    let fallback = id
        .filter(|id| state::check_id(id).is_ok())
        .map(|id| g.root.dir(id).join("monitor.log"));
    let file = g.log.as_ref().or(fallback.as_ref()).and_then(|p| {
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(p)
            .ok()
    });
    let Some(file) = file else {
        b.filter_level(log::LevelFilter::Off);
        return;
    };
    b.target(env_logger::Target::Pipe(Box::new(file)));
    if g.json {
        b.format(|buf, r| {
            let rec = serde_json::json!({
                "level": r.level().as_str().to_ascii_lowercase(),
                "msg": r.args().to_string(),
                "time": state::now_rfc3339(),
            });
            writeln!(buf, "{rec}")
        });
    }
}
