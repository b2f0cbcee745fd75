//! Snapshot identity, the console watch that says when to save, and
//! `krypton snapshot ls|rm`.

use std::hash::{DefaultHasher, Hasher};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use super::boot::VmSpec;
use super::{fail, one_line, status};

/// The hash of everything that shapes a VM: a snapshot restores only onto
/// a VM with the same one. Covers this Krypton build (the executable's size
/// and modification time), the snapshot format, host CPUID, RAM, vCPUs,
/// CPUID hides, kernel and initrd content, the command line, and each
/// device (disks by size, mtime and first 4 KiB).
pub(super) fn identity_key(spec: &VmSpec<'_>) -> Result<u64, String> {
    let mut h = DefaultHasher::new();
    h.write(env!("CARGO_PKG_VERSION").as_bytes());
    h.write_u32(crate::snapshot::VERSION);
    if let Some(m) = std::env::current_exe()
        .ok()
        .and_then(|p| std::fs::metadata(p).ok())
    {
        h.write_u64(m.len());
        hash_mtime(&mut h, &m);
    }
    host_cpuid(&mut h);
    h.write_u64(spec.mem);
    h.write_u8(spec.cpus);
    for &(leaf, sub, reg, bit) in &spec.hide_cpuid {
        h.write_u32(leaf);
        h.write_u32(sub);
        h.write_u8(reg);
        h.write_u8(bit);
    }
    hash_file(&mut h, spec.kernel)?;
    match spec.initrd {
        Some(p) => hash_file(&mut h, p)?,
        None => h.write_u8(0),
    }
    h.write(spec.cmdline.as_deref().unwrap_or("").as_bytes());
    h.write_u8(u8::from(spec.linux64));
    let d = spec.devices;
    for disk in &d.disks {
        h.write_u8(u8::from(disk.read_only));
        hash_disk(&mut h, &disk.path)?;
    }
    // The layer disk by presence only: its size is fixed and the guest has
    // not read the layers when the template is saved.
    h.write_u8(u8::from(d.layers.is_some()));
    // The scratch disk by presence and size only: it is made fresh (empty)
    // for each run at a new path, and its capacity is in the device's
    // config the guest read at boot.
    match &d.scratch {
        Some(p) => {
            let len = std::fs::metadata(p)
                .map_err(|e| format!("scratch disk {}: {e}", p.display()))?
                .len();
            h.write_u8(1);
            h.write_u64(len);
        }
        None => h.write_u8(0),
    }
    // Shares by tag and mode only: the guest has not mounted them when the
    // template is saved, so each run may attach other host directories.
    for s in &d.shares {
        h.write(s.tag.as_bytes());
        h.write_u8(u8::from(s.read_only));
    }
    // The network device by kind (its MTU follows): the backend's socket is
    // the host's side and is connected again on every start.
    h.write_u8(match d.net.mode() {
        crate::net::NetMode::None => 0,
        crate::net::NetMode::Passt => 1,
        crate::net::NetMode::StreamUnix(_) | crate::net::NetMode::StreamTcp(_) => 2,
    });
    h.write_u64(d.cid);
    h.write_u8(u8::from(d.no_rng));
    h.write_u8(u8::from(d.vsock_uds.is_some()));
    Ok(h.finish())
}

fn hash_mtime(h: &mut DefaultHasher, m: &std::fs::Metadata) {
    if let Ok(t) = m.modified()
        && let Ok(d) = t.duration_since(std::time::UNIX_EPOCH)
    {
        h.write_u128(d.as_nanos());
    }
}

fn hash_file(h: &mut DefaultHasher, p: &Path) -> Result<(), String> {
    let m = std::fs::metadata(p).map_err(|e| format!("cannot read {}: {e}", p.display()))?;
    h.write_u64(content_hash(p, &m)?);
    Ok(())
}

/// The file's content hash, remembered per (device, inode, size, mtime) in
/// `snapshots/hashes` so a start does not read a 20 MB kernel every time.
fn content_hash(p: &Path, m: &std::fs::Metadata) -> Result<u64, String> {
    let memo = file_stamp(m).and_then(|s| Some(template_dir()?.join("hashes").join(s)));
    if let Some(v) = memo
        .as_ref()
        .and_then(|f| std::fs::read_to_string(f).ok())
        .and_then(|t| u64::from_str_radix(t.trim(), 16).ok())
    {
        return Ok(v);
    }
    let bytes = std::fs::read(p).map_err(|e| format!("cannot read {}: {e}", p.display()))?;
    let mut c = DefaultHasher::new();
    c.write_usize(bytes.len());
    c.write(&bytes);
    let v = c.finish();
    if let Some(f) = memo
        && let Some(dir) = f.parent()
        && std::fs::create_dir_all(dir).is_ok()
    {
        let tmp = f.with_extension(format!("tmp.{}", std::process::id()));
        if std::fs::write(&tmp, format!("{v:016x}\n")).is_ok() && std::fs::rename(&tmp, &f).is_err()
        {
            let _ = std::fs::remove_file(&tmp);
        }
    }
    Ok(v)
}

#[cfg(unix)]
fn file_stamp(m: &std::fs::Metadata) -> Option<String> {
    use std::os::unix::fs::MetadataExt;
    Some(format!(
        "{:x}-{:x}-{:x}-{:x}.{:x}",
        m.dev(),
        m.ino(),
        m.size(),
        m.mtime(),
        m.mtime_nsec()
    ))
}

#[cfg(not(unix))]
fn file_stamp(_: &std::fs::Metadata) -> Option<String> {
    None
}

/// A disk is identified by size, mtime and its first 4 KiB (partition
/// table or superblock area): rewriting it invalidates the snapshot
/// without reading the whole image on every start.
fn hash_disk(h: &mut DefaultHasher, p: &Path) -> Result<(), String> {
    use std::io::Read;
    let err = |e: std::io::Error| format!("disk {}: {e}", p.display());
    let mut f = std::fs::File::open(p).map_err(err)?;
    let m = f.metadata().map_err(err)?;
    h.write_u64(m.len());
    hash_mtime(h, &m);
    let mut head = Vec::with_capacity(4096);
    Read::by_ref(&mut f)
        .take(4096)
        .read_to_end(&mut head)
        .map_err(err)?;
    h.write(&head);
    Ok(())
}

#[cfg(target_arch = "x86_64")]
fn host_cpuid(h: &mut DefaultHasher) {
    for leaf in [0u32, 1, 7, 0xd, 0x8000_0001] {
        // CPUID exists on every x86_64 CPU; unknown leaves return data of
        // the highest leaf, which is fine for a hash.
        let r = std::arch::x86_64::__cpuid_count(leaf, 0);
        // Leaf 1 EBX holds the APIC ID of the CPU we run on: leave it out.
        let ebx = if leaf == 1 { r.ebx & 0xffff } else { r.ebx };
        for v in [r.eax, ebx, r.ecx, r.edx] {
            h.write_u32(v);
        }
    }
}

#[cfg(not(target_arch = "x86_64"))]
fn host_cpuid(_: &mut DefaultHasher) {}

/// Forwards console output and raises a flag when a line containing the
/// needle appears.
pub(super) struct LineWatch<W: Write> {
    inner: W,
    needle: Vec<u8>,
    line: Vec<u8>,
    seen: Arc<AtomicBool>,
}

impl<W: Write> LineWatch<W> {
    /// Watches for `needle`; the flag is set once it has been seen.
    pub(super) fn new(inner: W, needle: &str) -> (Self, Arc<AtomicBool>) {
        let seen = Arc::new(AtomicBool::new(false));
        let w = LineWatch {
            inner,
            needle: needle.as_bytes().to_vec(),
            line: Vec::new(),
            seen: seen.clone(),
        };
        (w, seen)
    }
}

impl<W: Write> Write for LineWatch<W> {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        for &b in data {
            if b == b'\n' {
                if self
                    .line
                    .windows(self.needle.len())
                    .any(|w| w == self.needle)
                {
                    self.seen.store(true, Ordering::SeqCst);
                }
                self.line.clear();
            } else if self.line.len() < 4096 {
                self.line.push(b);
            }
        }
        self.inner.write_all(data)?;
        Ok(data.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// Where `krypton run` keeps its templates.
pub(super) fn template_dir() -> Option<PathBuf> {
    super::run::asset_dir().map(|d| d.join("snapshots"))
}

/// `krypton snapshot` subcommands.
#[derive(clap::Subcommand, Debug)]
pub enum SnapshotCmd {
    /// Make the template `krypton run` with these options starts from
    /// (boots the VM once; nothing to do if it exists) and print its path.
    Create(Box<super::run::RunArgs>),
    /// List the templates `krypton run` made.
    Ls,
    /// Remove templates: the named ones, or all with --all.
    Rm {
        /// Remove every template.
        #[arg(long)]
        all: bool,
        /// Template file names, as `ls` shows them.
        names: Vec<String>,
    },
}

/// Runs `krypton snapshot`.
pub fn run(cmd: SnapshotCmd) -> ExitCode {
    match run_inner(cmd) {
        Ok(()) => ExitCode::from(status::OK),
        Err(e) => fail(&e),
    }
}

fn run_inner(cmd: SnapshotCmd) -> Result<(), String> {
    let dir = template_dir().ok_or("no cache directory (set KRYPTON_CACHE)")?;
    let list = || -> Vec<PathBuf> {
        let mut v: Vec<PathBuf> = std::fs::read_dir(&dir)
            .map(|rd| {
                rd.filter_map(Result::ok)
                    .map(|e| e.path())
                    .filter(|p| p.extension().is_some_and(|x| x == "snap"))
                    .collect()
            })
            .unwrap_or_default();
        v.sort();
        v
    };
    match cmd {
        SnapshotCmd::Create(args) => super::run::make_template(*args),
        SnapshotCmd::Ls => {
            let mut out = std::io::stdout().lock();
            for p in list() {
                let size = std::fs::metadata(&p).map(|m| m.len()).unwrap_or(0);
                let what = match crate::snapshot::Snapshot::open(&p) {
                    Ok(s) => format!("{} MiB RAM, {} vCPU", s.header.mem_mib, s.header.cpus),
                    Err(e) => format!("unusable: {}", one_line(&e)),
                };
                let name = p.file_name().map(|n| n.to_string_lossy().into_owned());
                let _ = writeln!(
                    out,
                    "{}\t{} MiB on disk\t{what}",
                    name.unwrap_or_default(),
                    size >> 20
                );
            }
            Ok(())
        }
        SnapshotCmd::Rm { all, names } => {
            if all != names.is_empty() {
                return Err("give template names or --all, not both or neither".into());
            }
            let targets: Vec<PathBuf> = if all {
                list()
            } else {
                names
                    .iter()
                    .map(|n| {
                        if n.contains('/') || n.contains('\\') || !n.ends_with(".snap") {
                            Err(format!(
                                "'{n}' is not a template name (see krypton snapshot ls)"
                            ))
                        } else {
                            Ok(dir.join(n))
                        }
                    })
                    .collect::<Result<_, _>>()?
            };
            for p in targets {
                std::fs::remove_file(&p).map_err(|e| format!("{}: {e}", p.display()))?;
            }
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scratch_counts_by_presence_and_size_not_path() {
        let dir = std::env::temp_dir().join(format!("krypton-ident-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let kernel = dir.join("kernel");
        std::fs::write(&kernel, b"not really a kernel").expect("kernel");
        let (a, b, c) = (dir.join("a"), dir.join("b"), dir.join("c"));
        for (p, len) in [(&a, 16u64 << 20), (&b, 16 << 20), (&c, 32 << 20)] {
            std::fs::File::create(p)
                .and_then(|f| f.set_len(len))
                .expect("scratch");
        }
        std::fs::write(&b, b"other content").expect("write");
        std::fs::File::options()
            .write(true)
            .open(&b)
            .and_then(|f| f.set_len(16 << 20))
            .expect("len");
        let key = |scratch: Option<&PathBuf>| {
            let devices = super::super::devices::DeviceArgs {
                layers: Some(Vec::new()),
                scratch: scratch.cloned(),
                ..Default::default()
            };
            let spec = VmSpec {
                kernel: &kernel,
                initrd: None,
                cmdline: None,
                mem: 256,
                cpus: 1,
                serial: crate::machine::SerialOut::Null,
                hide_cpuid: Vec::new(),
                linux64: false,
                devices: &devices,
            };
            identity_key(&spec).expect("key")
        };
        assert_eq!(
            key(Some(&a)),
            key(Some(&b)),
            "path and content do not count"
        );
        assert_ne!(key(Some(&a)), key(Some(&c)), "the size counts");
        assert_ne!(key(None), key(Some(&a)), "presence counts");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn line_watch_sees_needles_split_across_writes() {
        let (mut w, seen) = LineWatch::new(Vec::new(), "agent: listening");
        w.write_all(b"boot...\nkrypton-agent: liste")
            .expect("write");
        assert!(!seen.load(Ordering::SeqCst));
        w.write_all(b"ning on vsock\n").expect("write");
        assert!(seen.load(Ordering::SeqCst));
        assert_eq!(w.inner, b"boot...\nkrypton-agent: listening on vsock\n");
    }
}
