//! Agent side of one exec: start the container, pump its output into
//! frames, feed its stdin, and send `Exit` only after both output streams
//! reached EOF.

use std::fs::File;
use std::io::{BufRead, BufReader, ErrorKind, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use anyhow::{Context, Result};
use krypton_protocol::{ExecRequest, MAX_CHUNK, Message, Stream};

use crate::Agent;
use crate::sys::{check, pipe};

/// Frames to the host; shared by all pumps of one connection.
pub type Sink = Arc<Mutex<std::os::unix::net::UnixStream>>;

/// Sends one message; errors are logged (the host went away).
pub fn send(sink: &Sink, msg: &Message) {
    let mut s = sink.lock().unwrap_or_else(|e| e.into_inner());
    if let Err(e) = krypton_protocol::write_message(&mut *s, msg) {
        log::debug!("send {msg:?}: {e}");
    }
}

/// Input for the stdin feeder.
#[derive(Debug)]
pub enum Input {
    /// Bytes to write.
    Data(Vec<u8>),
    /// Close stdin.
    Eof,
}

/// Handle the connection keeps per running exec.
#[derive(Debug)]
pub struct ExecHandle {
    /// Stdin feeder.
    pub stdin: SyncSender<Input>,
    /// pidfd of the container init.
    pub pidfd: Arc<OwnedFd>,
    /// PTY master for resize (tty mode).
    pub pty: Option<Arc<OwnedFd>>,
}

fn openpty(rows: u16, cols: u16) -> Result<(OwnedFd, OwnedFd)> {
    let (mut m, mut s) = (-1, -1);
    let ws = libc::winsize {
        ws_row: rows.max(1),
        ws_col: cols.max(1),
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: out pointers are valid; name and termios may be null.
    check(unsafe { libc::openpty(&mut m, &mut s, std::ptr::null_mut(), std::ptr::null(), &ws) })
        .context("openpty")?;
    // SAFETY: openpty returned a fresh master descriptor that we own.
    let m = unsafe { OwnedFd::from_raw_fd(m) };
    // SAFETY: likewise for the slave.
    let s = unsafe { OwnedFd::from_raw_fd(s) };
    crate::sys::set_cloexec(m.as_raw_fd())?;
    crate::sys::set_cloexec(s.as_raw_fd())?;
    Ok((m, s))
}

/// Sets the PTY size.
pub fn resize(pty: &OwnedFd, rows: u16, cols: u16) {
    let ws = libc::winsize {
        ws_row: rows,
        ws_col: cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: ws is a valid winsize for TIOCSWINSZ.
    unsafe { libc::ioctl(pty.as_raw_fd(), libc::TIOCSWINSZ, &ws) };
}

/// Clones a container init for this exec: stdio, a config pipe it reads
/// to EOF, the report pipe; joined to the cgroups of `procs`.
fn spawn_now(
    stdio: [std::os::fd::RawFd; 3],
    config: &[u8],
    procs: &[std::path::PathBuf],
    new_netns: bool,
    join: bool,
) -> Result<(crate::spawn::Spawned, Receiver<libc::c_int>, File)> {
    let (cfg_r, mut cfg_w) = pipe()?;
    let (report_r, report_w) = pipe()?;
    let guard = crate::reaper::get().lock();
    let spawned = crate::spawn::spawn(
        stdio,
        cfg_r.as_raw_fd(),
        report_w.as_raw_fd(),
        procs,
        new_netns,
        join,
    )?;
    let exit_rx = guard.register(spawned.pid);
    drop((cfg_r, report_w));
    // The config is small; the child reads it right away.
    if let Err(e) = cfg_w.write_all(config) {
        log::warn!("write container config: {e}");
    }
    Ok((spawned, exit_rx, report_r))
}

/// Starts `req`; the supervisor thread reports to `sink` and calls
/// `done(id)` when the exec is over.
pub fn start(
    agent: &Arc<Agent>,
    req: ExecRequest,
    sink: Sink,
    done: impl FnOnce(u32) + Send + 'static,
) -> Result<ExecHandle> {
    // Joining a running container (`krypton exec`) needs a fresh init in
    // the agent's namespaces, not the waiting one.
    let join = req.oci.as_ref().is_some_and(|o| o.join != 0);
    let mut ready = if agent.pid1 && !join {
        crate::zygote::take()
    } else {
        None
    };
    // A waiting container init already sits in a fresh cgroup.
    let (cgroup, joined) = match ready.as_mut().and_then(|z| z.cgroup.take()) {
        Some(cg) => {
            if let Err(e) = cg.apply(&req.limits) {
                cg.remove();
                return Err(e);
            }
            (Some(cg), true)
        }
        None => (agent.cgroups.create(&req.limits)?, false),
    };
    let procs = cgroup.as_ref().map(|c| c.procs_files()).unwrap_or_default();
    // Child ends and our ends of stdio.
    let (child_io, stdin_w, outputs, pty): ([OwnedFd; 3], File, Vec<(Stream, File)>, _) = if req.tty
    {
        let (master, slave) = openpty(req.rows, req.cols)?;
        let m = Arc::new(master);
        let input = File::from(m.try_clone().context("dup pty")?);
        let output = File::from(m.try_clone().context("dup pty")?);
        let io = [slave.try_clone()?, slave.try_clone()?, slave];
        (io, input, vec![(Stream::Stdout, output)], Some(m))
    } else {
        let (in_r, in_w) = pipe()?;
        let (out_r, out_w) = pipe()?;
        let (err_r, err_w) = pipe()?;
        let io = [
            OwnedFd::from(in_r),
            OwnedFd::from(out_w),
            OwnedFd::from(err_w),
        ];
        (
            io,
            in_w,
            vec![(Stream::Stdout, out_r), (Stream::Stderr, err_r)],
            None,
        )
    };
    let config = krypton_protocol::encode(&Message::Exec(Box::new(req.clone())))?;
    let stdio = [
        child_io[0].as_raw_fd(),
        child_io[1].as_raw_fd(),
        child_io[2].as_raw_fd(),
    ];
    let started = match ready {
        Some(mut z) => match z.hand_over(if joined { &[] } else { &procs }, stdio, &config) {
            Ok(()) => Ok((z.spawned, z.exit_rx, z.report)),
            Err(e) => {
                // It died waiting (or cannot join the cgroup): start one now.
                log::warn!("the waiting container init failed ({e:#}); starting another");
                let _ = crate::sys::pidfd_signal(z.spawned.pidfd.as_raw_fd(), libc::SIGKILL);
                spawn_now(stdio, &config, &procs, !agent.pid1, false)
            }
        },
        None => spawn_now(stdio, &config, &procs, !agent.pid1 && !join, join),
    };
    let (spawned, exit_rx, report_r) = match started {
        Ok(s) => s,
        Err(e) => {
            if let Some(c) = cgroup {
                c.remove();
            }
            return Err(e);
        }
    };
    drop(child_io);
    let pidfd = Arc::new(spawned.pidfd);
    let (stdin_tx, stdin_rx) = sync_channel(64);
    let id = req.id;
    let tty = req.tty;
    std::thread::Builder::new()
        .name(format!("stdin-{id}"))
        .spawn(move || feed_stdin(stdin_w, stdin_rx, tty))?;
    let sup_pidfd = pidfd.clone();
    std::thread::Builder::new()
        .name(format!("exec-{id}"))
        .spawn(move || {
            supervise(id, spawned.pid, report_r, outputs, exit_rx, &sink, tty);
            drop(sup_pidfd);
            if let Some(c) = cgroup {
                c.remove();
            }
            crate::zygote::refill();
            done(id);
        })?;
    Ok(ExecHandle {
        stdin: stdin_tx,
        pidfd,
        pty,
    })
}

fn feed_stdin(mut w: File, rx: Receiver<Input>, tty: bool) {
    let mut broken = false;
    for input in rx {
        match input {
            Input::Data(d) if !broken => {
                if let Err(e) = w.write_all(&d) {
                    log::debug!("stdin: {e}");
                    broken = true;
                }
            }
            Input::Data(_) => {}
            Input::Eof => {
                if tty && !broken {
                    // A terminal has no half-close: send the EOF character.
                    let _ = w.write_all(&[4]);
                }
                break;
            }
        }
    }
}

fn pump(id: u32, stream: Stream, mut r: File, sink: Sink) -> JoinHandle<()> {
    std::thread::spawn(move || {
        let mut buf = vec![0u8; MAX_CHUNK];
        loop {
            match r.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => send(
                    &sink,
                    &Message::Output {
                        id,
                        stream,
                        data: buf[..n].to_vec(),
                    },
                ),
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                // EIO: the pty's last slave was closed.
                Err(_) => break,
            }
        }
        send(&sink, &Message::OutputEof { id, stream });
    })
}

#[allow(clippy::too_many_arguments)]
fn supervise(
    id: u32,
    pid: libc::pid_t,
    report: File,
    outputs: Vec<(Stream, File)>,
    exit_rx: Receiver<libc::c_int>,
    sink: &Sink,
    tty: bool,
) {
    let mut lines = BufReader::new(report).lines();
    let first = lines.next().and_then(|l| l.ok()).unwrap_or_default();
    let failure = if first == "ok" {
        None
    } else if let Some(rest) = first.strip_prefix("err ") {
        let (code, msg) = rest.split_once(' ').unwrap_or((rest, ""));
        Some((code.parse().unwrap_or(125), msg.to_owned()))
    } else {
        Some((
            125,
            "container init failed before starting the command".to_owned(),
        ))
    };
    if let Some((code, message)) = failure {
        drop(outputs);
        let raw = exit_rx.recv().unwrap_or(0);
        log::debug!("exec {id} (pid {pid}) failed: {message} (init status {raw:#x})");
        send(sink, &Message::ExecError { id, code, message });
        return;
    }
    send(
        sink,
        &Message::Started {
            id,
            pid: pid as u32,
        },
    );
    let pumps: Vec<_> = outputs
        .into_iter()
        .map(|(s, r)| pump(id, s, r, sink.clone()))
        .collect();
    if tty {
        send(
            sink,
            &Message::OutputEof {
                id,
                stream: Stream::Stderr,
            },
        );
    }
    // The container init reports the workload's status before it exits
    // and its namespaces are torn down (unmounts, network namespace
    // cleanup): that teardown is not on the way to the exit status.
    let workload = lines.map_while(|l| l.ok()).find_map(|line| {
        line.strip_prefix("status ")
            .and_then(|s| s.parse().ok())
            .map(crate::sys::wait_status)
    });
    log::debug!("exec {id}: workload status {workload:?}");
    let mut init_raw = None;
    // The workload's own status, or the init's if it was killed first
    // (SIGKILL from the host, a group OOM kill).
    let status = workload.unwrap_or_else(|| {
        let raw = exit_rx.recv().unwrap_or(0);
        init_raw = Some(raw);
        crate::sys::wait_status(raw)
    });
    // Output ends when the workload and whatever shared its pipes are gone;
    // the container init kills the rest of the container as it exits.
    for p in pumps {
        let _ = p.join();
    }
    send(sink, &Message::Exit { id, status });
    if init_raw.is_none() {
        let _ = exit_rx.recv();
    }
}
