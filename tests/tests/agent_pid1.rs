//! The agent's PID-1 mode on this host, made safe with namespaces: it runs
//! as PID 1 of a new pid namespace (plus private mount, uts, ipc and net
//! namespaces), so its base mounts stay private and `reboot(POWER_OFF)`
//! only ends the namespace (the kernel kills its init with SIGINT).

mod agent_support;

use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use agent_support::{agent_bin, sh};
use krypton::run::{RunIo, Stdin, run_with_io};
use krypton_protocol::{Message, PROTOCOL_VERSION, caps, read_message, write_message};

#[tokio::test]
async fn pid1_mode_mounts_base_filesystems_and_powers_off_its_namespace() {
    require_agent_host!();
    if Command::new("unshare").arg("--version").output().is_err() {
        eprintln!("SKIP: unshare (util-linux) not found");
        return;
    }
    // Not under /tmp or /run: PID 1 mounts tmpfs over those in its namespace.
    let dir =
        PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("pid1-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("dir");
    let sock = dir.join("agent.sock");
    let mut child = Command::new("unshare")
        .args([
            "--pid",
            "--fork",
            "--mount",
            "--uts",
            "--ipc",
            "--net",
            "--propagation",
            "private",
        ])
        .arg(agent_bin())
        .arg("--listen")
        .arg(format!("unix:{}", sock.display()))
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start unshare");
    struct Kill<'a>(&'a mut std::process::Child);
    impl Drop for Kill<'_> {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let guard = Kill(&mut child);
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut s = loop {
        if let Ok(s) = std::os::unix::net::UnixStream::connect(&sock) {
            break s;
        }
        assert!(Instant::now() < deadline, "PID-1 agent did not listen");
        std::thread::sleep(Duration::from_millis(20));
    };
    let Message::Hello { caps: c, .. } = read_message(&mut s).expect("hello") else {
        panic!("no hello")
    };
    assert_ne!(c & caps::SHUTDOWN, 0, "PID 1 offers power-off");

    // The agent's base mounts are what the container inherits.
    let stream = tokio::net::UnixStream::connect(&sock)
        .await
        .expect("connect");
    let (mut out, mut err) = (Vec::new(), Vec::new());
    let opts = sh("cat /proc/mounts; cat /proc/sys/kernel/hostname");
    let io = RunIo {
        stdin: Stdin::Null,
        stdout: &mut out,
        stderr: &mut err,
        control: None,
        size: None,
    };
    let code = run_with_io(stream, &opts, io).await.expect("run");
    let mounts = String::from_utf8_lossy(&out);
    assert_eq!(code, 0, "{}", String::from_utf8_lossy(&err));
    for (target, fstype) in [
        ("/dev", "devtmpfs"),
        ("/dev/pts", "devpts"),
        ("/tmp", "tmpfs"),
        ("/run", "tmpfs"),
        ("/sys/fs/cgroup", "cgroup2"),
    ] {
        assert!(
            mounts
                .lines()
                .any(|l| l.split_whitespace().skip(1).take(2).eq([target, fstype])),
            "{target} ({fstype}) not mounted:\n{mounts}"
        );
    }

    // As PID 1 the agent keeps a container init ready (zygote.rs): the
    // first exec used it; the next ones use its replacements, stdin, stdout
    // and stderr handed over with the config.
    for round in 0..3 {
        let stream = tokio::net::UnixStream::connect(&sock)
            .await
            .expect("connect");
        let (mut out, mut err) = (Vec::new(), Vec::new());
        let opts = sh("read x; echo \"got $x\"; echo oops >&2; exit 3");
        let io = RunIo {
            stdin: agent_support::bytes(format!("line{round}\n").into_bytes()),
            stdout: &mut out,
            stderr: &mut err,
            control: None,
            size: None,
        };
        let mut opts = opts;
        opts.interactive = true;
        let code = run_with_io(stream, &opts, io).await.expect("run");
        assert_eq!(code, 3, "round {round}: {}", String::from_utf8_lossy(&err));
        assert_eq!(String::from_utf8_lossy(&out), format!("got line{round}\n"));
        assert_eq!(String::from_utf8_lossy(&err), "oops\n");
    }

    write_message(
        &mut s,
        &Message::Hello {
            version: PROTOCOL_VERSION,
            caps: 0,
        },
    )
    .expect("hello");
    write_message(&mut s, &Message::Shutdown).expect("shutdown");
    let deadline = Instant::now() + Duration::from_secs(20);
    let st = loop {
        if let Some(st) = guard.0.try_wait().expect("wait") {
            break st;
        }
        assert!(
            Instant::now() < deadline,
            "namespace init did not power off"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    // unshare re-raises the child's signal, or reports 128+N.
    assert!(
        st.signal() == Some(libc::SIGINT) || st.code() == Some(130),
        "unexpected end: {st:?}"
    );
    drop(guard);
    let _ = std::fs::remove_dir_all(&dir);
}
