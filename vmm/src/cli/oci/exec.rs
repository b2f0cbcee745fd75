//! `krypton exec`: a process in a running container. The CLI asks the
//! container's monitor for a pipe to a new agent connection and runs the
//! process there with `join` set to the container's process, so it gets
//! that container's root and namespaces. With `--detach` a re-executed
//! krypton (`oci-exec`) does this in a new session and the CLI returns
//! once the process runs, leaving its pid in `--pid-file` (conmon waits
//! for it).

use std::io::Write;
use std::os::fd::{FromRawFd, OwnedFd};
use std::path::PathBuf;
use std::process::ExitCode;

use krypton_protocol::OciSettings;
use serde::{Deserialize, Serialize};
use tokio::io::AsyncReadExt;

use super::spec::{self, ProcessPlan};
use super::state::Status;
use super::{Globals, console, fail, global_args, monitor, s, spawn_detached, write_pid_file};
use crate::run::{RunOptions, exit_code, run_command_ctl};

/// Options of `krypton exec`.
#[derive(clap::Args, Debug)]
pub struct ExecArgs {
    /// process.json (the runtime spec's process object).
    #[arg(short, long)]
    pub process: Option<PathBuf>,
    /// Return once the process runs.
    #[arg(short, long)]
    pub detach: bool,
    /// Write the process's pid (its host-side stand-in) here.
    #[arg(long)]
    pub pid_file: Option<PathBuf>,
    /// Send the master of a new PTY to this Unix socket.
    #[arg(long)]
    pub console_socket: Option<PathBuf>,
    /// Allocate a PTY.
    #[arg(short, long)]
    pub tty: bool,
    /// Environment KEY=VALUE (repeatable).
    #[arg(short, long = "env")]
    pub env: Vec<String>,
    /// Working directory.
    #[arg(long)]
    pub cwd: Option<String>,
    /// UID[:GID].
    #[arg(short, long)]
    pub user: Option<String>,
    /// Extra fds to pass: only 0 is supported.
    #[arg(long, default_value_t = 0)]
    pub preserve_fds: u32,
    /// Container ID.
    pub id: String,
    /// Command and arguments (without --process).
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    pub command: Vec<String>,
}

/// Options of the hidden `oci-exec` (the detached half).
#[derive(clap::Args, Debug)]
pub struct ExecChildArgs {
    /// The prepared exec (JSON), removed once read.
    #[arg(long)]
    pub plan: PathBuf,
    /// Container ID.
    pub id: String,
}

/// What the detached half needs.
#[derive(Debug, Serialize, Deserialize)]
struct ExecPlan {
    process: ProcessPlan,
    groups: Vec<u32>,
    no_new_privileges: bool,
    caps: Option<[u64; 5]>,
    rlimits: Vec<(u32, u64, u64)>,
}

impl ExecPlan {
    fn settings(&self, join: u32) -> OciSettings {
        OciSettings {
            additional_gids: self.groups.clone(),
            no_new_privileges: self.no_new_privileges,
            caps: self.caps.map(|c| krypton_protocol::oci::Capabilities {
                bounding: c[0],
                effective: c[1],
                permitted: c[2],
                inheritable: c[3],
                ambient: c[4],
            }),
            rlimits: self
                .rlimits
                .iter()
                .map(|&(resource, soft, hard)| krypton_protocol::oci::Rlimit {
                    resource,
                    soft,
                    hard,
                })
                .collect(),
            join,
            ..OciSettings::default()
        }
    }
}

fn plan_of(a: &ExecArgs) -> Result<ExecPlan, String> {
    let mut settings = OciSettings::default();
    let process = match &a.process {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .map_err(|e| format!("process {}: {e}", path.display()))?;
            let p: oci_spec::runtime::Process = serde_json::from_str(&text)
                .map_err(|e| format!("process {}: {e}", path.display()))?;
            spec::map_process(&p, &mut settings).map_err(|e| e.to_string())?
        }
        None => {
            if a.command.is_empty() {
                return Err("exec needs --process or a command".into());
            }
            let (uid, gid) = match a.user.as_deref() {
                None => (0, 0),
                Some(u) => {
                    let (uid, gid) = u.split_once(':').unwrap_or((u, "0"));
                    let n = |x: &str| x.parse::<u32>().map_err(|_| format!("bad user {u:?}"));
                    (n(uid)?, n(gid)?)
                }
            };
            ProcessPlan {
                argv: a.command.clone(),
                env: a.env.clone(),
                cwd: a.cwd.clone().unwrap_or_else(|| "/".into()),
                uid,
                gid,
                terminal: a.tty,
            }
        }
    };
    let c = settings.caps;
    Ok(ExecPlan {
        process,
        groups: settings.additional_gids,
        no_new_privileges: settings.no_new_privileges,
        caps: c.map(|c| {
            [
                c.bounding,
                c.effective,
                c.permitted,
                c.inheritable,
                c.ambient,
            ]
        }),
        rlimits: settings
            .rlimits
            .iter()
            .map(|r| (r.resource, r.soft, r.hard))
            .collect(),
    })
}

/// `krypton exec`.
pub fn exec(g: &Globals, a: ExecArgs) -> ExitCode {
    let r = (|| -> Result<Option<u8>, String> {
        if a.preserve_fds != 0 {
            return Err("--preserve-fds is not supported".into());
        }
        let st = g.root.load(&a.id).map_err(s)?;
        if st.live_status() != Status::Running {
            return Err(format!(
                "cannot exec in container {}: it is not running",
                a.id
            ));
        }
        let plan = plan_of(&a)?;
        let tty = match &a.console_socket {
            Some(sock) => {
                let (master, slave) = console::openpty().map_err(|e| format!("openpty: {e}"))?;
                console::send_master(sock, &master)
                    .map_err(|e| format!("console socket {}: {e}", sock.display()))?;
                Some(slave)
            }
            None => None,
        };
        if !a.detach && tty.is_none() {
            return run_exec(g, &a.id, &plan, None).map(Some);
        }
        // Detached (or with a console socket): a new session runs it.
        let file = g
            .root
            .dir(&a.id)
            .join(format!("exec-{}.json", std::process::id()));
        let text = serde_json::to_string(&plan).map_err(|e| e.to_string())?;
        std::fs::write(&file, text).map_err(|e| format!("{}: {e}", file.display()))?;
        let mut args = global_args(g);
        args.extend([
            "oci-exec".into(),
            "--plan".into(),
            file.clone().into_os_string(),
            a.id.clone().into(),
        ]);
        let r = spawn_detached(&args, tty, "the exec");
        let _ = std::fs::remove_file(&file);
        let pid = r?;
        if let Some(p) = &a.pid_file {
            write_pid_file(p, pid)?;
        }
        Ok(None)
    })();
    match r {
        Ok(Some(code)) => ExitCode::from(code),
        Ok(None) => ExitCode::SUCCESS,
        Err(msg) => fail(g, &msg),
    }
}

/// The hidden `oci-exec`.
pub fn exec_child(g: &Globals, a: ExecChildArgs) -> ExitCode {
    let ready = std::env::var(monitor::READY_FD_ENV)
        .ok()
        .and_then(|v| v.parse::<i32>().ok())
        // SAFETY: our parent passed this fd (the readiness pipe) to us alone.
        .map(|fd| std::fs::File::from(unsafe { OwnedFd::from_raw_fd(fd) }));
    let plan = std::fs::read_to_string(&a.plan)
        .map_err(|e| e.to_string())
        .and_then(|t| serde_json::from_str::<ExecPlan>(&t).map_err(|e| e.to_string()));
    let _ = std::fs::remove_file(&a.plan);
    let plan = match plan {
        Ok(p) => p,
        Err(e) => {
            if let Some(mut f) = ready {
                let _ = writeln!(f, "err exec plan {}: {e}", a.plan.display());
            }
            return ExitCode::from(1);
        }
    };
    match run_exec(g, &a.id, &plan, ready) {
        Ok(code) => ExitCode::from(code),
        Err(msg) => fail(g, &msg),
    }
}

/// Runs the exec in the foreground: this process's stdio, signals and
/// terminal; `ready` gets `ok` once the process started (or `err ...`).
fn run_exec(
    g: &Globals,
    id: &str,
    plan: &ExecPlan,
    ready: Option<std::fs::File>,
) -> Result<u8, String> {
    let ready = std::sync::Arc::new(std::sync::Mutex::new(ready));
    let tell = |line: String| {
        if let Some(mut f) = ready.lock().ok().and_then(|mut r| r.take()) {
            let _ = writeln!(f, "{line}");
        }
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the I/O runtime: {e}"))?;
    let sock = g.root.socket(id);
    let result = rt.block_on(async {
        let mut conn = tokio::net::UnixStream::connect(&sock)
            .await
            .map_err(|e| format!("cannot reach the monitor of {id}: {e}"))?;
        use tokio::io::AsyncWriteExt;
        conn.write_all(b"exec\n")
            .await
            .map_err(|e| format!("monitor of {id}: {e}"))?;
        // Byte by byte: the agent's hello follows the line.
        let mut line = Vec::new();
        loop {
            let b = conn
                .read_u8()
                .await
                .map_err(|e| format!("monitor of {id}: {e}"))?;
            if b == b'\n' || line.len() > 4096 {
                break;
            }
            line.push(b);
        }
        let line = String::from_utf8_lossy(&line).into_owned();
        let pid: u32 = match line.split_once(' ') {
            Some(("ok", pid)) => pid.parse().map_err(|_| format!("bad reply {line:?}"))?,
            Some(("err", msg)) => return Err(msg.to_string()),
            _ => return Err(format!("monitor of {id}: bad reply {line:?}")),
        };
        let p = &plan.process;
        let (pid_tx, pid_rx) = std::sync::mpsc::channel();
        let opts = RunOptions {
            argv: p.argv.clone(),
            env: p.env.clone(),
            cwd: p.cwd.clone(),
            uid: p.uid,
            gid: p.gid,
            tty: p.terminal,
            interactive: true,
            oci: Some(Box::new(plan.settings(pid))),
            started: Some(pid_tx),
            ..RunOptions::default()
        };
        let ready2 = ready.clone();
        std::thread::spawn(move || {
            if pid_rx.recv().is_ok()
                && let Some(mut f) = ready2.lock().ok().and_then(|mut r| r.take())
            {
                let _ = writeln!(f, "ok");
            }
        });
        let r = run_command_ctl(conn, &opts, tokio::sync::mpsc::unbounded_channel()).await;
        Ok(r)
    });
    match result {
        Ok(r) => {
            if let Err(e) = &r {
                tell(format!("err {}", crate::cli::one_line(e)));
                eprintln!("krypton: error: {}", crate::cli::one_line(e));
            }
            Ok(u8::try_from(exit_code(&r)).unwrap_or(255))
        }
        Err(e) => {
            tell(format!("err {e}"));
            Err(e)
        }
    }
}
