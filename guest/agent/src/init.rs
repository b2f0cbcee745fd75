//! PID-1 duties in the utility VM: base mounts, hostname, loopback, and
//! power-off.

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
    // SAFETY: setting our own environment before any thread is started.
    unsafe { std::env::set_var("PATH", "/usr/sbin:/usr/bin:/sbin:/bin") };
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
