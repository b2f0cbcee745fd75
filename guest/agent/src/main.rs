//! Guest agent: PID 1 of the utility VM (or a plain process on a Linux
//! host for tests). Serves the krypton protocol and runs each exec in its
//! own container.
//!
//! ```text
//! krypton-agent [--listen vsock:PORT|unix:PATH] [--cgroup-root DIR] [-v|-vv]
//! ```

mod cgroup;
mod container;
mod exec;
mod init;
mod layers;
mod loopdev;
mod net;
mod oci;
mod reaper;
mod restore;
mod rootfs;
mod session;
mod spawn;
mod sys;
mod transport;
mod users;
mod zygote;

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use krypton_protocol::{AGENT_VSOCK_PORT, caps};

/// argv[1] of the re-exec'd container init.
pub const CONTAINER_INIT_ARG: &str = "__container-init";

/// State shared by all connections.
#[derive(Debug)]
pub struct Agent {
    cgroups: cgroup::Cgroups,
    pid1: bool,
}

impl Agent {
    fn caps(&self) -> u64 {
        let mut c = caps::NAMESPACES | caps::TTY | caps::ROOTFS | caps::LAYERS | caps::USERS;
        if self.cgroups.usable() {
            c |= caps::CGROUPS;
        }
        if self.pid1 {
            // In the utility VM: virtio-fs shares can be mounted.
            c |= caps::SHUTDOWN | caps::RESTORE | caps::MOUNTS | caps::OCI;
        }
        c
    }
}

/// `Shutdown`: power off as PID 1; on a host just exit the agent.
pub fn shutdown(agent: &Agent) {
    if agent.pid1 {
        log::info!("shutdown requested: powering off");
        init::power_off();
    }
    log::info!("shutdown requested: not PID 1, exiting without reboot");
    std::process::exit(0);
}

struct Args {
    listen: transport::Address,
    cgroup_root: PathBuf,
    verbosity: u8,
}

fn usage() -> &'static str {
    "usage: krypton-agent [--listen vsock:PORT|unix:PATH] [--cgroup-root DIR] [-v|-vv]"
}

fn parse_args(mut it: impl Iterator<Item = String>) -> Result<Args> {
    let mut a = Args {
        listen: transport::Address::Vsock(AGENT_VSOCK_PORT),
        cgroup_root: PathBuf::from("/sys/fs/cgroup"),
        verbosity: 0,
    };
    while let Some(arg) = it.next() {
        let mut value = |name: &str| it.next().with_context(|| format!("{name} needs a value"));
        match arg.as_str() {
            "--listen" => a.listen = value("--listen")?.parse()?,
            "--cgroup-root" => a.cgroup_root = value("--cgroup-root")?.into(),
            "-v" => a.verbosity = 1,
            "-vv" => a.verbosity = 2,
            "-h" | "--help" => {
                eprintln!("{}", usage());
                std::process::exit(0);
            }
            // The kernel passes unknown cmdline words to init; ignore those.
            other if other.starts_with('-') => bail!("unknown flag {other}\n{}", usage()),
            _ => {}
        }
    }
    Ok(a)
}

struct StderrLog;

impl log::Log for StderrLog {
    fn enabled(&self, m: &log::Metadata<'_>) -> bool {
        m.level() <= log::max_level()
    }
    fn log(&self, r: &log::Record<'_>) {
        if self.enabled(r.metadata()) {
            if log::max_level() >= log::LevelFilter::Debug {
                // Guest uptime on each line: the start-up profile.
                eprintln!(
                    "krypton-agent[{}] {}: {} [{}]",
                    std::process::id(),
                    r.level(),
                    r.args(),
                    init::uptime()
                );
            } else {
                eprintln!(
                    "krypton-agent[{}] {}: {}",
                    std::process::id(),
                    r.level(),
                    r.args()
                );
            }
        }
    }
    fn flush(&self) {}
}

fn init_log(level: log::LevelFilter) {
    let _ = log::set_logger(&StderrLog);
    log::set_max_level(level);
}

fn main() {
    let mut argv = std::env::args().skip(1).peekable();
    if argv.peek().map(String::as_str) == Some(CONTAINER_INIT_ARG) {
        let level = std::env::var("KRYPTON_LOG")
            .ok()
            .and_then(|l| l.parse().ok());
        init_log(level.unwrap_or(log::LevelFilter::Warn));
        container::main();
    }
    let pid1 = std::process::id() == 1;
    if let Err(e) = run(argv, pid1) {
        eprintln!("krypton-agent: {e:#}");
        if pid1 {
            init::power_off();
        }
        std::process::exit(1);
    }
}

fn run(argv: impl Iterator<Item = String>, pid1: bool) -> Result<()> {
    let args = parse_args(argv)?;
    init_log(match args.verbosity {
        0 => log::LevelFilter::Info,
        1 => log::LevelFilter::Debug,
        _ => log::LevelFilter::Trace,
    });
    if pid1 {
        log::info!("started (uptime {})", init::uptime());
        init::terminate_on_sigterm()?;
    }
    // A Unix socket is bound before the base mounts: PID 1 mounts tmpfs
    // over /tmp and /run, which would hide a socket path under them.
    let early = match &args.listen {
        transport::Address::Unix(_) => Some(transport::bind(&args.listen)?),
        transport::Address::Vsock(_) => None,
    };
    if pid1 {
        init::setup()?;
    } else if unsafe_prctl_subreaper().is_err() {
        log::warn!("could not become a child subreaper");
    }
    let cgroups = cgroup::Cgroups::detect(&args.cgroup_root);
    if let cgroup::Cgroups::None(why) = &cgroups {
        log::warn!("cgroup limits disabled: {why}");
    }
    let agent = Arc::new(Agent { cgroups, pid1 });
    reaper::get();
    // In the VM the vsock transport may register a moment after we start.
    let mut tries = if pid1 { 50 } else { 1 };
    let listener = loop {
        if let Some(l) = early {
            break l;
        }
        match transport::bind(&args.listen) {
            Ok(l) => break l,
            Err(e) if tries > 1 => {
                log::debug!("{e:#}; retrying");
                tries -= 1;
                std::thread::sleep(std::time::Duration::from_millis(100));
            }
            Err(e) => return Err(e),
        }
    };
    if pid1 {
        // In the VM: a container init waits before we say we listen, so
        // the template snapshot holds one too.
        zygote::start(agent.cgroups.clone());
    }
    log::info!("listening on {:?}", args.listen);
    loop {
        let stream = match listener.accept() {
            Ok(s) => s,
            Err(e) => {
                log::warn!("{e:#}");
                std::thread::sleep(std::time::Duration::from_millis(100));
                continue;
            }
        };
        let agent = agent.clone();
        std::thread::Builder::new()
            .name("conn".into())
            .spawn(move || {
                if let Err(e) = session::serve(agent, stream) {
                    log::warn!("connection: {e:#}");
                }
            })?;
    }
}

fn unsafe_prctl_subreaper() -> std::io::Result<()> {
    // SAFETY: prctl with integer arguments only.
    sys::check(unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) }).map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::{parse_args, transport::Address};

    fn args(v: &[&str]) -> anyhow::Result<super::Args> {
        parse_args(v.iter().map(|s| s.to_string()))
    }

    #[test]
    fn flags() {
        let a = args(&[]).expect("defaults");
        assert_eq!(a.listen, Address::Vsock(1024));
        assert_eq!(a.cgroup_root, std::path::PathBuf::from("/sys/fs/cgroup"));
        let a = args(&["--listen", "unix:/x", "--cgroup-root", "/cg", "-vv"]).expect("flags");
        assert_eq!((a.listen, a.verbosity), (Address::Unix("/x".into()), 2));
        assert_eq!(a.cgroup_root, std::path::PathBuf::from("/cg"));
        // Kernel cmdline leftovers passed to init are ignored; unknown flags are not.
        assert!(args(&["console=ttyS0", "quiet"]).is_ok());
        assert!(args(&["--bogus"]).is_err());
        assert!(args(&["--listen"]).is_err());
    }
}
