//! Image cases (issue 12): an OCI image the test builds from crafted
//! layers (whiteouts, an opaque directory, hardlinks, a symlink chain,
//! devices, a fifo, setuid and sticky modes, a 200-character name, an empty
//! layer, 127 layers in all), loaded with `krypton load` into a private store and run as
//! `krypton run IMAGE`: the tree the container sees is compared with the
//! layers' union, and the image config (Cmd, Env, WorkingDir, User) applies.

use std::collections::BTreeSet;
use std::fs;
use std::os::unix::fs::{PermissionsExt, symlink};
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail, ensure};

use crate::support::{Scratch, run, sha256};

const LONG: &str = "n0123456789012345678901234567890123456789012345678901234567890123456789012345678901234567890123456789012345678901234567890123456789012345678901234567890123456789012345678901234567890123456789012345678";

fn sh(cmd: &mut Command) -> Result<()> {
    let o = cmd.output().with_context(|| format!("{cmd:?}"))?;
    ensure!(
        o.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    Ok(())
}

fn mknod(path: &Path, mode: libc::mode_t, dev: libc::dev_t) -> Result<()> {
    let p = std::ffi::CString::new(path.as_os_str().as_encoded_bytes())?;
    // SAFETY: a valid C string.
    let r = unsafe { libc::mknod(p.as_ptr(), mode, dev) };
    ensure!(
        r == 0,
        "mknod {}: {}",
        path.display(),
        std::io::Error::last_os_error()
    );
    // mknod applies the umask; the mode under test is the one asked for.
    fs::set_permissions(path, fs::Permissions::from_mode(mode & 0o7777))?;
    Ok(())
}

/// The bottom layer: busybox, users, files the next layer removes, and
/// every kind of node.
fn base_layer(t: &Path) -> Result<()> {
    for d in [
        "bin",
        "etc",
        "data",
        "home/app",
        "usr/share",
        "opt",
        "dev2",
        "sticky",
        "sbin",
    ] {
        fs::create_dir_all(t.join(d))?;
    }
    fs::copy("/bin/busybox", t.join("bin/busybox"))?;
    for a in [
        "sh", "cat", "ls", "id", "stat", "find", "sort", "test", "echo", "readlink", "pwd", "wc",
    ] {
        symlink("busybox", t.join("bin").join(a))?;
    }
    fs::write(
        t.join("etc/passwd"),
        "root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000:App:/home/app:/bin/sh\n",
    )?;
    fs::write(
        t.join("etc/group"),
        "root:x:0:\nstaff:x:50:app\napp:x:1000:\n",
    )?;
    fs::write(t.join("etc/gone"), "lower\n")?;
    fs::write(t.join("data/a"), "a\n")?;
    fs::write(t.join("usr/share/hl"), "linked\n")?;
    fs::hard_link(t.join("usr/share/hl"), t.join("opt/hl"))?;
    symlink("l2", t.join("opt/l1"))?;
    symlink("/etc/top", t.join("opt/l2"))?;
    fs::write(t.join("sbin/suid"), "#!/bin/sh\n")?;
    fs::set_permissions(t.join("sbin/suid"), fs::Permissions::from_mode(0o4755))?;
    fs::set_permissions(t.join("sticky"), fs::Permissions::from_mode(0o1777))?;
    mknod(
        &t.join("dev2/null"),
        libc::S_IFCHR | 0o666,
        libc::makedev(1, 3),
    )?;
    mknod(&t.join("dev2/fifo"), libc::S_IFIFO | 0o644, 0)?;
    fs::write(t.join("opt").join(LONG), "long\n")?;
    std::os::unix::fs::chown(t.join("home/app"), Some(1000), Some(1000))?;
    Ok(())
}

/// The second layer: an OCI whiteout, an opaque directory, new files.
fn top_layer(t: &Path) -> Result<()> {
    fs::create_dir_all(t.join("etc"))?;
    fs::create_dir_all(t.join("data"))?;
    fs::write(t.join("etc/.wh.gone"), "")?;
    fs::write(t.join("data/.wh..wh..opq"), "")?;
    fs::write(t.join("data/b"), "b\n")?;
    fs::write(t.join("etc/top"), "top\n")?;
    Ok(())
}

/// Every path under `t` (relative, "/"-prefixed), whiteout files left out.
fn tree(t: &Path, prefix: &str, out: &mut BTreeSet<String>) -> Result<()> {
    for e in fs::read_dir(t)? {
        let e = e?;
        let name = e.file_name().to_string_lossy().into_owned();
        if name.starts_with(".wh.") {
            continue;
        }
        let p = format!("{prefix}/{name}");
        if e.file_type()?.is_dir() {
            tree(&e.path(), &p, out)?;
        }
        out.insert(p);
    }
    Ok(())
}

struct Blob {
    digest: String,
    size: u64,
}

fn blob(dir: &Path, file: &Path) -> Result<Blob> {
    let hex = sha256(file)?;
    let size = fs::metadata(file)?.len();
    let blobs = dir.join("blobs/sha256");
    fs::create_dir_all(&blobs)?;
    fs::copy(file, blobs.join(&hex))?;
    Ok(Blob {
        digest: format!("sha256:{hex}"),
        size,
    })
}

/// An OCI image layout at `dir` with the layer trees (bottom first) and an
/// empty layer on top, tagged `name`.
fn oci_layout(work: &Path, dir: &Path, layers: &[PathBuf], name: &str) -> Result<()> {
    let mut descs = Vec::new();
    let mut diff_ids = Vec::new();
    let empty = work.join("empty");
    fs::create_dir_all(&empty)?;
    for (i, t) in layers.iter().chain([&empty]).enumerate() {
        let tar = work.join(format!("layer{i}.tar"));
        sh(Command::new("tar")
            .args(["--numeric-owner", "--xattrs", "--format=pax", "-C"])
            .arg(t)
            .arg("-cf")
            .arg(&tar)
            .arg("."))?;
        diff_ids.push(format!("\"sha256:{}\"", sha256(&tar)?));
        sh(Command::new("gzip").arg("-n").arg("-f").arg(&tar))?;
        let b = blob(dir, &tar.with_extension("tar.gz"))?;
        descs.push(format!(
            "{{\"mediaType\":\"application/vnd.oci.image.layer.v1.tar+gzip\",\"digest\":\"{}\",\"size\":{}}}",
            b.digest, b.size
        ));
    }
    let config = format!(
        "{{\"architecture\":\"amd64\",\"os\":\"linux\",\"config\":{{\"Env\":[\"PATH=/bin\",\"IMG=from-config\"],\
         \"Cmd\":[\"sh\",\"-c\",\"echo default-cmd; id -un; pwd\"],\"WorkingDir\":\"/data\",\"User\":\"app\"}},\
         \"rootfs\":{{\"type\":\"layers\",\"diff_ids\":[{}]}}}}",
        diff_ids.join(",")
    );
    finish_layout(work, dir, &config, &descs, name)
}

/// Writes the config blob, the manifest over `layers` (descriptor JSON
/// objects), `index.json` naming it `name`, and `oci-layout`.
fn finish_layout(
    work: &Path,
    dir: &Path,
    config: &str,
    layers: &[String],
    name: &str,
) -> Result<()> {
    let cfg_file = work.join("config.json");
    fs::write(&cfg_file, config)?;
    let c = blob(dir, &cfg_file)?;
    let manifest = format!(
        "{{\"schemaVersion\":2,\"mediaType\":\"application/vnd.oci.image.manifest.v1+json\",\
         \"config\":{{\"mediaType\":\"application/vnd.oci.image.config.v1+json\",\"digest\":\"{}\",\"size\":{}}},\
         \"layers\":[{}]}}",
        c.digest,
        c.size,
        layers.join(",")
    );
    let m_file = work.join("manifest.json");
    fs::write(&m_file, manifest)?;
    let m = blob(dir, &m_file)?;
    fs::write(
        dir.join("index.json"),
        format!(
            "{{\"schemaVersion\":2,\"manifests\":[{{\"mediaType\":\"application/vnd.oci.image.manifest.v1+json\",\
             \"digest\":\"{}\",\"size\":{},\"annotations\":{{\"org.opencontainers.image.ref.name\":\"{name}\"}}}}]}}",
            m.digest, m.size
        ),
    )?;
    fs::write(dir.join("oci-layout"), "{\"imageLayoutVersion\":\"1.0.0\"}")?;
    Ok(())
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Builds, loads and runs the crafted image; two container runs.
pub fn crafted_image_runs_with_its_config() -> Result<()> {
    if !Path::new("/bin/busybox").exists() {
        bail!("/bin/busybox is missing (apt-get install busybox-static)");
    }
    let s = Scratch::new("e2e-image")?;
    let home = s.0.join("home");
    let (base, top) = (s.0.join("base"), s.0.join("top"));
    base_layer(&base)?;
    top_layer(&top)?;
    // 124 one-file layers: with base, top and the empty one, 127 (docker's
    // limit), each its own window of the layer disk and loop device.
    let mut trees = vec![base.clone(), top.clone()];
    for i in 0..124 {
        let t = s.0.join(format!("small{i}"));
        fs::create_dir_all(t.join("layers"))?;
        fs::write(t.join("layers").join(i.to_string()), format!("{i}\n"))?;
        trees.push(t);
    }
    let layout = s.0.join("layout");
    oci_layout(&s.0, &layout, &trees, "e2e-crafted:1")?;
    let home_s = home.to_string_lossy().into_owned();
    let env = [("KRYPTON_HOME", home_s.as_str())];
    let layout_s = layout.to_string_lossy().into_owned();
    let o = run(&["load", "-i", &layout_s], None, &env)?;
    ensure!(
        o.status.success(),
        "krypton load: {:?} {}",
        o.status,
        text(&o.stderr)
    );

    // The image's own Cmd, as its User in its WorkingDir.
    let o = run(&["run", "e2e-crafted:1"], None, &env)?;
    ensure!(
        o.status.code() == Some(0),
        "{:?}: {}",
        o.status,
        text(&o.stderr)
    );
    ensure!(
        text(&o.stdout) == "default-cmd\napp\n/data\n",
        "default command: {:?}",
        text(&o.stdout)
    );

    // The tree: the union of the layers without what the top one removed.
    let mut want = BTreeSet::new();
    for t in &trees {
        tree(t, "", &mut want)?;
    }
    want.remove("/etc/gone");
    want.remove("/data/a");
    let script = format!(
        "echo $IMG; id; cat /etc/top; test -e /etc/gone || echo gone-hidden; ls /data; \
         stat -c '%a %h %F %t:%T %U' /sbin/suid /sticky /opt/hl /dev2/null /dev2/fifo /home/app; \
         readlink /opt/l1; cat /opt/l1; cat /opt/{LONG}; cat /layers/0 /layers/123; echo ==; \
         find / -xdev | sort"
    );
    let o = run(
        &["run", "-u", "0", "e2e-crafted:1", "--", "sh", "-c", &script],
        None,
        &env,
    )?;
    let out = text(&o.stdout);
    ensure!(
        o.status.code() == Some(0),
        "{:?}: {}{out}",
        o.status,
        text(&o.stderr)
    );
    let (head, listing) = out.split_once("==\n").context("no listing")?;
    let expect_head = "from-config\nuid=0(root) gid=0(root)\ntop\ngone-hidden\nb\n\
        4755 1 regular file 0:0 root\n1777 2 directory 0:0 root\n644 2 regular file 0:0 root\n\
        666 1 character special file 1:3 root\n644 1 fifo 0:0 root\n755 2 directory 0:0 app\n\
        l2\ntop\nlong\n0\n123\n";
    ensure!(head == expect_head, "got:\n{head}\nwant:\n{expect_head}");
    let got: BTreeSet<String> = listing.lines().map(str::to_owned).collect();
    // What the agent adds to every root: mount points and resolv.conf.
    let added: BTreeSet<String> = ["/", "/proc", "/sys", "/dev", "/tmp", "/etc/resolv.conf"]
        .into_iter()
        .map(str::to_owned)
        .collect();
    let missing: Vec<&String> = want.difference(&got).collect();
    let extra: Vec<&String> = got
        .difference(&want)
        .filter(|p| !added.contains(*p))
        .collect();
    ensure!(
        missing.is_empty() && extra.is_empty(),
        "tree differs: missing {missing:?}, extra {extra:?}"
    );
    Ok(())
}

/// A one-layer OCI image layout (uncompressed layer) of `tar`, tagged
/// `name`, with a Debian-like config.
fn single_layer_layout(work: &Path, dir: &Path, tar: &Path, name: &str) -> Result<()> {
    let diff_id = sha256(tar)?;
    let l = blob(dir, tar)?;
    let config = format!(
        "{{\"architecture\":\"amd64\",\"os\":\"linux\",\"config\":{{\"Env\":\
         [\"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin\"],\"Cmd\":[\"bash\"]}},\
         \"rootfs\":{{\"type\":\"layers\",\"diff_ids\":[\"sha256:{diff_id}\"]}}}}"
    );
    let layer = format!(
        "{{\"mediaType\":\"application/vnd.oci.image.layer.v1.tar\",\"digest\":\"{}\",\"size\":{}}}",
        l.digest, l.size
    );
    finish_layout(work, dir, &config, &[layer], name)
}

/// A docker-registry child on 127.0.0.1, killed on drop.
struct LocalRegistry(std::process::Child);

impl Drop for LocalRegistry {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts Debian's docker-registry on a free port with storage in `dir`.
fn local_registry(dir: &Path) -> Result<(LocalRegistry, String)> {
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let addr = format!("127.0.0.1:{port}");
    let cfg = dir.join("registry.yml");
    fs::write(
        &cfg,
        format!(
            "version: 0.1\nlog:\n  level: error\n  accesslog:\n    disabled: true\nstorage:\n  \
             filesystem:\n    rootdirectory: {}\nhttp:\n  addr: {addr}\n",
            dir.join("registry").display()
        ),
    )?;
    let child = Command::new("docker-registry")
        .arg("serve")
        .arg(&cfg)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .context("starting docker-registry (apt-get install docker-registry)")?;
    let reg = LocalRegistry(child);
    let t0 = std::time::Instant::now();
    while std::net::TcpStream::connect(&addr).is_err() {
        ensure!(
            t0.elapsed().as_secs() < 30,
            "docker-registry did not listen on {addr}"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    Ok((reg, addr))
}

/// A real distribution: Debian 12 minbase (debootstrap, cached by xtask)
/// pushed with skopeo to a local docker-registry, `krypton pull`ed and
/// run: apt, dpkg's database and the image's PATH.
pub fn debian_minbase_pulled_runs_apt() -> Result<()> {
    let tar = crate::support::kernel_helpers::debian_minbase_tar()?;
    let s = Scratch::new("e2e-debian")?;
    let home = s.0.join("home");
    let layout = s.0.join("layout");
    single_layer_layout(&s.0, &layout, &tar, "bookworm")?;
    let (_registry, addr) = local_registry(&s.0)?;
    let image = format!("{addr}/debian-minbase:bookworm");
    sh(Command::new("skopeo").args([
        "copy",
        "-q",
        "--dest-tls-verify=false",
        &format!("oci:{}:bookworm", layout.display()),
        &format!("docker://{image}"),
    ]))?;
    let home_s = home.to_string_lossy().into_owned();
    let env = [("KRYPTON_HOME", home_s.as_str())];
    let o = run(&["pull", "-q", &image], None, &env)?;
    ensure!(
        o.status.success(),
        "krypton pull: {:?} {}",
        o.status,
        text(&o.stderr)
    );
    let script = "apt-get --version | head -n1; cat /etc/debian_version; \
        dpkg-query -W -f='${Status}\\n' coreutils; id -un; echo $PATH";
    let o = run(&["run", &image, "--", "sh", "-c", script], None, &env)?;
    let out = text(&o.stdout);
    ensure!(
        o.status.code() == Some(0),
        "{:?}: {}{out}",
        o.status,
        text(&o.stderr)
    );
    let lines: Vec<&str> = out.lines().collect();
    ensure!(
        lines.len() == 5
            && lines[0].starts_with("apt 2.")
            && lines[1].starts_with("12.")
            && lines[2] == "install ok installed"
            && lines[3] == "root"
            && lines[4] == "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        "unexpected output:\n{out}"
    );
    Ok(())
}
