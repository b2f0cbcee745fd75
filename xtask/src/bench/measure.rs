//! Process timing and /proc/PID/smaps accounting for the benchmark.

use anyhow::{Context, Result, bail};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Exit status both VMMs give for a debug-exit write of 0: (0 << 1) | 1.
const EXPECTED_STATUS: i32 = 1;

/// Median, min and max in milliseconds.
#[derive(Debug, Clone, Copy)]
pub struct Stats {
    pub median: f64,
    pub min: f64,
    pub max: f64,
}

impl Stats {
    /// Statistics of `samples` (milliseconds); zeros if empty.
    pub fn of(samples: &[f64]) -> Stats {
        let mut v = samples.to_vec();
        v.sort_by(f64::total_cmp);
        if v.is_empty() {
            return Stats {
                median: 0.0,
                min: 0.0,
                max: 0.0,
            };
        }
        let n = v.len();
        let median = if n % 2 == 1 {
            v[n / 2]
        } else {
            (v[n / 2 - 1] + v[n / 2]) / 2.0
        };
        Stats {
            median,
            min: v[0],
            max: v[n - 1],
        }
    }
}

/// Memory of an idling VMM, in KiB.
#[derive(Debug, Clone, Copy)]
pub struct Overhead {
    /// RSS of every mapping except guest RAM.
    pub outside_kib: u64,
    /// Private (not shared with other processes) part of that.
    pub private_outside_kib: u64,
    /// RSS of the guest RAM mapping(s).
    pub ram_kib: u64,
}

/// How to start one VMM on a stub ELF.
#[derive(Debug, Clone)]
pub enum VmmCmd {
    /// `krypton boot`.
    Krypton(PathBuf),
    /// `qemu-system-x86_64 -M microvm`.
    Qemu(String),
}

impl VmmCmd {
    /// Short name.
    pub fn name(&self) -> &'static str {
        match self {
            VmmCmd::Krypton(_) => "krypton",
            VmmCmd::Qemu(_) => "qemu",
        }
    }

    fn command(&self, elf: &Path, mem_mib: u64) -> Command {
        match self {
            VmmCmd::Krypton(bin) => {
                let mut c = Command::new(bin);
                c.arg("boot").arg("--kernel").arg(elf);
                c.args(["--serial", "none", "--mem", &mem_mib.to_string()]);
                c
            }
            VmmCmd::Qemu(bin) => {
                let mut c = Command::new(bin);
                c.args([
                    "-M",
                    "microvm",
                    "-accel",
                    "kvm",
                    "-m",
                    &format!("{mem_mib}M"),
                    "-kernel",
                ]);
                c.arg(elf);
                c.args([
                    "-device",
                    "isa-debug-exit,iobase=0xf4,iosize=4",
                    "-nodefaults",
                    "-nographic",
                    "-no-reboot",
                ]);
                c
            }
        }
    }

    /// Milliseconds from spawn to exit; the guest must exit through
    /// debug-exit (status 1), otherwise this is an error.
    pub fn time_to_exit(&self, elf: &Path, mem_mib: u64) -> Result<f64> {
        let mut c = self.command(elf, mem_mib);
        c.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let t = Instant::now();
        let out = c
            .output()
            .with_context(|| format!("starting {}", self.name()))?;
        let ms = t.elapsed().as_secs_f64() * 1000.0;
        if out.status.code() != Some(EXPECTED_STATUS) {
            bail!(
                "{} exited with {} instead of {EXPECTED_STATUS}: {}",
                self.name(),
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(ms)
    }

    /// Starts the idle guest, waits for the VMM's RSS to settle, reads its
    /// smaps, then kills it.
    pub fn idle_overhead(&self, elf: &Path, mem_mib: u64) -> Result<Overhead> {
        let mut child = self
            .command(elf, mem_mib)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| format!("starting {}", self.name()))?;
        let pid = child.id();
        let result = settle_and_measure(pid, mem_mib, &mut child);
        let _ = child.kill();
        let _ = child.wait();
        result
    }
}

fn settle_and_measure(pid: u32, mem_mib: u64, child: &mut std::process::Child) -> Result<Overhead> {
    let mut last = None;
    for _ in 0..20 {
        std::thread::sleep(Duration::from_millis(250));
        if let Some(st) = child.try_wait()? {
            bail!("exited early with {st}");
        }
        let smaps =
            std::fs::read_to_string(format!("/proc/{pid}/smaps")).context("reading smaps")?;
        let m = overhead(&smaps, mem_mib << 10);
        if last.is_some_and(|l: Overhead| l.outside_kib == m.outside_kib) {
            return Ok(m);
        }
        last = Some(m);
    }
    last.context("no measurement")
}

/// Sums an smaps text: mappings at least `ram_kib` large count as guest RAM.
pub fn overhead(smaps: &str, ram_kib: u64) -> Overhead {
    let mut o = Overhead {
        outside_kib: 0,
        private_outside_kib: 0,
        ram_kib: 0,
    };
    let mut is_ram = false;
    for line in smaps.lines() {
        let mut f = line.split_whitespace();
        let Some(key) = f.next() else { continue };
        if !key.ends_with(':') {
            // Mapping header: "start-end perms offset dev inode [path]".
            is_ram = key
                .split_once('-')
                .and_then(|(a, b)| {
                    Some((
                        u64::from_str_radix(a, 16).ok()?,
                        u64::from_str_radix(b, 16).ok()?,
                    ))
                })
                .is_some_and(|(a, b)| (b - a) >> 10 >= ram_kib);
            continue;
        }
        let kib = f.next().and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
        match (key, is_ram) {
            ("Rss:", true) => o.ram_kib += kib,
            ("Rss:", false) => o.outside_kib += kib,
            ("Private_Clean:" | "Private_Dirty:", false) => o.private_outside_kib += kib,
            _ => {}
        }
    }
    o
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stats_of_odd_and_even_samples() {
        let s = Stats::of(&[3.0, 1.0, 2.0]);
        assert_eq!((s.median, s.min, s.max), (2.0, 1.0, 3.0));
        assert_eq!(Stats::of(&[4.0, 1.0, 2.0, 3.0]).median, 2.5);
    }

    #[test]
    fn smaps_excludes_ram_sized_mappings() {
        let smaps = "\
55d0-55e0 r-xp 00000000 08:01 1 /usr/bin/krypton
Rss:                  40 kB
Private_Clean:        30 kB
Private_Dirty:         0 kB
7f0000000000-7f0010000000 rw-p 00000000 00:00 0
Rss:                1024 kB
Private_Dirty:      1024 kB
7f0010000000-7f0010100000 rw-p 00000000 00:00 0
Rss:                 100 kB
Private_Dirty:        60 kB
";
        let o = overhead(smaps, 256 << 10);
        assert_eq!(o.outside_kib, 140);
        assert_eq!(o.private_outside_kib, 90);
        assert_eq!(o.ram_kib, 1024);
    }
}
