use std::fs;

use super::*;

/// A bundle like podman's: rootfs dir, userdata dir with hosts/hostname,
/// config.json from `template` with $ROOT and $DATA replaced.
fn bundle(name: &str, template: &str) -> (PathBuf, PathBuf) {
    let d = std::env::temp_dir().join(format!("krypton-spec-{name}-{}", std::process::id()));
    let _ = fs::remove_dir_all(&d);
    for sub in ["rootfs", "userdata", "vol", "empty"] {
        fs::create_dir_all(d.join(sub)).expect("mkdir");
    }
    fs::write(d.join("userdata/hosts"), "127.0.0.1 localhost\n").expect("write");
    fs::write(d.join("userdata/hostname"), "box\n").expect("write");
    let text = template
        .replace("$ROOT", &d.join("rootfs").display().to_string())
        .replace("$DATA", &d.join("userdata").display().to_string())
        .replace("$VOL", &d.join("vol").display().to_string());
    fs::write(d.join("config.json"), text).expect("write");
    let pad = d.join("empty");
    (d, pad)
}

const PODMAN: &str = r#"{
  "ociVersion": "1.0.2-dev",
  "process": {
    "terminal": false,
    "user": {"uid": 1000, "gid": 1000, "additionalGids": [10, 20], "umask": 18},
    "args": ["sh", "-c", "exit 3"],
    "env": ["PATH=/usr/bin:/bin", "TERM=xterm", "container=podman"],
    "cwd": "/work",
    "capabilities": {
      "bounding": ["CAP_CHOWN", "CAP_KILL", "CAP_NET_BIND_SERVICE"],
      "effective": ["CAP_CHOWN", "CAP_KILL"],
      "permitted": ["CAP_CHOWN", "CAP_KILL"]
    },
    "rlimits": [{"type": "RLIMIT_NOFILE", "hard": 4096, "soft": 1024}],
    "noNewPrivileges": true
  },
  "root": {"path": "$ROOT", "readonly": true},
  "hostname": "box",
  "mounts": [
    {"destination": "/proc", "type": "proc", "source": "proc", "options": ["nosuid", "noexec", "nodev"]},
    {"destination": "/dev", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
    {"destination": "/sys", "type": "sysfs", "source": "sysfs", "options": ["nosuid", "noexec", "nodev", "ro"]},
    {"destination": "/dev/pts", "type": "devpts", "source": "devpts", "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"]},
    {"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue", "options": ["nosuid", "noexec", "nodev"]},
    {"destination": "/etc/hosts", "type": "bind", "source": "$DATA/hosts", "options": ["bind", "rprivate"]},
    {"destination": "/dev/shm", "type": "bind", "source": "$DATA", "options": ["bind", "rprivate", "nosuid", "noexec", "nodev"]},
    {"destination": "/etc/hostname", "type": "bind", "source": "$DATA/hostname", "options": ["bind", "rprivate", "ro"]},
    {"destination": "/data", "type": "bind", "source": "$VOL", "options": ["rbind", "ro"]},
    {"destination": "/sys/fs/cgroup", "type": "cgroup", "source": "cgroup", "options": ["rprivate", "nosuid", "noexec", "nodev", "relatime", "ro"]},
    {"destination": "/tmp", "type": "tmpfs", "source": "tmpfs", "options": ["rw", "rprivate", "nosuid", "nodev", "tmpcopyup"]}
  ],
  "annotations": {"io.podman.annotations.autoremove": "TRUE"},
  "linux": {
    "namespaces": [{"type": "pid"}, {"type": "network"}, {"type": "ipc"}, {"type": "uts"}, {"type": "mount"}],
    "resources": {
      "devices": [{"allow": false, "access": "rwm"}],
      "memory": {"limit": 134217728},
      "cpu": {"quota": 50000, "period": 100000},
      "pids": {"limit": 64}
    },
    "seccomp": {"defaultAction": "SCMP_ACT_ERRNO"},
    "maskedPaths": ["/proc/kcore"],
    "readonlyPaths": ["/proc/sys"],
    "sysctl": {"net.ipv4.ping_group_range": "0 0"}
  }
}"#;

#[test]
fn podman_config_maps_to_shares_binds_and_settings() {
    let (d, pad) = bundle("podman", PODMAN);
    let p = load(&d, &pad).expect("plan");
    // The root and the two bind sources, padded to four slots.
    let dirs: Vec<_> = p.shares.iter().map(|s| s.dir.clone()).collect();
    assert_eq!(
        dirs,
        vec![
            d.join("rootfs"),
            d.join("userdata"),
            d.join("vol"),
            pad.clone()
        ]
    );
    assert!(p.shares.iter().all(|s| !s.read_only));
    assert_eq!(p.shares[2].tag, "krypton-v2");
    let s = &p.settings;
    assert_eq!(s.root_tag, "krypton-v0");
    assert!(s.root_readonly);
    // Files from their parent's share; /dev/shm is the guest's own.
    assert_eq!(
        s.binds,
        vec![
            Bind {
                tag: "krypton-v1".into(),
                source: "hosts".into(),
                target: "/etc/hosts".into(),
                read_only: false
            },
            Bind {
                tag: "krypton-v1".into(),
                source: "hostname".into(),
                target: "/etc/hostname".into(),
                read_only: true
            },
            Bind {
                tag: "krypton-v2".into(),
                source: String::new(),
                target: "/data".into(),
                read_only: true
            },
        ]
    );
    let gm: Vec<_> = s
        .guest_mounts
        .iter()
        .map(|m| (m.fstype.as_str(), m.target.as_str(), m.data.as_str()))
        .collect();
    assert_eq!(
        gm,
        vec![
            ("mqueue", "/dev/mqueue", ""),
            ("cgroup2", "/sys/fs/cgroup", ""),
            ("tmpfs", "/tmp", ""),
        ]
    );
    let cg = &s.guest_mounts[1];
    assert_eq!(cg.flags & libc::MS_RDONLY, libc::MS_RDONLY);
    assert_eq!(s.additional_gids, vec![10, 20]);
    assert!(s.no_new_privileges);
    assert_eq!(
        s.rlimits,
        vec![Rlimit {
            resource: 7,
            soft: 1024,
            hard: 4096
        }]
    );
    let caps = s.caps.expect("caps");
    // CHOWN 0, KILL 5, NET_BIND_SERVICE 10.
    assert_eq!(caps.bounding, 1 | 1 << 5 | 1 << 10);
    assert_eq!(caps.effective, 1 | 1 << 5);
    assert_eq!(caps.inheritable, 0);
    assert_eq!(p.argv, vec!["sh", "-c", "exit 3"]);
    assert_eq!(p.cwd, "/work");
    assert_eq!((p.uid, p.gid), (1000, 1000));
    assert_eq!(p.hostname, "box");
    assert_eq!(p.limits.memory_bytes, Some(128 << 20));
    assert_eq!(p.limits.cpu, Some((50_000, 100_000)));
    assert_eq!(p.limits.pids, Some(64));
    assert_eq!(p.vm_mem_mib, Some(256));
    assert_eq!(
        p.annotations
            .get("io.podman.annotations.autoremove")
            .map(String::as_str),
        Some("TRUE")
    );
    // The encoded exec request carries it all.
    s.check().expect("valid settings");
    let _ = fs::remove_dir_all(&d);
}

#[test]
fn unsupported_and_bad_configs_are_refused() {
    let cases: &[(&str, &str, &str)] = &[
        (
            "nfs",
            r#""destination": "/proc", "type": "proc""#,
            r#""destination": "/x", "type": "nfs""#,
        ),
        ("userns", r#"{"type": "pid"}"#, r#"{"type": "user"}"#),
        (
            "noargs",
            r#""args": ["sh", "-c", "exit 3"]"#,
            r#""args": []"#,
        ),
        ("relcwd", r#""cwd": "/work""#, r#""cwd": "work""#),
        (
            "dotdot",
            r#""destination": "/dev/mqueue""#,
            r#""destination": "/a/../b""#,
        ),
        ("nosrc", r#""$VOL""#, r#""/definitely/not/here""#),
        (
            "hook",
            r#""hostname": "box","#,
            r#""hostname": "box", "hooks": {"prestart": [{"path": "/bin/true"}]},"#,
        ),
        ("rlimit", "RLIMIT_NOFILE", "RLIMIT_BOGUS"),
    ];
    for (name, from, to) in cases {
        assert!(PODMAN.contains(from), "{name}");
        let (d, pad) = bundle(name, &PODMAN.replacen(from, to, 1));
        let err = load(&d, &pad).expect_err(name);
        assert!(!err.to_string().is_empty(), "{name}");
        let _ = fs::remove_dir_all(&d);
    }
    // No config.json at all.
    let err = load(Path::new("/definitely/not/here"), Path::new("/tmp")).expect_err("missing");
    assert!(err.to_string().contains("config.json"), "{err}");
}

#[test]
fn too_many_shares_are_refused() {
    let (d, pad) = bundle("many", PODMAN);
    let mut mounts = String::new();
    for i in 0..40 {
        let dir = d.join(format!("m{i}"));
        fs::create_dir_all(&dir).expect("mkdir");
        mounts.push_str(&format!(
            r#"{{"destination": "/m{i}", "type": "bind", "source": "{}", "options": ["bind"]}},"#,
            dir.display()
        ));
    }
    let text = fs::read_to_string(d.join("config.json"))
        .expect("read")
        .replacen(r#""mounts": ["#, &format!(r#""mounts": [{mounts}"#), 1);
    fs::write(d.join("config.json"), text).expect("write");
    let err = load(&d, &pad).expect_err("41 shares");
    assert!(err.to_string().contains("at most 32"), "{err}");
    let _ = fs::remove_dir_all(&d);
}

#[test]
fn names_map_to_kernel_numbers() {
    assert_eq!(cap_number("CHOWN"), Some(0));
    assert_eq!(cap_number("CAP_SYS_ADMIN"), Some(21));
    assert_eq!(cap_number("CHECKPOINT_RESTORE"), Some(40));
    assert_eq!(cap_number("NOPE"), None);
    assert_eq!(rlimit_number("RLIMIT_NOFILE"), Some(7));
    assert_eq!(rlimit_number("RTTIME"), Some(15));
    assert_eq!(rlimit_number("X"), None);
}
