//! The container init (`krypton-agent __container-init`): PID 1 of the
//! container's pid namespace. It builds the container's mounts, hostname
//! and loopback, forks the workload, forwards signals to it, reaps every
//! zombie and exits when the workload does.
//!
//! It talks to the agent over the report pipe (fd 4), one line each:
//! `ok` (the workload exec'd), `err <code> <message>` (it did not), and
//! `status <raw wait status>` (how the workload ended).

use std::ffi::CString;
use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use anyhow::{Context, Result, bail};
use krypton_protocol::{ExecRequest, Message};

use crate::spawn::{CONFIG_FD, REPORT_FD};
use crate::sys::{check, cstr, mount, ptr_array};

const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

fn report(out: &mut File, line: &str) {
    let _ = out.write_all(format!("{line}\n").as_bytes());
}

/// Entry point; never returns.
pub fn main() -> ! {
    // SAFETY: fd 4 is the report pipe handed over by spawn; owned from here.
    let mut out = unsafe { File::from_raw_fd(REPORT_FD) };
    let _ = crate::sys::set_cloexec(REPORT_FD);
    let code = match run(&mut out) {
        Ok(code) => code,
        Err(e) => {
            report(
                &mut out,
                &format!("err 125 {}", one_line(&format!("{e:#}"))),
            );
            125
        }
    };
    std::process::exit(code)
}

fn one_line(s: &str) -> String {
    s.replace('\n', " ")
}

fn read_config() -> Result<ExecRequest> {
    // SAFETY: fd 3 is the config channel handed over by spawn; owned from here.
    let mut f = unsafe { File::from_raw_fd(CONFIG_FD) };
    let mut buf = Vec::new();
    if is_socket(&f) {
        // A container init started ahead of time (zygote.rs): its stdio
        // arrives with the config.
        let mut chunk = vec![0u8; 64 << 10];
        let (n, fds) =
            crate::sys::recv_with_fds(CONFIG_FD, &mut chunk, 3).context("read config")?;
        let stdio =
            crate::zygote::check_fds(&fds.iter().map(|f| f.as_raw_fd()).collect::<Vec<_>>())?;
        for (target, fd) in stdio.into_iter().enumerate() {
            // SAFETY: dup2 onto our own stdio numbers.
            check(unsafe { libc::dup2(fd, target as libc::c_int) }).context("dup2 stdio")?;
        }
        drop(fds);
        buf.extend_from_slice(&chunk[..n]);
    }
    f.read_to_end(&mut buf).context("read config")?;
    match krypton_protocol::read_message(&mut buf.as_slice()).context("decode config")? {
        Message::Exec(e) => Ok(*e),
        other => bail!("unexpected config {other:?}"),
    }
}

fn config_is_socket() -> bool {
    // SAFETY: stat is plain data; all-zero is valid before fstat fills it.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: fstat writes into `st`.
    let r = unsafe { libc::fstat(CONFIG_FD, &mut st) };
    r == 0 && st.st_mode & libc::S_IFMT == libc::S_IFSOCK
}

fn is_socket(f: &File) -> bool {
    use std::os::unix::fs::FileTypeExt;
    f.metadata().is_ok_and(|m| m.file_type().is_socket())
}

/// Everything the forked workload needs, prepared before the fork.
struct Workload {
    candidates: Vec<CString>,
    argv: Vec<CString>,
    env: Vec<CString>,
    cwd: CString,
    uid: u32,
    gid: u32,
    groups: Vec<libc::gid_t>,
    tty: bool,
    privileges: crate::oci::Privileges,
}

fn prepare(req: &ExecRequest) -> Result<Workload> {
    let id = if req.user.is_empty() {
        crate::users::Identity {
            uid: req.uid,
            gid: req.gid,
            groups: Vec::new(),
            home: String::new(),
        }
    } else {
        crate::users::resolve(std::path::Path::new("/"), &req.user)?
    };
    let argv = req.argv.iter().map(cstr).collect::<Result<Vec<_>>>()?;
    let mut env = req.env.iter().map(cstr).collect::<Result<Vec<_>>>()?;
    if !id.home.is_empty() && !req.env.iter().any(|e| e.starts_with("HOME=")) {
        env.push(cstr(format!("HOME={}", id.home))?);
    }
    let prog = &req.argv[0];
    let candidates = if prog.contains('/') {
        vec![cstr(prog)?]
    } else {
        let path = req
            .env
            .iter()
            .find_map(|e| e.strip_prefix("PATH="))
            .unwrap_or(DEFAULT_PATH);
        path.split(':')
            .map(|d| if d.is_empty() { "." } else { d })
            .map(|d| cstr(format!("{d}/{prog}")))
            .collect::<Result<Vec<_>>>()?
    };
    let cwd = cstr(if req.cwd.is_empty() { "/" } else { &req.cwd })?;
    let mut groups = id.groups;
    if let Some(o) = &req.oci {
        groups.extend(
            o.additional_gids
                .iter()
                .filter(|g| !groups.contains(g))
                .collect::<Vec<_>>(),
        );
    }
    Ok(Workload {
        candidates,
        argv,
        env,
        cwd,
        uid: id.uid,
        gid: id.gid,
        groups,
        tty: req.tty,
        privileges: crate::oci::Privileges::new(req.oci.as_deref()),
    })
}

/// The rootfs `krypton run` gives every container; a container init
/// started ahead of time stages it while it waits.
const DEFAULT_ROOTFS: &str = "/dev/vda";

/// Makes this mount namespace private (nothing may propagate back to the
/// agent's) and, when the default rootfs is a block device here, stages it.
/// Returns the staged rootfs.
fn prestage() -> Result<Option<&'static str>> {
    mount("", "/", "", libc::MS_REC | libc::MS_PRIVATE, "")?;
    if let Err(e) = crate::sys::loopback_up() {
        log::warn!("{e:#}");
    }
    let is_block = std::fs::metadata(DEFAULT_ROOTFS).is_ok_and(|m| {
        use std::os::unix::fs::FileTypeExt;
        m.file_type().is_block_device()
    });
    if !is_block {
        return Ok(None);
    }
    match crate::rootfs::stage(DEFAULT_ROOTFS) {
        Ok(()) => {
            crate::rootfs::warm_page_cache();
            Ok(Some(DEFAULT_ROOTFS))
        }
        // Not fatal: the exec will say what is wrong with its rootfs.
        Err(_) => {
            let _ = crate::rootfs::unstage();
            Ok(None)
        }
    }
}

fn setup(req: &ExecRequest, staged_ahead: Option<Option<&str>>) -> Result<()> {
    let staged = match staged_ahead {
        Some(s) => s,
        None => {
            // Nothing we mount may propagate back to the agent's namespace.
            mount("", "/", "", libc::MS_REC | libc::MS_PRIVATE, "")?;
            None
        }
    };
    let own_root = req.image.is_some() || req.oci.is_some();
    if staged.is_some() && (own_root || staged != Some(req.rootfs.as_str())) {
        crate::rootfs::unstage()?;
    }
    let host = if req.hostname.is_empty() {
        "krypton"
    } else {
        &req.hostname
    };
    crate::sys::sethostname(host)?;
    // A container init started ahead of time brought lo up while it waited.
    if staged_ahead.is_none()
        && let Err(e) = crate::sys::loopback_up()
    {
        log::warn!("{e:#}");
    }
    if let Some(o) = &req.oci {
        crate::oci::stage(o)?;
        crate::rootfs::pivot_staged()?;
    } else if let Some(img) = &req.image {
        crate::layers::stage_image(img)?;
        crate::rootfs::pivot_staged()?;
    } else if req.rootfs.is_empty() {
        // Keep the agent's root, but show only this pid namespace.
        mount(
            "proc",
            "/proc",
            "proc",
            libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
            "",
        )?;
    } else if staged == Some(req.rootfs.as_str()) {
        crate::rootfs::pivot_staged()?;
    } else {
        crate::rootfs::enter(&req.rootfs)?;
    }
    crate::rootfs::mount_shares(&req.mounts)?;
    Ok(())
}

/// With the agent at debug level (`-v`), the container init's steps go to
/// the VM console with the uptime (never to the container's stderr).
fn trace(what: &str) {
    static CONSOLE: std::sync::OnceLock<Option<File>> = std::sync::OnceLock::new();
    let console = CONSOLE.get_or_init(|| {
        let debug = std::env::var("KRYPTON_LOG")
            .is_ok_and(|l| l.eq_ignore_ascii_case("debug") || l.eq_ignore_ascii_case("trace"));
        debug
            .then(|| {
                std::fs::OpenOptions::new()
                    .write(true)
                    .open("/dev/console")
                    .ok()
            })
            .flatten()
    });
    if let Some(mut f) = console.as_ref() {
        let _ = writeln!(f, "krypton-init: {what} [{}]", crate::init::uptime());
    }
}

fn run(out: &mut File) -> Result<i32> {
    // SAFETY: PR_SET_NAME reads a NUL-terminated name of at most 16 bytes.
    unsafe { libc::prctl(libc::PR_SET_NAME, c"krypton-init".as_ptr()) };
    trace("started");
    // Started ahead of time (config on a socket): prepare what does not
    // depend on the exec while waiting for it.
    let staged = if config_is_socket() {
        let staged = prestage()?;
        // Tell the agent we are about to block: it announces that it
        // listens (and a template snapshot may be taken) only after this.
        report(out, "ready");
        Some(staged)
    } else {
        None
    };
    trace("waiting for the exec");
    let req = read_config()?;
    trace("exec received");
    match req.oci.as_ref().map(|o| o.join) {
        // `krypton exec`: into a running container, whose root it is.
        Some(pid) if pid != 0 => crate::oci::join(pid)?,
        _ => setup(&req, staged)?,
    }
    trace("root ready");
    let w = prepare(&req)?;
    // Block everything: the workload unblocks, we take signals with
    // sigwaitinfo and forward them.
    // SAFETY: sigset manipulation on a local.
    // SAFETY: sigset_t is plain data; all-zero is valid before sigfillset.
    let mut all: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: `all` is a valid sigset.
    unsafe { libc::sigfillset(&mut all) };
    // SAFETY: as above; the old mask is not needed.
    unsafe { libc::sigprocmask(libc::SIG_SETMASK, &all, std::ptr::null_mut()) };
    let (mut status_r, status_w) = crate::sys::pipe()?;
    // SAFETY: we are single-threaded (fresh exec), so fork is safe.
    let pid = check(unsafe { libc::fork() }).context("fork workload")?;
    if pid == 0 {
        drop(status_r);
        exec_workload(&w, status_w);
    }
    drop(status_w);
    // Our copies of the stdio must not keep pipes or the pty open.
    for fd in 0..3 {
        // SAFETY: closing our stdio; nothing here uses it afterwards.
        unsafe { libc::close(fd) };
    }
    trace("workload forked");
    let mut failure = String::new();
    let _ = status_r.read_to_string(&mut failure);
    trace("workload exec'd");
    if let Some((code, msg)) = failure.split_once(' ') {
        report(out, &format!("err {code} {}", one_line(msg)));
    } else {
        report(out, "ok");
    }
    let raw = supervise(pid, &all);
    report(out, &format!("status {raw}"));
    let status = crate::sys::wait_status(raw);
    Ok(status.code())
}

/// Forwards signals to `pid` and reaps until it exits; its raw status.
fn supervise(pid: libc::pid_t, all: &libc::sigset_t) -> libc::c_int {
    loop {
        // SAFETY: all is a valid sigset; info may be null.
        let sig = unsafe { libc::sigwaitinfo(all, std::ptr::null_mut()) };
        if sig == libc::SIGCHLD {
            loop {
                let mut st = 0;
                // SAFETY: st is a valid out pointer.
                let r = unsafe { libc::waitpid(-1, &mut st, libc::WNOHANG) };
                if r == pid {
                    return st;
                }
                if r <= 0 {
                    break;
                }
            }
        } else if sig > 0 {
            // SAFETY: kill has no memory effects.
            unsafe { libc::kill(pid, sig) };
        }
    }
}

/// In the forked workload: session, tty, signals, user, cwd, exec.
#[expect(
    clippy::multiple_unsafe_ops_per_block,
    reason = "one block of raw process-state syscalls in the forked child"
)]
fn exec_workload(w: &Workload, mut status: File) -> ! {
    let fail = |status: &mut File, code: i32, msg: String| -> ! {
        let _ = status.write_all(format!("{code} {msg}").as_bytes());
        std::process::exit(code)
    };
    // SAFETY: plain process-state syscalls in the freshly forked child.
    unsafe {
        libc::setsid();
        if w.tty && libc::ioctl(0, libc::TIOCSCTTY, 0) < 0 {
            fail(
                &mut status,
                125,
                format!("TIOCSCTTY: {}", std::io::Error::last_os_error()),
            );
        }
        for sig in 1..32 {
            if sig != libc::SIGKILL && sig != libc::SIGSTOP {
                libc::signal(sig, libc::SIG_DFL);
            }
        }
        let mut empty: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut empty);
        libc::sigprocmask(libc::SIG_SETMASK, &empty, std::ptr::null_mut());
        if let Err(msg) = w.privileges.before_setuid() {
            fail(&mut status, 125, msg);
        }
        if libc::setgroups(w.groups.len(), w.groups.as_ptr()) < 0
            || libc::setgid(w.gid) < 0
            || libc::setuid(w.uid) < 0
        {
            fail(
                &mut status,
                125,
                format!("set user: {}", std::io::Error::last_os_error()),
            );
        }
        if let Err(msg) = w.privileges.after_setuid() {
            fail(&mut status, 125, msg);
        }
        if libc::chdir(w.cwd.as_ptr()) < 0 {
            let e = std::io::Error::last_os_error();
            fail(&mut status, 125, format!("chdir {:?}: {e}", w.cwd));
        }
    }
    let argv = ptr_array(&w.argv);
    let envp = ptr_array(&w.env);
    let mut last = libc::ENOENT;
    let mut denied = false;
    for c in &w.candidates {
        // SAFETY: valid NUL-terminated arrays of valid C strings.
        unsafe { libc::execve(c.as_ptr(), argv.as_ptr(), envp.as_ptr()) };
        last = std::io::Error::last_os_error()
            .raw_os_error()
            .unwrap_or(libc::ENOENT);
        match last {
            libc::ENOENT | libc::ENOTDIR => {}
            libc::EACCES => denied = true,
            _ => break,
        }
    }
    let prog = Path::new(std::ffi::OsStr::from_bytes(w.argv[0].as_bytes()))
        .display()
        .to_string();
    let err = std::io::Error::from_raw_os_error(if denied { libc::EACCES } else { last });
    let code = if !denied && matches!(last, libc::ENOENT | libc::ENOTDIR) {
        127
    } else {
        126
    };
    fail(&mut status, code, format!("{prog}: {err}"))
}
