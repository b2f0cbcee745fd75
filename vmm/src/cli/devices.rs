//! Virtio device options shared by `krypton boot` and `krypton run`.

use std::path::PathBuf;

use krypton_devices::virtio::VirtioFs;
use krypton_devices::virtio::blk::Block;
use krypton_devices::virtio::fs::TAG_LEN;
use krypton_devices::virtio::net::Net;
use krypton_devices::virtio::rng::Rng;
use krypton_devices::virtio::vsock::{Vsock, VsockHost};

use super::one_line;
use crate::machine::Machine;
use crate::net::{NetMode, PortMap, parse_net, parse_publish};

/// Virtio device options.
#[derive(clap::Args, Debug, Clone)]
pub struct DeviceArgs {
    /// Raw disk image as virtio-blk: PATH or PATH,ro. Repeatable; the first is /dev/vda.
    #[arg(long = "disk", value_parser = parse_disk)]
    pub disks: Vec<DiskArg>,
    /// Host side of vsock, Firecracker's hybrid protocol: a Unix socket path
    /// (on Windows, a named pipe such as \\.\pipe\krypton).
    #[arg(long)]
    pub vsock_uds: Option<PathBuf>,
    /// The guest's vsock context ID.
    #[arg(long, default_value_t = DEFAULT_CID)]
    pub cid: u64,
    /// Leave out the virtio-rng entropy device.
    #[arg(long)]
    pub no_rng: bool,
    /// Host directory as virtio-fs: TAG=DIR or TAG=DIR,ro (the guest runs
    /// `mount -t virtiofs TAG /path`). Repeatable.
    #[arg(long = "share", value_parser = parse_share)]
    pub shares: Vec<ShareArg>,
    /// Network.
    #[command(flatten)]
    pub net: NetArgs,
    /// The layer disk (right after the disks): these read-only layer
    /// images placed on it, or none. `krypton run` always has one, so one
    /// template snapshot serves every image.
    #[arg(skip)]
    pub layers: Option<Vec<PathBuf>>,
    /// A writable scratch disk right after the layer disk (`krypton run
    /// --scratch`): an empty ext2 filesystem for the container's upper
    /// layer, made fresh for each run.
    #[arg(skip)]
    pub scratch: Option<PathBuf>,
}

/// Network options shared by `krypton boot` and `krypton run`.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct NetArgs {
    /// Network: none, passt (Linux: starts passt), stream:unix:PATH or
    /// stream:tcp:HOST:PORT (a QEMU-stream peer: passt, gvproxy -listen-qemu).
    /// Default: none for `boot`; for `run`, passt where it is installed.
    #[arg(long = "net", value_parser = parse_net)]
    pub mode: Option<NetMode>,
    /// Publish a port: HOSTPORT:CONTAINERPORT[/tcp|udp] (repeatable; needs --net passt).
    #[arg(short = 'p', long = "publish", value_name = "HOSTPORT:CONTAINERPORT[/tcp|udp]", value_parser = parse_publish)]
    pub publish: Vec<PortMap>,
}

impl NetArgs {
    /// The network asked for (`none` when `--net` was not given).
    pub fn mode(&self) -> NetMode {
        self.mode.clone().unwrap_or_default()
    }
}

/// The guest's vsock CID unless `--cid` says otherwise (0-2 are reserved).
pub const DEFAULT_CID: u64 = 3;

impl Default for DeviceArgs {
    fn default() -> Self {
        DeviceArgs {
            disks: Vec::new(),
            vsock_uds: None,
            cid: DEFAULT_CID,
            no_rng: false,
            shares: Vec::new(),
            net: NetArgs::default(),
            layers: None,
            scratch: None,
        }
    }
}

/// One `--disk`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiskArg {
    /// Image path.
    pub path: PathBuf,
    /// Read-only.
    pub read_only: bool,
}

/// Parses `PATH[,ro]`.
pub fn parse_disk(s: &str) -> Result<DiskArg, String> {
    let (path, read_only) = match s.rsplit_once(',') {
        Some((p, "ro")) => (p, true),
        Some((p, "rw")) => (p, false),
        Some((_, opt)) => return Err(format!("unknown disk option '{opt}' (expected ro or rw)")),
        None => (s, false),
    };
    if path.is_empty() {
        return Err("empty disk path".into());
    }
    Ok(DiskArg {
        path: PathBuf::from(path),
        read_only,
    })
}

/// One `--share`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShareArg {
    /// Mount tag (1 to 36 bytes).
    pub tag: String,
    /// Host directory.
    pub dir: PathBuf,
    /// Read-only (enforced by the host).
    pub read_only: bool,
}

/// Checks a mount tag: 1 to 36 bytes, no NUL, ',' or '='.
pub fn check_tag(tag: &str) -> Result<(), String> {
    if tag.is_empty() || tag.len() > TAG_LEN || tag.contains(['\0', ',', '=']) {
        return Err(format!(
            "share tag '{tag}' must be 1 to {TAG_LEN} bytes without ',' or '='"
        ));
    }
    Ok(())
}

/// Checks that `dir` is an existing directory.
pub fn check_dir(dir: &std::path::Path) -> Result<(), String> {
    match std::fs::metadata(dir) {
        Ok(m) if m.is_dir() => Ok(()),
        Ok(_) => Err(format!("{} is not a directory", dir.display())),
        Err(e) => Err(format!("shared directory {}: {e}", dir.display())),
    }
}

/// Parses `TAG=DIR[,ro]`; the directory must exist.
pub fn parse_share(s: &str) -> Result<ShareArg, String> {
    let Some((tag, rest)) = s.split_once('=') else {
        return Err(format!("'{s}' is not TAG=DIR[,ro]"));
    };
    check_tag(tag)?;
    let (dir, read_only) = match rest.rsplit_once(',') {
        Some((d, "ro")) => (d, true),
        Some((d, "rw")) => (d, false),
        _ => (rest, false),
    };
    if dir.is_empty() {
        return Err(format!("'{s}': empty directory"));
    }
    let dir = PathBuf::from(dir);
    check_dir(&dir)?;
    Ok(ShareArg {
        tag: tag.to_owned(),
        dir,
        read_only,
    })
}

#[cfg(target_os = "linux")]
fn virtio_fs(share: &ShareArg) -> Result<VirtioFs, String> {
    use krypton_devices::virtio::fs::passthrough::{Config, Passthrough};
    let cfg = Config {
        read_only: share.read_only,
        ..Config::default()
    };
    let fs = Passthrough::new(&share.dir, cfg).map_err(|e| one_line(&e))?;
    VirtioFs::new(&share.tag, Box::new(fs)).map_err(|e| one_line(&e))
}

/// Hosts without openat2 serve shares with the portable std::fs backend.
#[cfg(not(target_os = "linux"))]
fn virtio_fs(share: &ShareArg) -> Result<VirtioFs, String> {
    use krypton_devices::virtio::fs::portable::{Config, Portable};
    let cfg = Config {
        read_only: share.read_only,
        ..Config::default()
    };
    let fs = Portable::new(&share.dir, cfg).map_err(|e| one_line(&e))?;
    VirtioFs::new(&share.tag, Box::new(fs)).map_err(|e| one_line(&e))
}

#[cfg(unix)]
fn hybrid_host(
    path: &std::path::Path,
) -> Result<VsockHost, krypton_devices::virtio::vsock::VsockHostError> {
    VsockHost::unix(path)
}

#[cfg(windows)]
fn hybrid_host(
    path: &std::path::Path,
) -> Result<VsockHost, krypton_devices::virtio::vsock::VsockHostError> {
    VsockHost::named_pipe(path.to_string_lossy().into_owned())
}

/// What must outlive the VM besides the machine.
#[derive(Debug)]
pub struct Attached {
    /// The vsock host side.
    pub vsock: VsockHost,
    /// The network backend's helper process (passt), stopped on drop.
    pub net: Option<Box<dyn std::fmt::Debug + Send>>,
}

/// Adds every requested device to `machine`: disks first (so the first disk
/// is vda), the layer disk, the scratch disk, then virtio-fs shares, virtio-rng, vsock, then virtio-net.
pub fn add_all(machine: &mut Machine, args: &DeviceArgs) -> Result<Attached, String> {
    for d in &args.disks {
        let blk = Block::new(&d.path, d.read_only)
            .map_err(|e| format!("disk {}: {}", d.path.display(), one_line(&e)))?;
        machine
            .add_virtio_device(Box::new(blk))
            .map_err(|e| one_line(&e))?;
    }
    if let Some(files) = &args.layers {
        let (blk, _) =
            Block::layers(files).map_err(|e| format!("image layers: {}", one_line(&e)))?;
        machine
            .add_virtio_device(Box::new(blk))
            .map_err(|e| one_line(&e))?;
    }
    if let Some(path) = &args.scratch {
        let blk = Block::new(path, false)
            .map_err(|e| format!("scratch disk {}: {}", path.display(), one_line(&e)))?;
        machine
            .add_virtio_device(Box::new(blk))
            .map_err(|e| one_line(&e))?;
    }
    let mut tags = std::collections::HashSet::new();
    for share in &args.shares {
        if !tags.insert(share.tag.as_str()) {
            return Err(format!("share tag '{}' is used twice", share.tag));
        }
        let dev = virtio_fs(share)?;
        machine
            .add_virtio_device(Box::new(dev))
            .map_err(|e| one_line(&e))?;
    }
    if !args.no_rng {
        machine
            .add_virtio_device(Box::new(Rng::new()))
            .map_err(|e| one_line(&e))?;
    }
    let host = match &args.vsock_uds {
        Some(path) => hybrid_host(path).map_err(|e| format!("vsock: {}", one_line(&e)))?,
        None => VsockHost::in_process().map_err(|e| format!("vsock: {}", one_line(&e)))?,
    };
    let vsock =
        Vsock::new(args.cid, host.clone()).map_err(|e| format!("vsock: {}", one_line(&e)))?;
    machine
        .add_virtio_device(Box::new(vsock))
        .map_err(|e| one_line(&e))?;
    let mut keep = None;
    if let Some(setup) = crate::net::connect(&args.net.mode(), &args.net.publish)? {
        let net = Net::new(crate::net::guest_mac(), setup.mtu, setup.backend);
        keep = setup.keep;
        machine
            .add_virtio_device(Box::new(net))
            .map_err(|e| one_line(&e))?;
    }
    Ok(Attached {
        vsock: host,
        net: keep,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn disk_options() {
        assert_eq!(
            parse_disk("a.img"),
            Ok(DiskArg {
                path: "a.img".into(),
                read_only: false
            })
        );
        assert_eq!(
            parse_disk("a,b.img,ro"),
            Ok(DiskArg {
                path: "a,b.img".into(),
                read_only: true
            })
        );
        assert!(parse_disk("a.img,rx").is_err());
        assert!(parse_disk(",ro").is_err());
    }

    #[test]
    fn share_options() {
        let dir = std::env::temp_dir();
        let d = dir.display();
        assert_eq!(
            parse_share(&format!("data={d},ro")),
            Ok(ShareArg {
                tag: "data".into(),
                dir: dir.clone(),
                read_only: true
            })
        );
        assert_eq!(
            parse_share(&format!("t={d}")).map(|s| s.read_only),
            Ok(false)
        );
        assert!(parse_share(&format!("={d}")).is_err(), "empty tag");
        assert!(parse_share(&format!("{}={d}", "x".repeat(37))).is_err());
        assert!(parse_share("t=").is_err());
        assert!(parse_share("t").is_err());
        let err = parse_share("t=/definitely/not/here").expect_err("missing dir");
        assert!(err.contains("/definitely/not/here"), "{err}");
        assert!(
            parse_share("t=/etc/hostname").is_err()
                || !std::path::Path::new("/etc/hostname").exists()
        );
    }
}
