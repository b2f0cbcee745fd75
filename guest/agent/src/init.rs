//! PID-1 duties in the utility VM: base mounts, hostname, loopback, the
//! network interface, and power-off.

use std::fs;
use std::path::Path;

use anyhow::Result;

use crate::sys::mount;

/// Mounts the base filesystems; an already-mounted target is fine.
pub fn setup() -> Result<()> {
    let nosuid = libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC;
    let mounts: [(&str, &str, &str, libc::c_ulong, &str); 8] = [
        ("devtmpfs", "/dev", "devtmpfs", libc::MS_NOSUID, "mode=0755"),
        ("proc", "/proc", "proc", nosuid, ""),
        ("sysfs", "/sys", "sysfs", nosuid, ""),
        (
            "devpts",
            "/dev/pts",
            "devpts",
            libc::MS_NOSUID | libc::MS_NOEXEC,
            "ptmxmode=0666,mode=0620",
        ),
        ("shm", "/dev/shm", "tmpfs", nosuid, "mode=1777"),
        (
            "tmpfs",
            "/tmp",
            "tmpfs",
            libc::MS_NOSUID | libc::MS_NODEV,
            "mode=1777",
        ),
        (
            "tmpfs",
            "/run",
            "tmpfs",
            libc::MS_NOSUID | libc::MS_NODEV,
            "mode=0755",
        ),
        ("cgroup2", "/sys/fs/cgroup", "cgroup2", nosuid, ""),
    ];
    for (src, target, fstype, flags, data) in mounts {
        let _ = fs::create_dir_all(target);
        if let Err(e) = mount(src, target, fstype, flags, data) {
            let busy = e
                .root_cause()
                .downcast_ref::<std::io::Error>()
                .is_some_and(|io| io.raw_os_error() == Some(libc::EBUSY));
            if !busy {
                log::warn!("{e:#}");
            }
        }
    }
    if !Path::new("/dev/ptmx").exists() {
        let _ = std::os::unix::fs::symlink("pts/ptmx", "/dev/ptmx");
    }
    crate::sys::sethostname("krypton")?;
    if let Err(e) = crate::sys::loopback_up() {
        log::warn!("{e:#}");
    }
    if let Err(e) = crate::net::setup_from_kernel() {
        log::warn!("network: {e:#}");
    }
    // SAFETY: setting our own environment before any thread is started.
    unsafe { std::env::set_var("PATH", "/usr/sbin:/usr/bin:/sbin:/bin") };
    Ok(())
}

/// The kernel's uptime as "12.34 s" (guest clock), for the start-up log.
pub fn uptime() -> String {
    // Read with the raw syscall: /proc is not mounted yet.
    // SAFETY: an all-zero timespec is valid; clock_gettime writes into it.
    let mut ts: libc::timespec = unsafe { std::mem::zeroed() };
    // SAFETY: ts is a valid out pointer.
    if unsafe { libc::clock_gettime(libc::CLOCK_BOOTTIME, &mut ts) } != 0 {
        return "unknown".into();
    }
    format!("{}.{:02} s", ts.tv_sec, ts.tv_nsec / 10_000_000)
}

/// PID 1 ignores every signal it has no handler for, so without this a
/// SIGTERM (from `timeout`, a container engine, or `kill 1` in a PID
/// namespace on a host) would be dropped. The handler flushes and powers
/// off like `Shutdown`; handlers reset on exec, so children are unaffected.
pub fn terminate_on_sigterm() -> Result<()> {
    extern "C" fn on_term(_: libc::c_int) {
        // Only async-signal-safe calls: sync, reboot, _exit.
        // SAFETY: sync has no memory effects.
        unsafe { libc::sync() };
        // SAFETY: reboot has no memory effects; as PID 1 of a VM it powers
        // off, as PID 1 of a PID namespace it ends the namespace.
        unsafe { libc::reboot(libc::RB_POWER_OFF) };
        // SAFETY: _exit never returns and touches no Rust state.
        unsafe { libc::_exit(0) };
    }
    // SAFETY: an all-zero sigaction is a valid starting value.
    let mut sa: libc::sigaction = unsafe { std::mem::zeroed() };
    sa.sa_sigaction = on_term as extern "C" fn(libc::c_int) as libc::sighandler_t;
    // SAFETY: sa is initialised; SIGTERM is a catchable signal.
    crate::sys::check(unsafe { libc::sigaction(libc::SIGTERM, &sa, std::ptr::null_mut()) })?;
    Ok(())
}

/// Flushes filesystems and powers the machine off. Only for PID 1.
pub fn power_off() -> ! {
    // SAFETY: sync has no memory effects.
    unsafe { libc::sync() };
    // SAFETY: reboot has no memory effects; we are PID 1 in a VM.
    unsafe { libc::reboot(libc::RB_POWER_OFF) };
    // reboot only returns on failure; PID 1 must not exit.
    loop {
        std::thread::park();
    }
}
