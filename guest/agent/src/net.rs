//! The VM's network interface, configured statically from the kernel
//! command line: `krypton.net=ADDR/PREFIX,GATEWAY[,DNS...]` (IPv4), which
//! the VMM adds when it gives the VM a network (`--net passt`: passt is
//! told the same addresses). The first non-loopback interface gets the
//! address and a default route, and [`RESOLV_CONF`] lists the DNS servers;
//! containers share the VM's network namespace and get that file as their
//! `/etc/resolv.conf`.

use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::Path;

use anyhow::{Context, Result, bail};

use crate::sys::check;

/// The kernel command-line key.
pub const CMDLINE_KEY: &str = "krypton.net=";
/// Where the VM's resolver configuration is written.
pub const RESOLV_CONF: &str = "/run/krypton/resolv.conf";

/// A static IPv4 configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetConfig {
    /// The interface address.
    pub addr: Ipv4Addr,
    /// Prefix length (1-32).
    pub prefix: u8,
    /// Default gateway.
    pub gateway: Ipv4Addr,
    /// DNS servers.
    pub dns: Vec<Ipv4Addr>,
}

/// Finds and parses `krypton.net=` in a kernel command line (the last one
/// wins, so `--append` can override the VMM's).
pub fn from_cmdline(cmdline: &str) -> Result<Option<NetConfig>> {
    match cmdline
        .split_whitespace()
        .rev()
        .find_map(|w| w.strip_prefix(CMDLINE_KEY))
    {
        Some(v) => parse(v).map(Some),
        None => Ok(None),
    }
}

/// Parses `ADDR/PREFIX,GATEWAY[,DNS...]`.
pub fn parse(v: &str) -> Result<NetConfig> {
    let mut parts = v.split(',');
    let cidr = parts.next().unwrap_or_default();
    let (addr, prefix) = cidr
        .split_once('/')
        .with_context(|| format!("{CMDLINE_KEY}{v}: expected ADDR/PREFIX,GATEWAY[,DNS...]"))?;
    let ip = |s: &str| {
        s.parse::<Ipv4Addr>()
            .with_context(|| format!("{CMDLINE_KEY}{v}: '{s}' is not an IPv4 address"))
    };
    let prefix: u8 = prefix
        .parse()
        .ok()
        .filter(|p| (1..=32).contains(p))
        .with_context(|| format!("{CMDLINE_KEY}{v}: bad prefix length '{prefix}'"))?;
    let Some(gateway) = parts.next() else {
        bail!("{CMDLINE_KEY}{v}: missing the gateway");
    };
    Ok(NetConfig {
        addr: ip(addr)?,
        prefix,
        gateway: ip(gateway)?,
        dns: parts.map(ip).collect::<Result<_>>()?,
    })
}

/// The netmask of a prefix length.
pub fn netmask(prefix: u8) -> Ipv4Addr {
    let bits = u32::MAX
        .checked_shl(32 - u32::from(prefix.min(32)))
        .unwrap_or(0);
    Ipv4Addr::from(bits)
}

/// The resolv.conf text for `cfg`.
pub fn resolv_conf(cfg: &NetConfig) -> String {
    cfg.dns
        .iter()
        .map(|d| format!("nameserver {d}\n"))
        .collect()
}

/// Reads /proc/cmdline and applies `krypton.net=` if present. PID 1 only.
pub fn setup_from_kernel() -> Result<()> {
    let cmdline = std::fs::read_to_string("/proc/cmdline").context("/proc/cmdline")?;
    let Some(cfg) = from_cmdline(&cmdline)? else {
        return Ok(());
    };
    let ifname = first_interface()?;
    configure(&ifname, &cfg)?;
    std::fs::create_dir_all("/run/krypton").context("/run/krypton")?;
    std::fs::write(RESOLV_CONF, resolv_conf(&cfg)).context(RESOLV_CONF)?;
    log::info!(
        "network: {ifname} {}/{} via {}",
        cfg.addr,
        cfg.prefix,
        cfg.gateway
    );
    Ok(())
}

/// The first interface other than `lo` (sorted by name).
fn first_interface() -> Result<String> {
    let mut names: Vec<String> = std::fs::read_dir("/sys/class/net")
        .context("/sys/class/net")?
        .filter_map(|e| e.ok().map(|e| e.file_name().to_string_lossy().into_owned()))
        .filter(|n| n != "lo")
        .collect();
    names.sort();
    names
        .into_iter()
        .next()
        .context("krypton.net= given but the VM has no network interface")
}

/// An AF_INET `sockaddr` (port 0) for `ip`: family, then port and
/// address in network byte order in `sa_data`.
fn sockaddr(ip: Ipv4Addr) -> libc::sockaddr {
    // SAFETY: sockaddr is plain data; all-zero is valid.
    let mut sa: libc::sockaddr = unsafe { std::mem::zeroed() };
    sa.sa_family = libc::AF_INET as libc::sa_family_t;
    for (d, s) in sa.sa_data[2..6].iter_mut().zip(ip.octets()) {
        *d = s as libc::c_char;
    }
    sa
}

fn ifreq(name: &str) -> Result<libc::ifreq> {
    // SAFETY: ifreq is plain data; all-zero is valid.
    let mut ifr: libc::ifreq = unsafe { std::mem::zeroed() };
    if name.len() >= ifr.ifr_name.len() {
        bail!("interface name {name} is too long");
    }
    for (d, s) in ifr.ifr_name.iter_mut().zip(name.bytes()) {
        *d = s as libc::c_char;
    }
    Ok(ifr)
}

/// Sets the address and netmask of `name`, brings it up and adds the
/// default route.
fn configure(name: &str, cfg: &NetConfig) -> Result<()> {
    // SAFETY: plain socket creation.
    let fd =
        check(unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) })
            .context("socket")?;
    // SAFETY: fd was just created and is owned here.
    let sock = unsafe { OwnedFd::from_raw_fd(fd) };
    let s = sock.as_raw_fd();
    let mut ifr = ifreq(name)?;
    ifr.ifr_ifru.ifru_addr = sockaddr(cfg.addr);
    // SAFETY: ifr is a valid ifreq carrying an AF_INET address.
    check(unsafe { libc::ioctl(s, libc::SIOCSIFADDR, &ifr) })
        .with_context(|| format!("SIOCSIFADDR {name}"))?;
    let mut ifr = ifreq(name)?;
    ifr.ifr_ifru.ifru_netmask = sockaddr(netmask(cfg.prefix));
    // SAFETY: as above, with the netmask.
    check(unsafe { libc::ioctl(s, libc::SIOCSIFNETMASK, &ifr) })
        .with_context(|| format!("SIOCSIFNETMASK {name}"))?;
    let mut ifr = ifreq(name)?;
    // SAFETY: ifr is a valid ifreq; the kernel fills in the flags.
    check(unsafe { libc::ioctl(s, libc::SIOCGIFFLAGS, &mut ifr) })
        .with_context(|| format!("SIOCGIFFLAGS {name}"))?;
    // SAFETY: reading the flags member written by the kernel above.
    unsafe { ifr.ifr_ifru.ifru_flags |= (libc::IFF_UP | libc::IFF_RUNNING) as libc::c_short };
    // SAFETY: ifr is a valid ifreq carrying the new flags.
    check(unsafe { libc::ioctl(s, libc::SIOCSIFFLAGS, &ifr) })
        .with_context(|| format!("SIOCSIFFLAGS {name}"))?;
    // SAFETY: rtentry is plain data; all-zero is valid (destination and
    // genmask 0.0.0.0 of family 0 are set below).
    let mut rt: libc::rtentry = unsafe { std::mem::zeroed() };
    rt.rt_dst = sockaddr(Ipv4Addr::UNSPECIFIED);
    rt.rt_genmask = sockaddr(Ipv4Addr::UNSPECIFIED);
    rt.rt_gateway = sockaddr(cfg.gateway);
    rt.rt_flags = libc::RTF_UP | libc::RTF_GATEWAY;
    // SAFETY: rt is a valid rtentry; rt_dev is null (any interface).
    check(unsafe { libc::ioctl(s, libc::SIOCADDRT, &rt) }).context("SIOCADDRT default")?;
    Ok(())
}

/// Gives a container root the VM's resolv.conf, if the VM has one
/// (replacing a symlink or file of the image in the writable overlay).
pub fn install_resolv_conf(root: &Path) -> Result<()> {
    install_resolv_conf_from(Path::new(RESOLV_CONF), root)
}

fn install_resolv_conf_from(src: &Path, root: &Path) -> Result<()> {
    let Ok(text) = std::fs::read_to_string(src) else {
        return Ok(());
    };
    let etc = root.join("etc");
    std::fs::create_dir_all(&etc).with_context(|| format!("mkdir {}", etc.display()))?;
    let target = etc.join("resolv.conf");
    if target.symlink_metadata().is_ok() {
        std::fs::remove_file(&target).with_context(|| format!("remove {}", target.display()))?;
    }
    std::fs::write(&target, text).with_context(|| format!("write {}", target.display()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cmdline_parsing() {
        let cfg = from_cmdline("console=ttyS0 krypton.net=10.0.2.15/24,10.0.2.2,10.0.2.3 quiet")
            .expect("parse")
            .expect("present");
        assert_eq!(
            cfg,
            NetConfig {
                addr: Ipv4Addr::new(10, 0, 2, 15),
                prefix: 24,
                gateway: Ipv4Addr::new(10, 0, 2, 2),
                dns: vec![Ipv4Addr::new(10, 0, 2, 3)],
            }
        );
        assert_eq!(resolv_conf(&cfg), "nameserver 10.0.2.3\n");
        assert_eq!(from_cmdline("console=ttyS0 quiet").expect("none"), None);
        let last =
            from_cmdline("krypton.net=10.0.2.15/24,10.0.2.2 krypton.net=10.1.0.2/16,10.1.0.1")
                .expect("parse")
                .expect("present");
        assert_eq!(last.prefix, 16, "the last one wins");
        let no_dns = parse("192.168.127.2/24,192.168.127.1").expect("no dns");
        assert!(no_dns.dns.is_empty());
        for bad in [
            "10.0.2.15",
            "10.0.2.15/33",
            "10.0.2.15/0",
            "10.0.2.15/24",
            "10.0.2/24,10.0.2.2",
            "10.0.2.15/24,gw",
            "10.0.2.15/24,10.0.2.2,dns",
        ] {
            assert!(parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn netmasks() {
        assert_eq!(netmask(24), Ipv4Addr::new(255, 255, 255, 0));
        assert_eq!(netmask(32), Ipv4Addr::new(255, 255, 255, 255));
        assert_eq!(netmask(1), Ipv4Addr::new(128, 0, 0, 0));
        assert_eq!(netmask(20), Ipv4Addr::new(255, 255, 240, 0));
    }

    #[test]
    fn resolv_conf_replaces_the_images_symlink() {
        let dir = std::env::temp_dir().join(format!("krypton-agent-resolv-{}", std::process::id()));
        let root = dir.join("root");
        std::fs::create_dir_all(root.join("etc")).expect("mkdir");
        std::os::unix::fs::symlink("../run/stub.conf", root.join("etc/resolv.conf")).expect("ln");
        let src = dir.join("resolv.conf");
        // No VM resolv.conf: nothing happens.
        install_resolv_conf_from(&src, &root).expect("absent");
        assert!(
            root.join("etc/resolv.conf")
                .symlink_metadata()
                .expect("link")
                .is_symlink()
        );
        std::fs::write(&src, "nameserver 10.0.2.3\n").expect("write");
        install_resolv_conf_from(&src, &root).expect("install");
        let meta = root
            .join("etc/resolv.conf")
            .symlink_metadata()
            .expect("file");
        assert!(meta.is_file());
        assert_eq!(
            std::fs::read_to_string(root.join("etc/resolv.conf")).expect("read"),
            "nameserver 10.0.2.3\n"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// Configures `lo` in a fresh network namespace of a test thread (root
    /// only): address, netmask, up, default route through the gateway.
    #[test]
    fn configure_in_a_private_namespace() {
        let t = std::thread::spawn(|| {
            // SAFETY: unshare with a flag only; affects this thread.
            if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
                eprintln!("skipped: cannot create a network namespace (not root?)");
                return;
            }
            let cfg = parse("10.0.2.15/24,10.0.2.2,10.0.2.3").expect("cfg");
            configure("lo", &cfg).expect("configure");
            let route = std::fs::read_to_string("/proc/thread-self/net/route").expect("route");
            // Default route (destination 0) via 10.0.2.2, little-endian hex.
            assert!(
                route.lines().any(|l| {
                    let f: Vec<&str> = l.split_whitespace().collect();
                    f.get(1) == Some(&"00000000") && f.get(2) == Some(&"0202000A")
                }),
                "{route}"
            );
            let addrs =
                std::fs::read_to_string("/proc/thread-self/net/fib_trie").unwrap_or_default();
            assert!(addrs.contains("10.0.2.15"), "{addrs}");
        });
        t.join().expect("thread");
    }
}
