//! Host directories through virtio-fs (issue 13), inside the real VM:
//! `krypton run -v HOST:/a -v HOST:/b:ro`, the guest kernel's own virtiofs
//! driver against the VMM's in-process device.
//!
//! Under the emulated guest kernel (kvm_pvm) every exec costs seconds, so
//! the guest side is one small static C program (`fstool.c`, built here
//! with `cc -static`, run from the read-only share) that makes every check
//! and prints `key=value` lines; busybox adds the checksum of the large
//! file. The host test reads those lines and then looks at the shared
//! directories itself. One VM run in all (from the template snapshot).

use std::collections::HashMap;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::Command;

use anyhow::{Context, Result, bail, ensure};

use crate::support::{Scratch, noise, run, sha256};

/// Size of the file the guest reads and checksums. The issue asks for
/// 1 GiB; see the README for what that costs under the emulated guest
/// kernel here.
const BIG_MIB: usize = 64;

/// Entries the guest lists in one directory.
const MANY: usize = 10_000;

/// The mtime the guest sets (2001-02-03 04:05:06 UTC).
const TOUCHED: i64 = 981_173_106;

const FSTOOL_C: &str = include_str!("fstool.c");

/// Builds the helper as a static binary at `out`.
fn build_fstool(dir: &Path, out: &Path) -> Result<()> {
    let src = dir.join("fstool.c");
    std::fs::write(&src, FSTOOL_C)?;
    let o = Command::new("cc")
        .args(["-static", "-Os", "-o"])
        .arg(out)
        .arg(&src)
        .output()
        .context("running cc (the C compiler Rust links with)")?;
    ensure!(
        o.status.success(),
        "cc -static failed (is libc6-dev installed?): {}",
        String::from_utf8_lossy(&o.stderr)
    );
    Ok(())
}

/// The two shares every run uses: `a` read-write at /a, `b` read-only at
/// /b (holding the helper), and `outside`, a sibling neither shares.
struct Shares {
    scratch: Scratch,
}

impl Shares {
    fn new(name: &str) -> Result<Self> {
        let scratch = Scratch::new(name)?;
        for d in ["a", "b", "outside"] {
            std::fs::create_dir(scratch.0.join(d))?;
        }
        std::fs::write(scratch.0.join("outside/secret"), "host-secret\n")?;
        std::fs::write(scratch.0.join("b/ro.txt"), "read-only-share\n")?;
        build_fstool(&scratch.0, &scratch.0.join("b/fstool"))?;
        Ok(Shares { scratch })
    }

    fn path(&self, rel: &str) -> std::path::PathBuf {
        self.scratch.0.join(rel)
    }

    /// `krypton run -v a:/a -v b:/b:ro -- sh -c SCRIPT`.
    fn run(&self, script: &str) -> Result<std::process::Output> {
        let a = format!("{}:/a", self.path("a").display());
        let b = format!("{}:/b:ro", self.path("b").display());
        run(
            &["run", "-v", &a, "-v", &b, "--", "sh", "-c", script],
            None,
            &[],
        )
    }

    /// What is outside the shares, to compare before and after.
    fn outside(&self) -> Result<Vec<(String, String)>> {
        let mut v = Vec::new();
        for e in std::fs::read_dir(self.path("outside"))? {
            let e = e?;
            let body = std::fs::read_to_string(e.path()).unwrap_or_default();
            v.push((e.file_name().to_string_lossy().into_owned(), body));
        }
        v.sort();
        Ok(v)
    }
}

fn pairs(out: &str) -> HashMap<String, String> {
    out.lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .collect()
}

fn want(p: &HashMap<String, String>, key: &str, expected: &str, out: &str) -> Result<()> {
    match p.get(key) {
        Some(v) if v == expected => Ok(()),
        got => bail!("{key}: got {got:?}, want {expected:?}\nguest output:\n{out}"),
    }
}

fn want_has(p: &HashMap<String, String>, key: &str, part: &str, out: &str) -> Result<()> {
    match p.get(key) {
        Some(v) if v.contains(part) => Ok(()),
        got => bail!("{key}: got {got:?}, want it to contain {part:?}\nguest output:\n{out}"),
    }
}

/// Host-side set-up of the run: inputs in `a`, links to the outside
/// planted on the host.
fn plant(s: &Shares, out: &str) -> Result<String> {
    std::fs::write(s.path("a/host.txt"), "from-host\n")?;
    set_xattr(&s.path("a/host.txt"), "user.fromhost", "host-value")?;
    let big = s.path("a/big.bin");
    std::fs::write(&big, noise(BIG_MIB << 20, 0x5eed_f00d_1234_5678))?;
    std::fs::create_dir(s.path("a/many"))?;
    for i in 0..MANY {
        std::fs::File::create(s.path(&format!("a/many/e{i}")))?;
    }
    std::fs::write(s.path("a/inside"), "inside\n")?;
    std::fs::write(s.path("a/input"), "fail\n")?;
    let link =
        |target: &str, name: &str| std::os::unix::fs::symlink(target, s.path(&format!("a/{name}")));
    link("../outside/secret", "planted_rel")?;
    link(&format!("{out}/secret"), "planted_abs")?;
    link(&format!("/proc/self/root{out}/secret"), "planted_proc")?;
    link("../outside", "planted_dir")?;
    sha256(&big)
}

/// Everything through `-v` in one run:
/// - data: a host file read in the guest, a guest file seen on the host,
///   [`BIG_MIB`] MiB read with its sha256 compared;
/// - metadata: mkdir, rename over an existing file, unlink of an open file
///   (still readable through its fd), a 10,000-entry readdir, hardlink
///   counts, chmod, chown as root, utimes, symlink and readlink, xattrs
///   (set, get, list, remove, and one set on the host);
/// - `:ro`: create, open for writing, mkdir, unlink, chmod, utimes and
///   setxattr give EROFS, also after the container lifts the guest's own
///   MS_RDONLY (remount), so the host enforces it; the share is unchanged;
///   two shares at once;
/// - escapes: `..`, absolute and relative symlinks made by the guest, links
///   to the outside planted on the host (relative, absolute, through
///   /proc/self/root, to a directory), a hardlink to a planted link, a
///   hardlink from the guest's root, a rename out of the share, a /proc
///   fd magic link. The guest kernel resolves links in its own namespace,
///   so none reaches the host file outside; it stays as it was. (The
///   device's own refusals are the host-side suites,
///   `devices/src/virtio/fs/*/escape_tests.rs`.)
/// - the harness use: the run ends by exec'ing the host-built static
///   binary from the read-only share; its exit status 3 is krypton's.
pub fn share_data_metadata_ro_escapes_harness() -> Result<()> {
    let s = Shares::new("fs")?;
    let out = s
        .path("outside")
        .to_str()
        .context("non-UTF-8 scratch path")?
        .to_owned();
    let big_sum = plant(&s, &out)?;
    let ro_before = std::fs::metadata(s.path("b/ro.txt"))?;
    let outside_before = s.outside()?;
    let script = format!(
        "/b/fstool check /a /b {out}\n\
         read t0 x < /proc/uptime\n\
         echo \"big_sum=$(sha256sum /a/big.bin)\"\n\
         read t1 x < /proc/uptime\n\
         echo \"big_secs=$t0 $t1\"\n\
         exec /b/fstool test /a/input\n"
    );
    let o = s.run(&script)?;
    let text = String::from_utf8_lossy(&o.stdout).into_owned();
    let err = String::from_utf8_lossy(&o.stderr);
    ensure!(
        o.status.code() == Some(3),
        "status {:?}, want 3 (the harness binary's)\nstdout:\n{text}\nstderr:\n{err}",
        o.status
    );
    let p = pairs(&text);
    want(&p, "done", "1", &text)?;
    eprintln!(
        "fs e2e: guest read {BIG_MIB} MiB (uptime before, after): {:?}",
        p.get("big_secs")
    );
    ensure!(
        text.ends_with("harness read: fail\n"),
        "no harness line at the end:\n{text}"
    );

    // Data and metadata, as the guest saw them.
    for (k, v) in [
        ("host_txt", "from-host"),
        ("guest_write", "ok"),
        ("many", &MANY.to_string()),
        ("mkdir", "ok"),
        ("mkdir_isdir", "1"),
        ("rename", "ok"),
        ("rename_r2", "one"),
        ("rename_r1", "No such file or directory"),
        ("unlink", "ok"),
        ("unlink_open", "still-open"),
        ("unlink_gone", "1"),
        ("link", "ok"),
        ("nlink", "3"),
        ("nlink_after", "2"),
        ("chmod", "ok"),
        ("chmod_mode", "751"),
        ("chown", "ok"),
        ("chown_ids", "1234:5678"),
        ("utimes", "ok"),
        ("utimes_mtime", &TOUCHED.to_string()),
        ("symlink", "ok"),
        ("readlink", "target-name"),
        ("host_xattr", "host-value"),
        ("setxattr", "ok"),
        ("removexattr", "ok"),
        ("xattr_get", "guest-value"),
        ("xattr_list", "user.k,"),
    ] {
        want(&p, k, v, &text)?;
    }
    want_has(&p, "big_sum", &big_sum, &text)?;
    for op in [
        "create", "write", "mkdir", "unlink", "chmod", "utimes", "setxattr",
    ] {
        want(&p, &format!("ro_{op}"), "Read-only file system", &text)?;
    }
    if p.get("remount_rw").is_some_and(|v| v == "ok") {
        for op in [
            "create", "write", "mkdir", "unlink", "chmod", "utimes", "setxattr",
        ] {
            want(&p, &format!("rw_ro_{op}"), "Read-only file system", &text)?;
        }
    } else {
        eprintln!(
            "fs e2e: the container could not remount /b read-write ({:?}); the host's own EROFS is shown by the unit tests only",
            p.get("remount_rw")
        );
    }

    // Escapes: nothing reached the host file outside.
    ensure!(
        !text.contains("host-secret"),
        "the guest read the host file outside:\n{text}"
    );
    for k in [
        "esc_dotdot",
        "esc_dotdot_host",
        "esc_planted_rel",
        "esc_planted_abs",
        "esc_planted_proc",
        "esc_planted_dir",
        "esc_g_abs",
        "esc_g_rel",
        "esc_hardlink_read",
    ] {
        want(&p, k, "No such file or directory", &text)?;
    }
    want(&p, "esc_proc_fd", "/a/inside", &text)?;
    want(&p, "esc_hardlink_cross", "Invalid cross-device link", &text)?;
    want(&p, "esc_rename_out", "Invalid cross-device link", &text)?;
    ensure!(
        s.outside()? == outside_before,
        "the directory outside the shares changed"
    );
    for (name, target) in [
        ("g_abs", format!("{out}/secret")),
        ("g_rel", "../outside/secret".to_owned()),
        ("g_magic", "/proc/self/fd/3".to_owned()),
    ] {
        let got = std::fs::read_link(s.path(&format!("a/{name}")))?;
        ensure!(got == Path::new(&target), "{name} -> {got:?} on the host");
    }

    // What the host sees.
    let a = |rel: &str| s.path(&format!("a/{rel}"));
    ensure!(
        std::fs::read_to_string(a("guest.txt"))? == "from-guest\n",
        "guest.txt"
    );
    ensure!(a("d1").is_dir(), "d1 is not a directory on the host");
    ensure!(
        std::fs::read_to_string(a("r2"))? == "one\n" && !a("r1").exists(),
        "rename"
    );
    ensure!(!a("u").exists(), "u is still on the host");
    ensure!(std::fs::metadata(a("h1"))?.nlink() == 2, "h1 link count");
    ensure!(
        std::fs::metadata(a("m"))?.permissions().mode() & 0o7777 == 0o751,
        "mode of m"
    );
    let own = std::fs::metadata(a("o"))?;
    ensure!((own.uid(), own.gid()) == (1234, 5678), "owner of o");
    ensure!(std::fs::metadata(a("t"))?.mtime() == TOUCHED, "mtime of t");
    ensure!(
        std::fs::read_link(a("sl"))? == Path::new("target-name"),
        "sl"
    );
    ensure!(
        get_xattr(&a("x"), "user.k")? == b"guest-value",
        "xattr of x"
    );
    ensure!(
        std::fs::read_to_string(a("inside"))? == "inside\n",
        "a/inside changed"
    );
    let b: Vec<_> = std::fs::read_dir(s.path("b"))?
        .map(|e| e.map(|e| e.file_name()))
        .collect::<Result<_, _>>()?;
    ensure!(b.len() == 2, "the read-only share changed: {b:?}");
    let ro_after = std::fs::metadata(s.path("b/ro.txt"))?;
    ensure!(
        ro_after.mode() == ro_before.mode() && ro_after.mtime() == ro_before.mtime(),
        "ro.txt changed"
    );
    Ok(())
}

fn set_xattr(path: &Path, name: &str, value: &str) -> Result<()> {
    let p = std::ffi::CString::new(path.as_os_str().as_encoded_bytes())?;
    let n = std::ffi::CString::new(name)?;
    // SAFETY: valid C strings and a buffer of the given length.
    let r = unsafe {
        libc::setxattr(
            p.as_ptr(),
            n.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            0,
        )
    };
    ensure!(r == 0, "setxattr: {}", std::io::Error::last_os_error());
    Ok(())
}

fn get_xattr(path: &Path, name: &str) -> Result<Vec<u8>> {
    let p = std::ffi::CString::new(path.as_os_str().as_encoded_bytes())?;
    let n = std::ffi::CString::new(name)?;
    let mut buf = vec![0u8; 256];
    // SAFETY: valid C strings; the buffer is writable for its length.
    let r = unsafe { libc::getxattr(p.as_ptr(), n.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    ensure!(r >= 0, "getxattr: {}", std::io::Error::last_os_error());
    buf.truncate(r as usize);
    Ok(buf)
}
