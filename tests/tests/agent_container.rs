//! Container isolation through the real agent on this host: pid, uts and
//! net namespaces, an ext4 rootfs from a loop device with a tmpfs overlay,
//! cgroup limits, plus protocol robustness and host-mode shutdown.

mod agent_support;

use std::io::Write;
use std::time::Duration;

use agent_support::{Agent, TempDir, busybox_image, cmd, describe, loops_for, sh};
use krypton::run::{Limits, RunOptions, Stdin};
use krypton_protocol::{Message, PROTOCOL_VERSION, caps, read_message, write_message};

fn numeric_pids(listing: &str) -> Vec<u32> {
    listing
        .split_whitespace()
        .filter_map(|w| w.parse().ok())
        .collect()
}

#[tokio::test]
async fn container_has_own_pids_hostname_and_network() {
    require_agent_host!();
    let agent = Agent::start();
    let host_name = std::fs::read_to_string("/proc/sys/kernel/hostname").expect("hostname");
    let opts = RunOptions {
        hostname: "box1".into(),
        ..sh("cat /proc/sys/kernel/hostname; echo $$; ls /proc; echo --; cat /proc/net/dev")
    };
    let o = agent.run(&opts, Stdin::Null).await;
    assert_eq!(o.code(), 0, "{:?} {}", o.result, o.err());
    let out = o.out();
    let mut lines = out.lines();
    assert_eq!(lines.next(), Some("box1"));
    // The command is pid 2: pid 1 is the container init.
    assert_eq!(lines.next(), Some("2"));
    let (procs, net) = out.split_once("--\n").expect("separator");
    let pids = numeric_pids(
        procs
            .split_once('\n')
            .and_then(|p| p.1.split_once('\n'))
            .map_or("", |p| p.1),
    );
    assert!(
        !pids.is_empty() && pids.iter().all(|&p| p <= 5),
        "host pids visible: {pids:?}"
    );
    assert!(
        !pids.contains(&agent.pid()),
        "agent pid {} visible",
        agent.pid()
    );
    let ifaces: Vec<&str> = net
        .lines()
        .skip(2)
        .filter_map(|l| l.split(':').next())
        .map(str::trim)
        .collect();
    assert_eq!(ifaces, ["lo"], "{net}");
    // Unchanged on the host.
    assert_eq!(
        std::fs::read_to_string("/proc/sys/kernel/hostname").expect("hostname"),
        host_name
    );
    // Default hostname.
    let o = agent
        .run(&cmd(&["cat", "/proc/sys/kernel/hostname"]), Stdin::Null)
        .await;
    assert_eq!(o.out(), "krypton\n");
}

#[tokio::test]
async fn ext4_rootfs_from_loop_device_with_overlay() {
    require_agent_host!();
    let dir = TempDir::new("rootfs");
    let img = match busybox_image(&dir.0) {
        Ok(i) => i,
        Err(why) => {
            eprintln!("SKIP: {why}");
            return;
        }
    };
    let agent = Agent::start();
    let rootfs = img.to_string_lossy().into_owned();
    let opts = |script: &str| RunOptions {
        rootfs: rootfs.clone(),
        hostname: "imgbox".into(),
        env: vec!["PATH=/bin".into()],
        ..sh(script)
    };
    let o = agent
        .run(&opts("cat /etc/krypton-marker; hostname; ls /; ps -o pid,comm; touch /newfile && echo wrote"), Stdin::Null)
        .await;
    assert_eq!(o.code(), 0, "{:?} {}", o.result, o.err());
    let out = o.out();
    assert!(out.starts_with("from-the-image\nimgbox\n"), "{out}");
    assert!(
        out.contains("etc") && out.contains("bin") && !out.contains("usr"),
        "not the image root: {out}"
    );
    // busybox ps over the container's /proc: only container processes.
    let ps: Vec<&str> = out
        .lines()
        .skip_while(|l| !l.contains("PID"))
        .skip(1)
        .take_while(|l| *l != "wrote")
        .collect();
    let pids: Vec<u32> = ps
        .iter()
        .filter_map(|l| l.split_whitespace().next()?.parse().ok())
        .collect();
    // Exactly: the container init (1), the shell (2) and ps itself.
    assert_eq!(pids.len(), 3, "ps shows {ps:?}");
    assert!(
        ps[0].ends_with("krypton-init") && pids[..2] == [1, 2],
        "ps shows {ps:?}"
    );
    assert!(out.ends_with("wrote\n"), "overlay not writable: {out}");
    // Each container gets a fresh upper layer; the image itself is read-only.
    let o = agent.run(&opts("test -e /newfile"), Stdin::Null).await;
    assert_eq!(o.code(), 1, "write leaked into the next container");
    let o = agent
        .run(
            &opts("test -e /bin/busybox && test ! -e /usr/bin"),
            Stdin::Null,
        )
        .await;
    assert_eq!(o.code(), 0);
    // Missing commands inside the image are 127 there too.
    assert_eq!(agent.run(&opts("exec nope"), Stdin::Null).await.code(), 127);
    // The loop device is released once the containers are gone.
    let mut left = loops_for(&img);
    for _ in 0..100 {
        if left.is_empty() {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
        left = loops_for(&img);
    }
    assert!(left.is_empty(), "loop device still attached: {left}");
    // A missing image is a setup failure.
    let bad = RunOptions {
        rootfs: "/no/such.img".into(),
        ..cmd(&["true"])
    };
    assert_eq!(agent.run(&bad, Stdin::Null).await.code(), 125);
}

async fn agent_caps(agent: &Agent) -> u64 {
    let mut s = std::os::unix::net::UnixStream::connect(&agent.socket).expect("connect");
    match read_message(&mut s).expect("hello") {
        Message::Hello { caps, .. } => caps,
        other => panic!("expected hello, got {other:?}"),
    }
}

#[tokio::test]
async fn memory_limit_kills_with_137() {
    require_agent_host!();
    let agent = Agent::start();
    if agent_caps(&agent).await & caps::CGROUPS == 0 {
        eprintln!(
            "SKIP: agent reports no usable cgroup hierarchy: {}",
            agent.log_text()
        );
        return;
    }
    let limits = Limits {
        memory_bytes: Some(32 << 20),
        ..Default::default()
    };
    // tail -c keeps 200 MB in memory: far over the limit.
    let hog = RunOptions {
        limits: limits.clone(),
        ..sh("head -c 300000000 /dev/zero | tail -c 200000000 > /dev/null; exit $?")
    };
    let o = agent.run(&hog, Stdin::Null).await;
    assert_eq!(o.code(), 137, "{:?} {}", o.result, o.err());
    // The same limit leaves a small command alone.
    let ok = RunOptions {
        limits,
        ..sh("head -c 1000000 /dev/zero | tail -c 100 | wc -c")
    };
    let o = agent.run(&ok, Stdin::Null).await;
    assert_eq!((o.code(), o.out().trim()), (0, "100"));
}

#[tokio::test]
async fn pids_limit_stops_fork_bombs() {
    require_agent_host!();
    let agent = Agent::start();
    if agent_caps(&agent).await & caps::CGROUPS == 0 {
        eprintln!("SKIP: agent reports no usable cgroup hierarchy");
        return;
    }
    let opts = RunOptions {
        limits: Limits {
            pids: Some(8),
            ..Default::default()
        },
        ..sh("n=0; for i in $(seq 20); do sleep 2 & n=$((n+1)); done; echo started $n")
    };
    let o = agent.run(&opts, Stdin::Null).await;
    assert!(
        o.err().contains("fork") || o.err().contains("resource"),
        "{:?} {}",
        o.result,
        o.err()
    );
}

#[test]
fn malformed_frames_get_an_error_and_the_agent_survives() {
    require_agent_host!();
    let agent = Agent::start();
    let mut s = std::os::unix::net::UnixStream::connect(&agent.socket).expect("connect");
    assert!(matches!(
        read_message(&mut s).expect("hello"),
        Message::Hello {
            version: PROTOCOL_VERSION,
            ..
        }
    ));
    write_message(
        &mut s,
        &Message::Hello {
            version: PROTOCOL_VERSION,
            caps: 0,
        },
    )
    .expect("hello");
    // Unknown type byte in a well-formed frame.
    s.write_all(&[1, 0, 0, 0, 0xee]).expect("write");
    assert!(matches!(read_message(&mut s), Ok(Message::Error { .. })));
    // A new connection still works; an oversized length is refused.
    let mut s = std::os::unix::net::UnixStream::connect(&agent.socket).expect("connect");
    let _ = read_message(&mut s).expect("hello");
    write_message(
        &mut s,
        &Message::Hello {
            version: PROTOCOL_VERSION,
            caps: 0,
        },
    )
    .expect("hello");
    s.write_all(&u32::MAX.to_le_bytes()).expect("write");
    assert!(matches!(read_message(&mut s), Ok(Message::Error { .. })));
    // A wrong version is refused with an error.
    let mut s = std::os::unix::net::UnixStream::connect(&agent.socket).expect("connect");
    let _ = read_message(&mut s).expect("hello");
    write_message(
        &mut s,
        &Message::Hello {
            version: 99,
            caps: 0,
        },
    )
    .expect("hello");
    assert!(matches!(read_message(&mut s), Ok(Message::Error { .. })));
    // Signals for unknown execs are errors, not crashes.
    let mut s = std::os::unix::net::UnixStream::connect(&agent.socket).expect("connect");
    let _ = read_message(&mut s).expect("hello");
    write_message(
        &mut s,
        &Message::Hello {
            version: PROTOCOL_VERSION,
            caps: 0,
        },
    )
    .expect("hello");
    write_message(&mut s, &Message::Signal { id: 77, signo: 9 }).expect("signal");
    assert!(matches!(
        read_message(&mut s),
        Ok(Message::Error { id: 77, .. })
    ));
}

#[test]
fn host_shutdown_exits_without_rebooting() {
    require_agent_host!();
    let mut agent = Agent::start();
    let mut s = std::os::unix::net::UnixStream::connect(&agent.socket).expect("connect");
    let Message::Hello { caps: c, .. } = read_message(&mut s).expect("hello") else {
        panic!("no hello")
    };
    assert_eq!(
        c & caps::SHUTDOWN,
        0,
        "a host agent must not offer power-off"
    );
    write_message(
        &mut s,
        &Message::Hello {
            version: PROTOCOL_VERSION,
            caps: 0,
        },
    )
    .expect("hello");
    write_message(&mut s, &Message::Shutdown).expect("shutdown");
    let st = agent
        .wait_exit(Duration::from_secs(10))
        .expect("agent exits on shutdown");
    assert_eq!(st.code(), Some(0), "{}", describe(&st));
}

#[tokio::test]
async fn dropping_the_connection_kills_the_container() {
    require_agent_host!();
    let agent = Agent::start();
    let dir = TempDir::new("drop");
    let marker = dir.0.join("alive");
    let script = format!("echo ready; sleep 2; touch {}", marker.display());
    let opts = RunOptions {
        timeout: Some(Duration::from_millis(1500)),
        ..sh(&script)
    };
    let o = agent.run(&opts, Stdin::Null).await;
    assert_eq!(o.code(), 124, "{:?}", o.result);
    // It was running when the client gave up and dropped the connection...
    assert_eq!(o.out(), "ready\n");
    // ...and it would have touched the marker within 2 s had it survived.
    std::thread::sleep(Duration::from_millis(2500));
    assert!(!marker.exists(), "container outlived its connection");
}

#[tokio::test]
async fn limits_without_a_usable_cgroup_hierarchy_are_refused() {
    require_agent_host!();
    // A directory that is no cgroup mount at all.
    let dir = TempDir::new("nocg");
    let agent = Agent::start_with(&["--cgroup-root", &dir.0.to_string_lossy()]);
    assert_eq!(agent_caps(&agent).await & caps::CGROUPS, 0);
    let limited = RunOptions {
        limits: Limits {
            memory_bytes: Some(64 << 20),
            ..Default::default()
        },
        ..cmd(&["true"])
    };
    let o = agent.run(&limited, Stdin::Null).await;
    assert_eq!(o.code(), 125);
    assert!(
        format!("{:?}", o.result).contains("cgroup"),
        "{:?}",
        o.result
    );
    // Without limits the command still runs.
    assert_eq!(agent.run(&cmd(&["true"]), Stdin::Null).await.code(), 0);
}

#[tokio::test]
async fn cpu_quota_lands_in_the_containers_own_cgroup() {
    require_agent_host!();
    let agent = Agent::start();
    if agent_caps(&agent).await & caps::CGROUPS == 0 {
        eprintln!("SKIP: agent reports no usable cgroup hierarchy");
        return;
    }
    // Read the limit from inside, through the container's own cgroup path
    // (v1: cpu controller directory; v2: cpu.max of the unified group).
    let script = r#"while IFS=: read -r n c p; do case "$c" in
        cpu|cpu,cpuacct) cat /sys/fs/cgroup/$c$p/cpu.cfs_quota_us /sys/fs/cgroup/$c$p/cpu.cfs_period_us;;
        "") [ -f /sys/fs/cgroup$p/cpu.max ] && cat /sys/fs/cgroup$p/cpu.max;;
        esac; done < /proc/self/cgroup; true"#;
    let opts = RunOptions {
        limits: Limits {
            cpu: Some((25_000, 100_000)),
            ..Default::default()
        },
        ..sh(script)
    };
    let o = agent.run(&opts, Stdin::Null).await;
    assert_eq!(o.code(), 0, "{:?} {}", o.result, o.err());
    assert_eq!(
        o.out().split_whitespace().collect::<Vec<_>>(),
        ["25000", "100000"],
        "{}",
        o.out()
    );
}

/// The agent mounts an Exec's virtio-fs shares in the container after its
/// root is built. No virtio-fs device exists on this host, so the mount
/// itself must fail, naming the share, as a runtime failure (125).
#[test]
fn exec_mounts_reach_the_container_setup() {
    require_agent_host!();
    let dir = TempDir::new("agent-shares");
    let img = match busybox_image(&dir.0) {
        Ok(i) => i,
        Err(why) => {
            eprintln!("SKIP: {why}");
            return;
        }
    };
    let agent = Agent::start();
    let mut s = std::os::unix::net::UnixStream::connect(&agent.socket).expect("connect");
    let Message::Hello { caps: c, .. } = read_message(&mut s).expect("hello") else {
        panic!("no hello")
    };
    assert_eq!(
        c & caps::MOUNTS,
        0,
        "a host-mode agent does not offer shares"
    );
    write_message(
        &mut s,
        &Message::Hello {
            version: PROTOCOL_VERSION,
            caps: 0,
        },
    )
    .expect("hello");
    let exec = krypton_protocol::ExecRequest {
        id: 5,
        argv: vec!["true".into()],
        rootfs: img.to_string_lossy().into_owned(),
        mounts: vec![krypton_protocol::Mount {
            tag: "krypton-nosuch".into(),
            target: "/data/in".into(),
            read_only: true,
        }],
        ..Default::default()
    };
    write_message(&mut s, &Message::Exec(Box::new(exec))).expect("exec");
    write_message(&mut s, &Message::StdinEof { id: 5 }).expect("eof");
    loop {
        match read_message(&mut s).expect("answer") {
            Message::ExecError { id, code, message } => {
                assert_eq!((id, code), (5, 125));
                assert!(
                    message.contains("virtio-fs share krypton-nosuch at /data/in"),
                    "{message}"
                );
                break;
            }
            Message::Started { .. } => panic!("started although the share cannot be mounted"),
            _ => {}
        }
    }
}
