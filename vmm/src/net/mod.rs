//! Host networking for the guest's virtio-net: the `--net` and `-p`
//! options, the host-port check and the backends they select.
//!
//! - `none`: no network device (the guest has only `lo`).
//! - `passt` (Linux): starts passt ([`passt`]) on a private Unix socket and
//!   speaks QEMU's stream protocol to it; `-p` becomes passt's `-t`/`-u`.
//! - `stream:unix:PATH` (Unix hosts) and `stream:tcp:HOST:PORT`: connect to
//!   a peer that is already listening (passt, gvproxy `-listen-qemu`, QEMU
//!   stream servers). Published ports are the peer's business there.

#[cfg(unix)]
pub mod passt;

use std::path::PathBuf;

use crate::cli::one_line;
use krypton_devices::virtio::net::{ETHERNET_MTU, NetBackend, StreamBackend};

/// The guest's address with passt (QEMU user networking's conventions).
pub const PASST_GUEST_ADDR: &str = "10.0.2.15";
/// Its prefix length.
pub const PASST_PREFIX: u8 = 24;
/// The gateway: passt maps connections to it to the host's loopback.
pub const PASST_GATEWAY: &str = "10.0.2.2";
/// The resolver address: passt forwards queries to it to the host's resolver.
pub const PASST_DNS: &str = "10.0.2.3";

/// The kernel command-line word telling the guest agent how to configure
/// its interface (`krypton.net=ADDR/PREFIX,GATEWAY,DNS`), where the VMM
/// chose the addressing (passt); other peers: none (pass it with
/// `--append` to match the peer, e.g. gvproxy's
/// `krypton.net=192.168.127.2/24,192.168.127.1,192.168.127.1`).
pub fn guest_cmdline(mode: &NetMode) -> Option<String> {
    (*mode == NetMode::Passt).then(|| {
        format!("krypton.net={PASST_GUEST_ADDR}/{PASST_PREFIX},{PASST_GATEWAY},{PASST_DNS}")
    })
}

/// `krypton run`'s network when `--net` is not given: passt where it is
/// installed (or when `-p` asks for published ports, so that a missing
/// passt is the one-line error), else none, with one notice line.
pub fn run_default(publishes: bool) -> NetMode {
    if publishes || passt_installed() {
        return NetMode::Passt;
    }
    eprintln!(
        "krypton: notice: passt is not installed, so the container has no network (only lo); \
         apt-get install passt, or pass --net none"
    );
    NetMode::None
}

/// Whether `passt` is an executable file on PATH (never on Windows).
pub fn passt_installed() -> bool {
    #[cfg(unix)]
    {
        passt::find_on_path(std::env::var_os("PATH").as_deref()).is_some()
    }
    #[cfg(not(unix))]
    {
        false
    }
}

/// What `--net` asks for.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum NetMode {
    /// No network device.
    #[default]
    None,
    /// Start passt and connect to it.
    Passt,
    /// Connect to a Unix socket.
    StreamUnix(PathBuf),
    /// Connect to `HOST:PORT` over TCP.
    StreamTcp(String),
}

/// Parses `none | passt | stream:unix:PATH | stream:tcp:HOST:PORT`.
pub fn parse_net(s: &str) -> Result<NetMode, String> {
    let bad = || "expected none, passt, stream:unix:PATH or stream:tcp:HOST:PORT".to_owned();
    match s {
        "none" => return Ok(NetMode::None),
        "passt" => return Ok(NetMode::Passt),
        _ => {}
    }
    let rest = s.strip_prefix("stream:").ok_or_else(bad)?;
    if let Some(path) = rest.strip_prefix("unix:") {
        if path.is_empty() {
            return Err(bad());
        }
        return Ok(NetMode::StreamUnix(PathBuf::from(path)));
    }
    if let Some(addr) = rest.strip_prefix("tcp:") {
        let (host, port) = addr.rsplit_once(':').ok_or_else(bad)?;
        let port_ok = port.parse::<u16>().is_ok_and(|p| p != 0);
        if host.is_empty() || !port_ok {
            return Err(bad());
        }
        return Ok(NetMode::StreamTcp(addr.to_owned()));
    }
    Err(bad())
}

/// Transport protocol of a published port.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Proto {
    /// TCP.
    Tcp,
    /// UDP.
    Udp,
}

/// One `-p HOSTPORT:CONTAINERPORT[/tcp|udp]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PortMap {
    /// Port on the host.
    pub host: u16,
    /// Port in the guest (the container shares the VM's network).
    pub guest: u16,
    /// TCP or UDP.
    pub proto: Proto,
}

/// Parses `HOSTPORT:CONTAINERPORT[/tcp|udp]`.
pub fn parse_publish(s: &str) -> Result<PortMap, String> {
    let bad = |why: &str| format!("{why} (expected HOSTPORT:CONTAINERPORT[/tcp|udp])");
    let (ports, proto) = match s.rsplit_once('/') {
        Some((p, "tcp")) => (p, Proto::Tcp),
        Some((p, "udp")) => (p, Proto::Udp),
        Some(_) => return Err(bad("the protocol must be tcp or udp")),
        None => (s, Proto::Tcp),
    };
    let (h, g) = ports.split_once(':').ok_or_else(|| bad("missing ':'"))?;
    let port = |x: &str| {
        x.parse::<u16>()
            .ok()
            .filter(|&p| p != 0)
            .ok_or_else(|| bad(&format!("'{x}' is not a port number 1-65535")))
    };
    Ok(PortMap {
        host: port(h)?,
        guest: port(g)?,
        proto,
    })
}

/// Fails with one line if a published host port is taken (or listed twice).
pub fn check_host_ports(ports: &[PortMap]) -> Result<(), String> {
    for (i, p) in ports.iter().enumerate() {
        let name = match p.proto {
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
        };
        if ports[..i]
            .iter()
            .any(|q| q.host == p.host && q.proto == p.proto)
        {
            return Err(format!("host port {}/{name} is published twice", p.host));
        }
        let bound = match p.proto {
            Proto::Tcp => std::net::TcpListener::bind(("0.0.0.0", p.host)).map(drop),
            Proto::Udp => std::net::UdpSocket::bind(("0.0.0.0", p.host)).map(drop),
        };
        if let Err(e) = bound {
            return Err(format!("host port {}/{name} is not available: {e}", p.host));
        }
    }
    Ok(())
}

/// A connected backend plus whatever must live as long as the VM.
#[derive(Debug)]
pub struct NetSetup {
    /// The device's backend.
    pub backend: Box<dyn NetBackend>,
    /// The guest MTU to offer.
    pub mtu: u16,
    /// The passt process (stopped on drop), if we started one.
    pub keep: Option<Box<dyn std::fmt::Debug + Send>>,
}

/// Connects the backend `mode` asks for; `None` for `--net none`.
pub fn connect(mode: &NetMode, ports: &[PortMap]) -> Result<Option<NetSetup>, String> {
    if !ports.is_empty() && *mode != NetMode::Passt {
        return Err(
            "-p needs --net passt (with other peers, publish ports on the peer, e.g. gvproxy's API)"
                .into(),
        );
    }
    match mode {
        NetMode::None => Ok(None),
        NetMode::StreamTcp(addr) => {
            let b = StreamBackend::connect_tcp(addr).map_err(|e| format!("--net: {}", one_line(&e)))?;
            Ok(Some(NetSetup {
                backend: Box::new(b),
                mtu: ETHERNET_MTU,
                keep: None,
            }))
        }
        #[cfg(unix)]
        NetMode::StreamUnix(path) => {
            let b = StreamBackend::connect_unix(path).map_err(|e| format!("--net: {}", one_line(&e)))?;
            Ok(Some(NetSetup {
                backend: Box::new(b),
                mtu: ETHERNET_MTU,
                keep: None,
            }))
        }
        #[cfg(not(unix))]
        NetMode::StreamUnix(_) => {
            Err("--net stream:unix: is not supported on Windows yet; use stream:tcp:HOST:PORT".into())
        }
        #[cfg(unix)]
        NetMode::Passt => {
            check_host_ports(ports)?;
            let (p, sock) = passt::Passt::start(ports).map_err(|e| one_line(&e))?;
            let b = StreamBackend::new(Box::new(sock)).map_err(|e| format!("passt: {}", one_line(&e)))?;
            Ok(Some(NetSetup {
                backend: Box::new(b),
                mtu: krypton_devices::virtio::net::PASST_MTU,
                keep: Some(Box::new(p)),
            }))
        }
        #[cfg(not(unix))]
        NetMode::Passt => Err(
            "--net passt is Linux-only; on Windows start gvproxy -listen-qemu and use --net stream:tcp:HOST:PORT"
                .into(),
        ),
    }
}

/// A locally administered MAC for this VM: QEMU's 52:54:00 prefix, the rest
/// from the process id and the clock.
pub fn guest_mac() -> [u8; 6] {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::from(d.subsec_nanos()) ^ d.as_secs());
    krypton_devices::virtio::net::Net::mac_from_seed(nanos ^ (u64::from(std::process::id()) << 24))
}

#[cfg(test)]
mod tests;
