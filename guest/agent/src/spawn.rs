//! Starts the container init: `clone(2)` into new mount, pid, uts and ipc
//! namespaces (and a new network namespace when the agent is not PID 1 of
//! a VM), join the cgroup, wire up the descriptors and re-exec the agent
//! binary as `__container-init` (see `container.rs`).
//!
//! In the utility VM the container keeps the VM's network namespace: the
//! VM is already the isolation boundary (one container's network per VM,
//! as in libkrun), the container sees the VM's interfaces, and no network
//! namespace has to be built per exec (about 2 s of emulated kernel work
//! on kvm_pvm hosts).
//!
//! The child of `clone` is a copy of a multi-threaded process, so it only
//! makes async-signal-safe system calls on data prepared beforehand.

use std::ffi::CString;
use std::io;
use std::os::fd::{FromRawFd, OwnedFd, RawFd};

use crate::sys::{check, ptr_array};

/// Descriptor numbers the container init finds its pipes on.
pub const CONFIG_FD: RawFd = 3;
/// Report pipe (container init → agent).
pub const REPORT_FD: RawFd = 4;

/// What the clone child needs, all prepared before `clone`.
struct ChildArgs {
    fds: [RawFd; 5],
    procs: Vec<CString>,
    exe: CString,
    argv: Vec<*const libc::c_char>,
    envp: Vec<*const libc::c_char>,
}

/// A started container init.
#[derive(Debug)]
pub struct Spawned {
    /// Pid in the agent's namespace.
    pub pid: libc::pid_t,
    /// pidfd for signalling without pid-reuse races.
    pub pidfd: OwnedFd,
}

#[expect(clippy::multiple_unsafe_ops_per_block, reason = "write then _exit")]
fn fail(fd: RawFd, code: &[u8]) -> ! {
    // SAFETY: write/_exit are async-signal-safe; `fd` is the report pipe.
    unsafe {
        libc::write(fd, code.as_ptr().cast(), code.len());
        libc::_exit(125)
    }
}

#[expect(
    clippy::multiple_unsafe_ops_per_block,
    reason = "the clone child is one sequence of async-signal-safe syscalls"
)]
extern "C" fn child(arg: *mut libc::c_void) -> libc::c_int {
    // SAFETY: `arg` points at the ChildArgs that `spawn` keeps alive (this
    // child has its own copy of the parent's memory).
    let a = unsafe { &*(arg as *const ChildArgs) };
    // SAFETY: only async-signal-safe calls on prepared data follow.
    unsafe {
        libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
        // Move every source fd above the targets first so dup2 cannot
        // clobber one with another.
        let mut high = [0; 5];
        for (h, &fd) in high.iter_mut().zip(a.fds.iter()) {
            *h = libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 16);
            if *h < 0 {
                fail(a.fds[4], b"err 125 container spawn: dup failed\n");
            }
        }
        for (target, &h) in high.iter().enumerate() {
            if libc::dup2(h, target as RawFd) < 0 {
                fail(high[4], b"err 125 container spawn: dup2 failed\n");
            }
        }
        for p in &a.procs {
            let fd = libc::open(p.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
            if fd < 0 || libc::write(fd, b"0".as_ptr().cast(), 1) != 1 {
                fail(REPORT_FD, b"err 125 container spawn: cannot join cgroup\n");
            }
            libc::close(fd);
        }
        let mut empty: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut empty);
        libc::sigprocmask(libc::SIG_SETMASK, &empty, std::ptr::null_mut());
        libc::execve(a.exe.as_ptr(), a.argv.as_ptr(), a.envp.as_ptr());
        fail(
            REPORT_FD,
            b"err 125 container spawn: cannot re-exec the agent\n",
        )
    }
}

/// Clones the container init with `stdio` as fds 0-2, `config` as fd 3 and
/// `report` as fd 4, joined to the cgroups whose `cgroup.procs` paths are
/// given, in a new network namespace when `new_netns`. The caller holds
/// the reaper lock across this call.
pub fn spawn(
    stdio: [RawFd; 3],
    config: RawFd,
    report: RawFd,
    procs: &[std::path::PathBuf],
    new_netns: bool,
    join: bool,
) -> anyhow::Result<Spawned> {
    let procs = procs
        .iter()
        .map(|p| crate::sys::cstr(p.as_os_str().as_encoded_bytes()))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let exe = CString::new("/proc/self/exe")?;
    let argv_c = [
        CString::new("krypton-agent")?,
        CString::new(crate::CONTAINER_INIT_ARG)?,
    ];
    let env_c = [CString::new(format!("KRYPTON_LOG={}", log::max_level()))?];
    let args = Box::new(ChildArgs {
        fds: [stdio[0], stdio[1], stdio[2], config, report],
        procs,
        exe,
        argv: ptr_array(&argv_c),
        envp: ptr_array(&env_c),
    });
    // One stack for every clone, allocated once and never freed: spawns are
    // serialised by the reaper lock, the child only uses it until its exec,
    // and unmapping it after each clone (and reusing the range) is what
    // exposed lost TLB invalidations on kvm_pvm hosts (see
    // guest/kernel/README.md).
    static STACK: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    const STACK_SIZE: usize = 256 << 10;
    let base = *STACK
        .get_or_init(|| Box::leak(vec![0u8; STACK_SIZE].into_boxed_slice()).as_mut_ptr() as usize);
    // The stack grows down; start at the 16-byte aligned top.
    let top = (base + STACK_SIZE) & !15;
    let mut flags = libc::CLONE_NEWNS
        | libc::CLONE_NEWPID
        | libc::CLONE_NEWUTS
        | libc::CLONE_NEWIPC
        | libc::CLONE_PIDFD
        | libc::SIGCHLD;
    if new_netns {
        flags |= libc::CLONE_NEWNET;
    }
    if join {
        // It enters a running container's namespaces itself (oci.rs).
        flags = libc::CLONE_PIDFD | libc::SIGCHLD;
    }
    let mut pidfd: libc::c_int = -1;
    log::debug!("cloning the container init");
    // SAFETY: `child` only uses `args` (alive until after clone returns in
    // the parent; the child has its own copy) and the stack is ours. With
    // CLONE_PIDFD the kernel stores the pidfd through the parent_tid arg.
    let pid = unsafe {
        libc::clone(
            child,
            top as *mut libc::c_void,
            flags,
            (&*args as *const ChildArgs).cast_mut().cast(),
            &mut pidfd as *mut libc::c_int,
        )
    };
    let pid = check(pid).map_err(|e: io::Error| anyhow::anyhow!("clone container: {e}"))?;
    log::debug!("container init {pid} cloned");
    drop(args);
    // SAFETY: CLONE_PIDFD returned a fresh descriptor that we now own.
    let pidfd = unsafe { OwnedFd::from_raw_fd(pidfd) };
    Ok(Spawned { pid, pidfd })
}
