//! `cargo xtask bench` part: TCP throughput through passt, guest to host
//! and host to guest, Krypton (`krypton boot --net passt`) against QEMU
//! microvm (`-netdev stream,addr.type=unix` to a passt we start with the
//! same options), same run, same guest.
//!
//! The guest: the pvm-test (or product) kernel, one vCPU, 256 MiB, and a
//! read-only ext4 root made here with busybox-static, Debian's iperf3 and
//! its shared libraries (from `ldd`); its /init configures eth0 as
//! Krypton's agent would (10.0.2.15/24 via 10.0.2.2), runs `iperf3 -c` to
//! the host and then `iperf3 -c -R`, 1 MB each (a reset try is repeated
//! against a fresh server, up to 4 times), and says when it is done. The host
//! runs two one-shot `iperf3 -s -J` servers on 127.0.0.1, reached through
//! passt's gateway mapping; the figures are theirs (host clock: the
//! guest's clock runs slow on kvm_pvm). Each VMM boots once, cold.
#![allow(clippy::print_stdout)] // the figures are this module's output

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

/// Bytes of each iperf3 run (`-n`). A byte count, not a duration: the
/// guest's clock runs slow on kvm_pvm, and iperf3's server ends a timed
/// test that overruns its own clock by 10 s by closing the stream, which
/// the guest sees as "Connection reset by peer".
const BYTES: &str = "1M";
/// Tries per direction, each against its own one-shot server: Debian 12's
/// passt resets some connections of a slow emulated guest (QEMU's and
/// Krypton's alike), so a reset try is followed by another, and the
/// bench reports how many each side needed.
const ATTEMPTS: usize = 4;
/// The guest's largest TCP buffer, both ways. passt resets a connection
/// whose data the guest has not acknowledged after a few 2-second
/// timeouts, and an emulated guest with Linux's default multi-megabyte
/// windows can fall that far behind; the bound keeps less in flight. It
/// does not stop the resets (measured: both VMMs still see them), which
/// is what [`ATTEMPTS`] is for.
const WINDOW: u32 = 65536;
/// How long one VM may take, boot included: 600 s, or
/// KRYPTON_BENCH_NET_DEADLINE seconds (a loaded kvm_pvm host boots slower).
fn deadline() -> Duration {
    let s = std::env::var("KRYPTON_BENCH_NET_DEADLINE")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(600);
    Duration::from_secs(s)
}
const DONE: &str = "BENCH-NET-DONE";

/// A directory removed on drop.
struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Kills and reaps a child on drop.
struct Reaped(Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The guest's /init: one `iperf3 -c` per port of `fwd` until one
/// succeeds, then the same with `-R` over `rev`.
fn init_script(fwd: &[u16], rev: &[u16]) -> String {
    let list = |p: &[u16]| p.iter().map(u16::to_string).collect::<Vec<_>>().join(" ");
    let tries = |ports: &[u16], flag: &str| {
        format!(
            "for p in {}; do\n\
             if iperf3 -c 10.0.2.2 -p $p -n {BYTES} -f m{flag} > /tmp/o 2>&1; then tail -3 /tmp/o; break; fi\n\
             tail -2 /tmp/o; echo BENCH-NET-RETRY; sleep 1\n\
             done\n",
            list(ports)
        )
    };
    format!(
        "#!/bin/busybox sh\n\
         export PATH=/bin:/usr/bin\n\
         mount -t proc proc /proc; mount -t sysfs sys /sys; mount -t tmpfs tmp /tmp\n\
         ip link set lo up; ip link set eth0 up\n\
         ip addr add 10.0.2.15/24 dev eth0; ip route add default via 10.0.2.2\n\
         echo '4096 65536 {WINDOW}' > /proc/sys/net/ipv4/tcp_rmem\n\
         echo '4096 65536 {WINDOW}' > /proc/sys/net/ipv4/tcp_wmem\n\
         echo BENCH-NET-UP\n\
         {}sleep 1\n\
         {}echo {DONE}\n\
         while true; do sleep 1000; done\n",
        tries(fwd, ""),
        tries(rev, " -R")
    )
}

/// Copies `bin` and every library `ldd` lists into `root`, same paths.
fn copy_with_libs(bin: &Path, root: &Path) -> Result<()> {
    let out = Command::new("ldd").arg(bin).output().context("ldd")?;
    let text = String::from_utf8_lossy(&out.stdout);
    let mut files = vec![bin.to_path_buf()];
    for line in text.lines() {
        let path = line
            .split_whitespace()
            .find(|w| w.starts_with('/'))
            .map(PathBuf::from);
        files.extend(path);
    }
    for f in files {
        let dst = root.join(f.strip_prefix("/").unwrap_or(&f));
        std::fs::create_dir_all(dst.parent().context("no parent")?)?;
        std::fs::copy(&f, &dst).with_context(|| format!("copying {}", f.display()))?;
    }
    Ok(())
}

/// Builds the guest's root image in `dir`.
fn guest_image(dir: &Path, fwd: &[u16], rev: &[u16]) -> Result<PathBuf> {
    let iperf3 = Path::new("/usr/bin/iperf3");
    if !iperf3.exists() {
        crate::cache::apt_install(&["iperf3"])?;
    }
    let root = dir.join("root");
    let _ = std::fs::remove_dir_all(&root);
    for d in ["bin", "proc", "sys", "tmp", "dev", "etc"] {
        std::fs::create_dir_all(root.join(d))?;
    }
    std::fs::copy("/bin/busybox", root.join("bin/busybox")).context("busybox-static")?;
    // The root is mounted read-only, so the applet links are made here.
    let list = crate::cache::output(Command::new("/bin/busybox").arg("--list"))?;
    for applet in list
        .lines()
        .map(str::trim)
        .filter(|a| !a.is_empty() && *a != "busybox")
    {
        std::os::unix::fs::symlink("busybox", root.join("bin").join(applet))?;
    }
    copy_with_libs(iperf3, &root)?;
    let init = root.join("init");
    std::fs::write(&init, init_script(fwd, rev))?;
    std::fs::set_permissions(&init, std::os::unix::fs::PermissionsExt::from_mode(0o755))?;
    let img = dir.join("net-guest.ext4");
    let _ = std::fs::remove_file(&img);
    let st = Command::new("mkfs.ext4")
        .args(["-q", "-F", "-d"])
        .arg(&root)
        .arg(&img)
        .arg("48M")
        .status()
        .context("mkfs.ext4")?;
    if !st.success() {
        bail!("mkfs.ext4 -d failed");
    }
    Ok(img)
}

/// A one-shot `iperf3 -s -J` on 127.0.0.1:`port`.
fn iperf3_server(port: u16) -> Result<Reaped> {
    let c = Command::new("iperf3")
        .args(["-s", "-1", "-J", "-B", "127.0.0.1", "-p", &port.to_string()])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .context("starting iperf3 -s")?;
    Ok(Reaped(c))
}

/// `"bits_per_second": N` inside the `"key": { ... }` object of iperf3's
/// JSON (no JSON crate in xtask; iperf3's layout is fixed).
fn bits_per_second(json: &str, key: &str) -> Option<f64> {
    let at = json.rfind(&format!("\"{key}\""))?;
    let rest = &json[at..];
    let end = rest.find('}')?;
    let obj = &rest[..end];
    let v = obj.split("\"bits_per_second\":").nth(1)?;
    v.trim()
        .split(|c: char| c == ',' || c.is_whitespace())
        .next()?
        .parse()
        .ok()
}

/// The figure of the first try that has one, and how many tries were
/// made (servers that got a report), from one-shot servers whose guest
/// has finished: unused ones are stopped first.
fn first_report(servers: Vec<Reaped>, key: &str) -> Result<(f64, usize)> {
    std::thread::sleep(Duration::from_secs(1)); // a last report being written
    let mut reports = Vec::new();
    for mut s in servers {
        let _ = s.0.kill();
        let mut json = String::new();
        if let Some(mut out) = s.0.stdout.take() {
            std::io::Read::read_to_string(&mut out, &mut json)?;
        }
        if !json.trim().is_empty() {
            reports.push(json);
        }
    }
    let tries = reports.len();
    reports
        .iter()
        .find_map(|j| bits_per_second(j, key))
        .map(|b| (b / 8e6, tries))
        .with_context(|| {
            format!(
                "no {key} in any of {tries} iperf3 reports; the last: {}",
                reports.last().map(|j| j.trim()).unwrap_or("")
            )
        })
}

/// Runs `vmm` until the guest prints [`DONE`]; returns the console lines.
fn run_guest(mut vmm: Command) -> Result<Vec<String>> {
    let mut child = Reaped(
        vmm.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .context("starting the VMM")?,
    );
    let out = child.0.stdout.take().context("stdout")?;
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for l in BufReader::new(out).lines().map_while(Result::ok) {
            if tx.send(l).is_err() {
                break;
            }
        }
    });
    let t = Instant::now();
    let mut seen = Vec::new();
    while t.elapsed() < deadline() {
        match rx.recv_timeout(Duration::from_millis(500)) {
            Ok(l) => {
                let done = l.contains(DONE);
                seen.push(l);
                if done {
                    return Ok(seen);
                }
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
        }
    }
    let tail: Vec<&String> = seen.iter().rev().take(8).collect();
    bail!(
        "the guest did not finish within {:?}; last lines: {tail:?}",
        deadline()
    )
}

/// Starts passt as `krypton --net passt` does, on `sock`, for QEMU.
fn passt_for_qemu(sock: &Path) -> Result<Reaped> {
    let c = Command::new("passt")
        .args(["-f", "-1", "-q", "-s"])
        .arg(sock)
        .args(["-a", "10.0.2.15", "-n", "24", "-g", "10.0.2.2"])
        .args(["--dns-forward", "10.0.2.3"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("starting passt")?;
    let t = Instant::now();
    while !sock.exists() {
        if t.elapsed() > Duration::from_secs(10) {
            bail!("passt did not create {}", sock.display());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(Reaped(c))
}

/// The pvm-test kernel's switches and CPUID hides, as both VMMs need them.
struct GuestKernel {
    vmlinux: PathBuf,
    cmdline: String,
    /// `LEAF:SUBLEAF:REG:BIT` for krypton.
    hides: Vec<String>,
    /// QEMU `-cpu host,-flag,...` names of the same bits.
    qemu_cpu: String,
}

fn guest_kernel() -> Result<GuestKernel> {
    let pvm = crate::setup::host_is_pvm();
    let variant = if pvm { "pvm-test" } else { "product" };
    let vmlinux = crate::cache::root()?
        .join("kernel")
        .join(format!("{variant}-latest"))
        .join("vmlinux");
    if !vmlinux.is_file() {
        bail!("{} missing (cargo xtask kernel)", vmlinux.display());
    }
    let sw = crate::pvm_kernel::switches(pvm)?;
    let mut cmdline = String::from(
        "console=ttyS0 reboot=k panic=-1 i8042.noaux i8042.nomux i8042.dumbkbd nomodule \
         tsc=reliable no_timer_check root=/dev/vda ro rootfstype=ext4 init=/init",
    );
    if !sw.cmdline.is_empty() {
        cmdline.push(' ');
        cmdline.push_str(&sw.cmdline);
    }
    Ok(GuestKernel {
        vmlinux,
        cmdline,
        hides: sw.hides,
        qemu_cpu: sw.qemu_cpu,
    })
}

/// An error's chain on one line, the guest's console reduced to the lines
/// after the guest's network came up.
fn one_line(e: &anyhow::Error) -> String {
    let text = format!("{e:#}");
    let text = text.split("BENCH-NET-UP").last().unwrap_or(&text);
    text.replace('\n', " ").chars().take(2000).collect()
}

/// One side's figures in MB/s, with the tries each took.
struct Figures {
    up: f64,
    up_tries: usize,
    down: f64,
    down_tries: usize,
}

/// One VMM's figures: guest to host, host to guest.
fn measure(name: &str, vmm: Command, fwd: &[u16], rev: &[u16]) -> Result<Figures> {
    let s_fwd = fwd
        .iter()
        .map(|p| iperf3_server(*p))
        .collect::<Result<Vec<_>>>()?;
    let s_rev = rev
        .iter()
        .map(|p| iperf3_server(*p))
        .collect::<Result<Vec<_>>>()?;
    let t = Instant::now();
    let lines = run_guest(vmm).with_context(|| name.to_owned())?;
    let (up, up_tries) =
        first_report(s_fwd, "sum_received").with_context(|| format!("{name}: {lines:?}"))?;
    let (down, down_tries) =
        first_report(s_rev, "sum_sent").with_context(|| format!("{name}: {lines:?}"))?;
    eprintln!(
        "  {name}: boot and both directions {:.0} s",
        t.elapsed().as_secs_f64()
    );
    Ok(Figures {
        up,
        up_tries,
        down,
        down_tries,
    })
}

fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// Runs the network benchmark and prints the ratios.
pub fn run(krypton: &Path, qemu: &str) -> Result<()> {
    if Command::new("passt").arg("--version").output().is_err() {
        crate::cache::apt_install(&["passt"])?;
    }
    let k = guest_kernel()?;
    let dir = crate::cache::target_dir().join("bench-net");
    std::fs::create_dir_all(&dir)?;
    let fwd = (0..ATTEMPTS)
        .map(|_| free_port())
        .collect::<Result<Vec<_>>>()?;
    let rev = (0..ATTEMPTS)
        .map(|_| free_port())
        .collect::<Result<Vec<_>>>()?;
    let img = guest_image(&dir, &fwd, &rev)?;

    let mut kr = Command::new(krypton);
    kr.arg("boot").arg("--kernel").arg(&k.vmlinux);
    kr.args(["--mem", "256", "--net", "passt", "--cmdline", &k.cmdline]);
    kr.arg("--disk").arg(format!("{},ro", img.display()));
    for h in &k.hides {
        kr.args(["--hide-cpuid", h]);
    }
    // passt drops to `nobody` when started as root: its socket directory
    // must be reachable and writable for it (so not under a 0700 home).
    let sock_dir =
        TempDir(std::env::temp_dir().join(format!("krypton-bench-passt-{}", std::process::id())));
    let _ = std::fs::remove_dir_all(&sock_dir.0);
    std::fs::create_dir_all(&sock_dir.0)?;
    if std::os::unix::fs::MetadataExt::uid(&std::fs::metadata(&sock_dir.0)?) == 0 {
        std::os::unix::fs::chown(&sock_dir.0, Some(65534), Some(65534))?;
    }
    let sock = sock_dir.0.join("passt.sock");
    let mut qm = Command::new(qemu);
    qm.args([
        "-M",
        "microvm,acpi=off,x-option-roms=off",
        "-accel",
        "kvm",
        "-cpu",
        &k.qemu_cpu,
    ]);
    qm.args(["-m", "256M", "-smp", "1", "-nodefaults", "-no-user-config"]);
    qm.args(["-nographic", "-serial", "stdio", "-no-reboot", "-kernel"]);
    qm.arg(&k.vmlinux).args(["-append", &k.cmdline]);
    qm.arg("-drive").arg(format!(
        "id=root,file={},format=raw,if=none,readonly=on",
        img.display()
    ));
    qm.args(["-device", "virtio-blk-device,drive=root"]);
    qm.arg("-netdev").arg(format!(
        "stream,id=net,server=off,addr.type=unix,addr.path={}",
        sock.display()
    ));
    qm.args(["-device", "virtio-net-device,netdev=net"]);

    println!("== TCP through passt (iperf3, {BYTES}B each way, host-side figures, MB/s) ==");
    // Both sides run even when one fails, so a failure can be told apart
    // from passt's or the guest's (the same failure on both).
    let krypton_mbs = measure("krypton", kr, &fwd, &rev);
    let qemu_mbs = passt_for_qemu(&sock).and_then(|_passt| measure("qemu", qm, &fwd, &rev));
    let (krypton_mbs, qemu_mbs) = match (krypton_mbs, qemu_mbs) {
        (Ok(k), Ok(q)) => (k, q),
        (k, q) => {
            for (name, r) in [("krypton", &k), ("qemu", &q)] {
                match r {
                    Ok(f) => println!(
                        "  {name}: guest -> host {:.3} MB/s ({} tries), host -> guest {:.3} MB/s ({} tries)",
                        f.up, f.up_tries, f.down, f.down_tries
                    ),
                    Err(e) => println!("  {name}: FAILED: {}", one_line(e)),
                }
            }
            bail!("the network benchmark failed (details above)");
        }
    };
    let (k, q) = (krypton_mbs, qemu_mbs);
    let rows = [
        ("guest -> host", k.up, k.up_tries, q.up, q.up_tries),
        ("host -> guest", k.down, k.down_tries, q.down, q.down_tries),
    ];
    for (what, kv, kt, qv, qt) in rows {
        let r = if qv > 0.0 { kv / qv } else { 0.0 };
        let verdict = if r >= 1.0 { "met" } else { "MISSED" };
        println!(
            "  {what:14} krypton {kv:8.3} ({kt} tries)   qemu {qv:8.3} ({qt} tries)   krypton/qemu = {r:.2}x (goal >= 1.00x: {verdict})"
        );
    }
    println!(
        "  (kvm_pvm hosts: the guest kernel is emulated instruction by instruction and dominates these figures)"
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The end of a one-shot `iperf3 -s -J` report for a `-R` run (3.12).
    const REPORT: &str = r#"{ "end": {
        "streams": [{ "sender": { "bits_per_second": 1.5 } }],
        "sum_sent": {
            "start": 0, "end": 1.02043, "seconds": 1.02043, "bytes": 349962240,
            "bits_per_second": 2743645247.5917015, "retransmits": 4, "sender": true
        },
        "sum_received": {
            "start": 0, "end": 1.02043, "seconds": 1.02043, "bytes": 0,
            "bits_per_second": 0, "sender": true
        }
    } }"#;

    #[test]
    fn iperf3_figures_are_read_from_the_named_sum() {
        assert_eq!(
            bits_per_second(REPORT, "sum_sent"),
            Some(2743645247.5917015)
        );
        assert_eq!(bits_per_second(REPORT, "sum_received"), Some(0.0));
        assert_eq!(bits_per_second(REPORT, "sum"), None);
        assert_eq!(bits_per_second("{}", "sum_sent"), None);
    }

    #[test]
    fn the_guest_init_runs_both_directions_against_the_given_ports() {
        let s = init_script(&[5001, 5003], &[5002, 5004]);
        assert!(s.starts_with("#!/bin/busybox sh\n"));
        assert!(s.contains("for p in 5001 5003; do"), "{s}");
        assert!(s.contains("for p in 5002 5004; do"), "{s}");
        assert!(s.contains("-p $p -n 1M -f m >"), "{s}");
        assert!(s.contains("-p $p -n 1M -f m -R >"), "{s}");
        assert!(s.find("5001") < s.find("5002"), "{s}");
        assert!(s.contains(DONE));
    }
}
