//! `cargo xtask bench` part: exec round trip of `/bin/true` through the
//! guest agent on the host transport (Unix socket, as root), against a
//! plain fork+exec+wait of `/bin/true` in the same run.
//!
//! One connection; each sample is Exec → StdinEof → … → Exit on the host
//! client side, so it includes the container setup (clone into new
//! namespaces, cgroup, re-exec of the container init, fork+exec of the
//! command) and the agent's output/exit reporting. Samples of the two
//! kinds are interleaved so machine load hits both alike.
#![allow(clippy::print_stdout)] // the figures are this module's output

use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use krypton_protocol::{
    ExecRequest, ExitStatus, Message, PROTOCOL_VERSION, read_message, write_message,
};

const WARMUP: usize = 10;

fn runs() -> usize {
    std::env::var("KRYPTON_BENCH_AGENT_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200)
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map_or_else(|| PathBuf::from("."), Path::to_path_buf)
}

fn build_agent() -> Result<PathBuf> {
    if let Some(p) = std::env::var_os("KRYPTON_AGENT_BIN") {
        return Ok(p.into());
    }
    let root = workspace_root();
    let st = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .args(["build", "--release", "-q", "-p", "krypton-agent"])
        .current_dir(&root)
        .status()
        .context("running cargo build -p krypton-agent")?;
    if !st.success() {
        bail!("cargo build --release -p krypton-agent failed");
    }
    Ok(crate::cache::target_dir().join("release/krypton-agent"))
}

struct AgentProc {
    child: Child,
    dir: PathBuf,
}

impl Drop for AgentProc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn start_agent(bin: &Path) -> Result<(AgentProc, UnixStream)> {
    let dir = std::env::temp_dir().join(format!("krypton-bench-agent-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let sock = dir.join("agent.sock");
    let child = Command::new(bin)
        .arg("--listen")
        .arg(format!("unix:{}", sock.display()))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .with_context(|| format!("starting {}", bin.display()))?;
    let agent = AgentProc { child, dir };
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match UnixStream::connect(&sock) {
            Ok(s) => return Ok((agent, s)),
            Err(_) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(10)),
            Err(e) => bail!("agent did not listen on {}: {e}", sock.display()),
        }
    }
}

fn exec_true(s: &mut UnixStream, id: u32) -> Result<Duration> {
    let req = ExecRequest {
        id,
        argv: vec!["/bin/true".into()],
        ..Default::default()
    };
    let t0 = Instant::now();
    write_message(s, &Message::Exec(Box::new(req)))?;
    write_message(s, &Message::StdinEof { id })?;
    loop {
        match read_message(s)? {
            Message::Exit { id: got, status } if got == id => {
                let took = t0.elapsed();
                if status != ExitStatus::Code(0) {
                    bail!("/bin/true exited with {status:?}");
                }
                return Ok(took);
            }
            Message::ExecError { message, .. } | Message::Error { message, .. } => {
                bail!("agent: {message}")
            }
            _ => {}
        }
    }
}

fn fork_exec_true() -> Result<Duration> {
    let t0 = Instant::now();
    let st = Command::new("/bin/true").stdin(Stdio::null()).status()?;
    let took = t0.elapsed();
    if !st.success() {
        bail!("/bin/true failed");
    }
    Ok(took)
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn report(name: &str, mut v: Vec<Duration>) -> Duration {
    v.sort();
    let (med, p99) = (percentile(&v, 0.5), percentile(&v, 0.99));
    println!(
        "  {name:<28} median {:>8.3} ms   p99 {:>8.3} ms   min {:>8.3} ms   (n={})",
        med.as_secs_f64() * 1e3,
        p99.as_secs_f64() * 1e3,
        v[0].as_secs_f64() * 1e3,
        v.len()
    );
    med
}

/// Runs the agent exec round-trip benchmark and prints median/p99 and the
/// ratio to a local fork+exec.
pub fn run() -> Result<()> {
    // SAFETY: geteuid has no side effects.
    if unsafe { libc_geteuid() } != 0 {
        println!("agent exec round trip: skipped (needs root for namespaces and cgroups)");
        return Ok(());
    }
    let bin = build_agent()?;
    let (_agent, mut s) = start_agent(&bin)?;
    match read_message(&mut s)? {
        Message::Hello {
            version: PROTOCOL_VERSION,
            ..
        } => {}
        other => bail!("unexpected agent hello {other:?}"),
    }
    write_message(
        &mut s,
        &Message::Hello {
            version: PROTOCOL_VERSION,
            caps: 0,
        },
    )?;
    let n = runs();
    let (mut agent_t, mut local_t) = (Vec::with_capacity(n), Vec::with_capacity(n));
    for i in 0..WARMUP + n {
        let a = exec_true(&mut s, i as u32 + 1)?;
        let l = fork_exec_true()?;
        if i >= WARMUP {
            agent_t.push(a);
            local_t.push(l);
        }
    }
    println!("agent exec round trip (/bin/true, Unix socket transport):");
    let a = report("agent Exec -> Exit", agent_t);
    let l = report("local fork+exec+wait", local_t);
    println!(
        "  ratio agent/local (median): {:.1}x",
        a.as_secs_f64() / l.as_secs_f64().max(1e-9)
    );
    Ok(())
}

unsafe extern "C" {
    #[link_name = "geteuid"]
    fn libc_geteuid() -> u32;
}
