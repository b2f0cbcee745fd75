//! The per-container monitor (`krypton create` re-executes itself as
//! `krypton oci-monitor`): it runs the VM, keeps the agent connection for
//! the container's process, and serves `ROOT/ID/ctl.sock` with one text
//! line per request:
//!
//! - `start` → `ok` or `err MESSAGE`: run the process;
//! - `kill SIGNAL` → `ok` or `err MESSAGE`;
//! - `exec` → `ok PID` (the agent-side pid of the container's process),
//!   after which the connection is a byte pipe to a new agent connection
//!   (`krypton exec` speaks the agent protocol over it).
//!
//! Its stdio is the container's; it exits with the container's status,
//! which is what conmon and containerd's shim wait for.

use std::io::Write;
use std::os::fd::{FromRawFd, OwnedFd};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{Mutex, mpsc, oneshot};

use super::spec::{self, Plan};
use super::state::{Root, State, Status, now_rfc3339};
use super::vm::{self, AgentVm};
use crate::run::{Control, RunOptions, Timeline, exit_code, run_command_ctl};

/// The environment variable carrying the readiness pipe's fd.
pub const READY_FD_ENV: &str = "KRYPTON_OCI_READY_FD";

/// Arguments of the hidden `oci-monitor` subcommand.
#[derive(clap::Args, Debug)]
pub struct MonitorArgs {
    /// The bundle.
    #[arg(long)]
    pub bundle: PathBuf,
    /// Container ID.
    pub id: String,
}

/// Shared between the control connections.
struct Shared {
    /// The agent connection kept for the container's process until start.
    main: Option<tokio::io::DuplexStream>,
    /// Forwards signals to the running process.
    control: Option<mpsc::UnboundedSender<Control>>,
    /// Agent-side pid of the container's process.
    pid: Option<u32>,
    state: State,
}

/// Appends `{"id","agent_ms","exit_ms"}` (since the monitor started) to
/// this file when set: the VM start share `cargo xtask bench` reports.
pub const TIMINGS_ENV: &str = "KRYPTON_OCI_TIMINGS";

/// Runs the monitor; the exit code is the container's.
pub fn run(root: &Root, args: MonitorArgs) -> ExitCode {
    let t0 = std::time::Instant::now();
    let ready = std::env::var(READY_FD_ENV)
        .ok()
        .and_then(|v| v.parse::<i32>().ok())
        // SAFETY: `create` passed this fd (the readiness pipe's write end)
        // to us alone; we own it from here.
        .map(|fd| std::fs::File::from(unsafe { OwnedFd::from_raw_fd(fd) }));
    // SAFETY: unsetenv before any thread exists.
    unsafe { std::env::remove_var(READY_FD_ENV) };
    let mut ready = ready;
    let mut tell = |line: &str| {
        if let Some(mut f) = ready.take() {
            let _ = writeln!(f, "{line}");
        }
    };
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            tell(&format!("err cannot start the I/O runtime: {e}"));
            return ExitCode::from(1);
        }
    };
    let pad = root.dir(&args.id).join("empty");
    let prepared = std::fs::create_dir_all(&pad)
        .map_err(|e| format!("cannot create {}: {e}", pad.display()))
        .and_then(|()| spec::load(&args.bundle, &pad).map_err(|e| e.to_string()))
        .and_then(|plan| {
            let timeline = Timeline::default();
            vm::start(&plan, &timeline).map(|vm| (plan, vm))
        });
    let (plan, vm) = match prepared {
        Ok(p) => p,
        Err(e) => {
            tell(&format!("err {}", e.replace('\n', " ")));
            return ExitCode::from(1);
        }
    };
    let vm = Arc::new(vm);
    let code = rt.block_on(serve(root, &args, plan, vm.clone(), &mut tell, t0));
    // Stop the VM before exiting (the agent connections go with it).
    drop(rt);
    if let Ok(mut vm) = Arc::try_unwrap(vm) {
        vm.stop();
    }
    ExitCode::from(code)
}

async fn serve(
    root: &Root,
    args: &MonitorArgs,
    plan: Plan,
    vm: Arc<AgentVm>,
    tell: &mut dyn FnMut(&str),
    t0: std::time::Instant,
) -> u8 {
    let main = match vm.connect().await {
        Ok(s) => s,
        Err(e) => {
            tell(&format!("err {e}"));
            return 1;
        }
    };
    let agent_ms = t0.elapsed().as_secs_f64() * 1e3;
    let sock = root.socket(&args.id);
    let _ = std::fs::remove_file(&sock);
    let listener = match UnixListener::bind(&sock) {
        Ok(l) => l,
        Err(e) => {
            tell(&format!("err cannot listen on {}: {e}", sock.display()));
            return 1;
        }
    };
    let state = State {
        id: args.id.clone(),
        bundle: args.bundle.clone(),
        pid: std::process::id(),
        status: Status::Created,
        exit_code: None,
        created: now_rfc3339(),
        annotations: plan.annotations.clone(),
    };
    if let Err(e) = root.save(&state) {
        tell(&format!("err {e}"));
        return 1;
    }
    let shared = Arc::new(Mutex::new(Shared {
        main: Some(main),
        control: None,
        pid: None,
        state,
    }));
    tell("ok");
    let (exit_tx, mut exit_rx) = mpsc::unbounded_channel::<i32>();
    let plan = Arc::new(plan);
    let code = loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((conn, _)) = accepted else { continue };
                let ctx = Ctx {
                    root: root.clone(),
                    shared: shared.clone(),
                    vm: vm.clone(),
                    plan: plan.clone(),
                    exit: exit_tx.clone(),
                };
                tokio::spawn(async move { handle(conn, ctx).await });
            }
            Some(code) = exit_rx.recv() => break code,
        }
    };
    let mut sh = shared.lock().await;
    sh.state.status = Status::Stopped;
    sh.state.exit_code = Some(code);
    if let Err(e) = root.save(&sh.state) {
        log::warn!("{e}");
    }
    if let Some(path) = std::env::var_os(TIMINGS_ENV) {
        let rec = serde_json::json!({
            "id": args.id,
            "agent_ms": agent_ms,
            "exit_ms": t0.elapsed().as_secs_f64() * 1e3,
        });
        if let Ok(mut f) = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
        {
            let _ = writeln!(f, "{rec}");
        }
    }
    u8::try_from(code).unwrap_or(255)
}

struct Ctx {
    root: Root,
    shared: Arc<Mutex<Shared>>,
    vm: Arc<AgentVm>,
    plan: Arc<Plan>,
    exit: mpsc::UnboundedSender<i32>,
}

async fn handle(conn: UnixStream, ctx: Ctx) {
    let mut conn = BufReader::new(conn);
    let mut line = String::new();
    // One request line of bounded length.
    let read = tokio::time::timeout(
        std::time::Duration::from_secs(10),
        (&mut conn).take(256).read_line(&mut line),
    )
    .await;
    if !matches!(read, Ok(Ok(n)) if n > 0) {
        return;
    }
    let reply = match line.trim().split_once(' ').unwrap_or((line.trim(), "")) {
        ("start", _) => start(&ctx).await,
        ("kill", sig) => kill(&ctx, sig).await,
        ("exec", _) => {
            let pid = ctx.shared.lock().await.pid;
            let Some(pid) = pid else {
                let _ = conn.write_all(b"err the container is not running\n").await;
                return;
            };
            match ctx.vm.connect().await {
                Ok(mut agent) => {
                    if conn
                        .write_all(format!("ok {pid}\n").as_bytes())
                        .await
                        .is_ok()
                    {
                        let _ = tokio::io::copy_bidirectional(&mut conn, &mut agent).await;
                    }
                }
                Err(e) => {
                    let _ = conn.write_all(format!("err {e}\n").as_bytes()).await;
                }
            }
            return;
        }
        (other, _) => Err(format!("unknown request {other:?}")),
    };
    let text = match reply {
        Ok(()) => "ok\n".to_string(),
        Err(e) => format!("err {}\n", e.replace('\n', " ")),
    };
    let _ = conn.write_all(text.as_bytes()).await;
}

async fn start(ctx: &Ctx) -> Result<(), String> {
    let mut sh = ctx.shared.lock().await;
    let Some(stream) = sh.main.take() else {
        return Err(format!(
            "container {} is not in the created state",
            sh.state.id
        ));
    };
    let p = &ctx.plan;
    let (pid_tx, pid_rx) = std::sync::mpsc::channel();
    let opts = RunOptions {
        argv: p.argv.clone(),
        env: p.env.clone(),
        cwd: p.cwd.clone(),
        uid: p.uid,
        gid: p.gid,
        tty: p.terminal,
        interactive: true,
        hostname: p.hostname.clone(),
        limits: p.limits.clone(),
        restored: ctx.vm.restored,
        oci: Some(Box::new(p.settings.clone())),
        started: Some(pid_tx),
        ..RunOptions::default()
    };
    let (ctl_tx, ctl_rx) = mpsc::unbounded_channel();
    sh.control = Some(ctl_tx.clone());
    let (started_tx, started_rx) = oneshot::channel::<Result<u32, String>>();
    let exit = ctx.exit.clone();
    tokio::spawn(async move {
        let mut started_tx = Some(started_tx);
        let run = run_command_ctl(stream, &opts, (ctl_tx, ctl_rx));
        tokio::pin!(run);
        let result = loop {
            tokio::select! {
                r = &mut run => break r,
                () = tokio::time::sleep(std::time::Duration::from_millis(20)), if started_tx.is_some() => {
                    if let Ok(pid) = pid_rx.try_recv() && let Some(tx) = started_tx.take() {
                        let _ = tx.send(Ok(pid));
                    }
                }
            }
        };
        if let Some(tx) = started_tx.take() {
            let msg = match &result {
                Err(e) => crate::cli::one_line(e),
                Ok(_) => String::new(),
            };
            if let Ok(pid) = pid_rx.try_recv() {
                let _ = tx.send(Ok(pid));
            } else {
                let _ = tx.send(Err(msg));
            }
        }
        if let Err(e) = &result {
            // The container's stderr: what conmon shows the user.
            eprintln!("krypton: error: {}", crate::cli::one_line(e));
        }
        let _ = exit.send(exit_code(&result));
    });
    drop(sh);
    // `start` returns once the process runs (or could not be started).
    match started_rx.await {
        Ok(Ok(pid)) => {
            let mut sh = ctx.shared.lock().await;
            sh.pid = Some(pid);
            sh.state.status = Status::Running;
            ctx.root.save(&sh.state).map_err(|e| e.to_string())
        }
        Ok(Err(msg)) if msg.is_empty() => Ok(()),
        Ok(Err(msg)) => Err(msg),
        Err(_) => Err("the container's process ended before it started".into()),
    }
}

async fn kill(ctx: &Ctx, sig: &str) -> Result<(), String> {
    let signo: i32 = sig
        .trim()
        .parse()
        .ok()
        .filter(|s| (1..=64).contains(s))
        .ok_or_else(|| format!("bad signal {sig:?}"))?;
    let sh = ctx.shared.lock().await;
    match (&sh.control, sh.main.is_some()) {
        (Some(tx), _) => {
            tx.send(Control::Signal(signo))
                .map_err(|_| "the container is not running".to_string())?;
            if signo == libc::SIGKILL {
                // Nothing survives SIGKILL and nothing is left to drain:
                // the container ends now, with the VM, rather than after
                // the (emulated, maybe slow) guest reports it.
                let _ = ctx.exit.send(128 + signo);
            }
            Ok(())
        }
        // Created, never started: the container ends, killed by the signal.
        (None, true) => {
            let _ = ctx.exit.send(128 + signo);
            Ok(())
        }
        (None, false) => Err("the container is not running".into()),
    }
}
