//! Image roots through the real agent on this host: two EROFS layers
//! (made by mkfs.erofs) packed into one disk file at the places krypton
//! puts them, stacked with overlayfs; OCI whiteouts and opaque directories
//! take effect, and `--user NAME` resolves through the image's own
//! /etc/passwd and /etc/group.

mod agent_support;

use std::fs;
use std::os::unix::fs::{FileExt, symlink};
use std::path::Path;
use std::process::Command;

use agent_support::{Agent, TempDir, sh};
use krypton::run::{RunOptions, Stdin};
use krypton_protocol::{ImageRoot, Layer};

/// krypton's layer disk layout: from 1 MiB, 4 KiB aligned.
fn place(lens: &[u64]) -> Vec<Layer> {
    let mut at = 1 << 20;
    lens.iter()
        .map(|&len| {
            let size = len.next_multiple_of(4096);
            let l = Layer { offset: at, size };
            at += size;
            l
        })
        .collect()
}

fn mkfs_erofs(tree: &Path, out: &Path) -> Result<(), String> {
    let o = Command::new("mkfs.erofs")
        .arg("--quiet")
        .arg(out)
        .arg(tree)
        .output()
        .map_err(|e| format!("mkfs.erofs: {e} (apt-get install erofs-utils)"))?;
    if o.status.success() {
        Ok(())
    } else {
        Err(format!(
            "mkfs.erofs: {}",
            String::from_utf8_lossy(&o.stderr)
        ))
    }
}

fn set_xattr(path: &Path, name: &str, value: &[u8]) {
    let p = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).expect("path");
    let n = std::ffi::CString::new(name).expect("name");
    // SAFETY: valid C strings and a buffer of the given length.
    let r = unsafe {
        libc::lsetxattr(
            p.as_ptr(),
            n.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            0,
        )
    };
    assert_eq!(r, 0, "setxattr {name}: {}", std::io::Error::last_os_error());
}

/// The lower layer: busybox, passwd/group, a file the upper layer deletes,
/// a directory it makes opaque.
fn lower_tree(root: &Path) {
    for d in [
        "bin", "etc", "data", "home/app", "proc", "sys", "dev", "tmp",
    ] {
        fs::create_dir_all(root.join(d)).expect("mkdir");
    }
    fs::copy("/bin/busybox", root.join("bin/busybox")).expect("busybox");
    for a in ["sh", "cat", "ls", "id", "test", "echo"] {
        symlink("busybox", root.join("bin").join(a)).expect("applet");
    }
    fs::write(
        root.join("etc/passwd"),
        "root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000:App:/home/app:/bin/sh\n",
    )
    .expect("passwd");
    fs::write(
        root.join("etc/group"),
        "root:x:0:\nstaff:x:50:app\napp:x:1000:\n",
    )
    .expect("group");
    fs::write(root.join("etc/gone"), "lower\n").expect("gone");
    fs::write(root.join("data/a"), "a\n").expect("a");
    std::os::unix::fs::chown(root.join("home/app"), Some(1000), Some(1000)).expect("chown");
}

/// The upper layer as overlayfs wants it: a 0:0 char device hides
/// etc/gone, `trusted.overlay.opaque=y` hides data/a.
fn upper_tree(root: &Path) {
    fs::create_dir_all(root.join("etc")).expect("mkdir");
    fs::create_dir_all(root.join("data")).expect("mkdir");
    fs::write(root.join("etc/top"), "top\n").expect("top");
    fs::write(root.join("data/b"), "b\n").expect("b");
    let wh =
        std::ffi::CString::new(root.join("etc/gone").as_os_str().as_encoded_bytes()).expect("path");
    // SAFETY: valid C string; a 0:0 character device.
    let r = unsafe { libc::mknod(wh.as_ptr(), libc::S_IFCHR | 0o600, 0) };
    assert_eq!(r, 0, "mknod: {}", std::io::Error::last_os_error());
    set_xattr(&root.join("data"), "trusted.overlay.opaque", b"y");
}

#[tokio::test]
async fn layers_stack_with_whiteouts_and_users_resolve_in_the_image() {
    require_agent_host!();
    if !Path::new("/bin/busybox").exists() {
        eprintln!("SKIP: /bin/busybox missing (apt-get install busybox-static)");
        return;
    }
    let dir = TempDir::new("layers");
    let (lower, upper) = (dir.0.join("lower"), dir.0.join("upper"));
    lower_tree(&lower);
    upper_tree(&upper);
    let imgs = [dir.0.join("lower.erofs"), dir.0.join("upper.erofs")];
    for (tree, img) in [&lower, &upper].into_iter().zip(&imgs) {
        if let Err(why) = mkfs_erofs(tree, img) {
            eprintln!("SKIP: {why}");
            return;
        }
    }
    let lens: Vec<u64> = imgs
        .iter()
        .map(|p| fs::metadata(p).expect("image").len())
        .collect();
    let layers = place(&lens);
    let disk_path = dir.0.join("layers.disk");
    let disk = fs::File::create(&disk_path).expect("disk");
    for (img, l) in imgs.iter().zip(&layers) {
        disk.write_all_at(&fs::read(img).expect("read"), l.offset)
            .expect("write layer");
    }
    let end = layers.last().map_or(0, |l| l.offset + l.size);
    disk.set_len(end).expect("size");
    drop(disk);

    let agent = Agent::start();
    let image = ImageRoot {
        disk: disk_path.to_string_lossy().into_owned(),
        layers: layers.clone(),
        scratch: String::new(),
    };
    let opts = |user: &str, script: &str| RunOptions {
        image: Some(image.clone()),
        user: user.into(),
        env: vec!["PATH=/bin".into()],
        ..sh(script)
    };
    let o = agent
        .run(
            &opts(
                "app",
                "id -u; id -g; id -G; echo $HOME; cat /etc/top; \
                 test -e /etc/gone || echo gone-hidden; ls /data; \
                 echo x > /home/app/new && echo upper-writable",
            ),
            Stdin::Null,
        )
        .await;
    assert_eq!(o.code(), 0, "{:?} {}", o.result, o.err());
    let out = o.out();
    assert!(
        out.starts_with("1000\n1000\n1000 50\n/home/app\ntop\ngone-hidden\nb\n"),
        "{out}"
    );
    assert!(out.ends_with("upper-writable\n"), "{out}");
    let o = agent.run(&opts("nobody", "true"), Stdin::Null).await;
    assert_ne!(o.code(), 0, "an unknown user name must fail");
    let why = format!("{:?} {}", o.result, o.err());
    assert!(why.contains("unable to find user nobody"), "{why}");
    // The lower layer alone: the whited-out file is there.
    let lower_only = RunOptions {
        image: Some(ImageRoot {
            layers: layers[..1].to_vec(),
            ..image.clone()
        }),
        env: vec!["PATH=/bin".into()],
        ..sh("cat /etc/gone; ls /data")
    };
    let o = agent.run(&lower_only, Stdin::Null).await;
    assert_eq!(o.code(), 0, "{:?} {}", o.result, o.err());
    assert_eq!(o.out(), "lower\na\n");
    // A layer window past the disk's end is refused with a reason.
    let bad = RunOptions {
        image: Some(ImageRoot {
            layers: vec![Layer {
                offset: end,
                size: 4096,
            }],
            ..image
        }),
        ..sh("true")
    };
    let o = agent.run(&bad, Stdin::Null).await;
    assert_eq!(o.code(), 125, "{:?} {}", o.result, o.err());
}

/// Output of a host tool, or why it could not run.
fn tool(cmd: &str, args: &[&str]) -> Result<String, String> {
    let o = Command::new(cmd)
        .args(args)
        .output()
        .map_err(|e| format!("{cmd}: {e}"))?;
    if o.status.success() {
        Ok(String::from_utf8_lossy(&o.stdout).into_owned())
    } else {
        Err(format!(
            "{cmd} {args:?}: {}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        ))
    }
}

#[tokio::test]
async fn scratch_disk_is_the_upper_layer() {
    require_agent_host!();
    if !Path::new("/bin/busybox").exists() {
        eprintln!("SKIP: /bin/busybox missing (apt-get install busybox-static)");
        return;
    }
    let dir = TempDir::new("scratch");
    let lower = dir.0.join("lower");
    lower_tree(&lower);
    let img = dir.0.join("lower.erofs");
    if let Err(why) = mkfs_erofs(&lower, &img) {
        eprintln!("SKIP: {why}");
        return;
    }
    let layers = place(&[fs::metadata(&img).expect("image").len()]);
    let disk_path = dir.0.join("layers.disk");
    let disk = fs::File::create(&disk_path).expect("disk");
    disk.write_all_at(&fs::read(&img).expect("read"), layers[0].offset)
        .expect("write layer");
    disk.set_len(layers[0].offset + layers[0].size)
        .expect("size");
    drop(disk);
    let scratch = dir.0.join("scratch.img");
    krypton_image::ext2::format(&scratch, 64 << 20).expect("format scratch");
    let scratch_str = scratch.to_string_lossy().into_owned();
    let dev = match tool("losetup", &["--find", "--show", &scratch_str]) {
        Ok(d) => d.trim().to_owned(),
        Err(why) => {
            eprintln!("SKIP: {why}");
            return;
        }
    };
    let agent = Agent::start();
    let run = RunOptions {
        image: Some(ImageRoot {
            disk: disk_path.to_string_lossy().into_owned(),
            layers,
            scratch: dev.clone(),
        }),
        env: vec!["PATH=/bin".into()],
        ..sh("echo on-scratch > /etc/written && cat /etc/written /data/a")
    };
    let o = agent.run(&run, Stdin::Null).await;
    drop(agent);
    let detached = tool("losetup", &["-d", &dev]);
    assert_eq!(o.code(), 0, "{:?} {}", o.result, o.err());
    assert_eq!(o.out(), "on-scratch\na\n");
    detached.expect("losetup -d");
    tool("e2fsck", &["-fn", &scratch_str]).expect("e2fsck after the run");
    let cat = tool("debugfs", &["-R", "cat /upper/etc/written", &scratch_str]);
    assert_eq!(cat.expect("debugfs").trim(), "on-scratch");
    // A scratch path outside /dev is refused with a reason.
    let agent = Agent::start();
    let bad = RunOptions {
        image: Some(ImageRoot {
            scratch: scratch_str,
            ..run.image.clone().expect("image")
        }),
        ..sh("true")
    };
    let o = agent.run(&bad, Stdin::Null).await;
    assert_eq!(o.code(), 125, "{:?} {}", o.result, o.err());
}
