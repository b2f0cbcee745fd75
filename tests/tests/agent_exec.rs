//! The real agent on this host over a Unix socket, driven by the host
//! client: exit codes, output draining, stdin, signals, TTY.

mod agent_support;

use std::time::Duration;

use agent_support::{Agent, Capture, bytes, cmd, sh};
use krypton::run::{Control, RunOptions, Stdin};
use tokio::sync::{mpsc, oneshot};

#[tokio::test]
async fn exit_codes_are_faithful() {
    require_agent_host!();
    let agent = Agent::start();
    let cases: [(RunOptions, i32); 8] = [
        (sh("exit 0"), 0),
        (cmd(&["false"]), 1),
        (sh("exit 123"), 123),
        (cmd(&["/etc/passwd"]), 126),
        (cmd(&["no-such-command-krypton"]), 127),
        (cmd(&["/no/such/path"]), 127),
        (sh("kill -KILL $$"), 137),
        (sh("kill -TERM $$"), 143),
    ];
    for (opts, want) in cases {
        let o = agent.run(&opts, Stdin::Null).await;
        assert_eq!(
            o.code(),
            want,
            "{:?}: {:?} stderr={}",
            opts.argv,
            o.result,
            o.err()
        );
    }
}

#[tokio::test]
async fn bad_cwd_is_a_runtime_failure() {
    require_agent_host!();
    let agent = Agent::start();
    let o = agent
        .run(
            &RunOptions {
                cwd: "/no/such/dir".into(),
                ..cmd(&["true"])
            },
            Stdin::Null,
        )
        .await;
    assert_eq!(o.code(), 125, "{:?}", o.result);
    let o = agent
        .run(
            &RunOptions {
                cwd: "/etc".into(),
                ..cmd(&["pwd"])
            },
            Stdin::Null,
        )
        .await;
    assert_eq!((o.code(), o.out()), (0, "/etc\n".into()));
}

#[tokio::test]
async fn large_output_is_fully_delivered_before_exit() {
    require_agent_host!();
    let agent = Agent::start();
    let script = "head -c 10485760 /dev/zero | tr '\\0' x; head -c 3000000 /dev/zero >&2; exit 7";
    let o = agent.run(&sh(script), Stdin::Null).await;
    assert_eq!(o.code(), 7, "{:?}", o.result);
    assert_eq!(o.stdout.len(), 10 << 20);
    assert!(o.stdout.iter().all(|&b| b == b'x'));
    assert_eq!(o.stderr.len(), 3_000_000);
    // Output written right before a signal death is not lost either.
    let o = agent
        .run(&sh("head -c 1000000 /dev/zero; kill -KILL $$"), Stdin::Null)
        .await;
    assert_eq!((o.code(), o.stdout.len()), (137, 1_000_000));
}

#[tokio::test]
async fn env_user_and_argv_reach_the_command() {
    require_agent_host!();
    let agent = Agent::start();
    let opts = RunOptions {
        env: vec!["PATH=/usr/bin:/bin".into(), "KRYPTON_X=hello world".into()],
        uid: 65534,
        gid: 65534,
        ..cmd(&[
            "sh",
            "-c",
            "echo \"$KRYPTON_X\" \"$0\"; id -u; id -g",
            "arg0",
        ])
    };
    let o = agent.run(&opts, Stdin::Null).await;
    assert_eq!(o.code(), 0, "{:?} {}", o.result, o.err());
    assert_eq!(o.out(), "hello world arg0\n65534\n65534\n");
}

#[tokio::test]
async fn stdin_from_null_pipe_and_closed_early() {
    require_agent_host!();
    let agent = Agent::start();
    // Not interactive: the command sees EOF at once (cat does not hang).
    let o = agent.run(&cmd(&["cat"]), bytes(b"ignored".to_vec())).await;
    assert_eq!((o.code(), o.stdout.len()), (0, 0), "{:?}", o.result);
    // Interactive with an empty source behaves like /dev/null.
    let o = agent
        .run(
            &RunOptions {
                interactive: true,
                ..cmd(&["cat"])
            },
            Stdin::Null,
        )
        .await;
    assert_eq!((o.code(), o.stdout.len()), (0, 0));
    // A pipe: 3 MiB through cat, byte for byte.
    let data: Vec<u8> = (0..3u32 << 20).map(|i| (i * 7 % 256) as u8).collect();
    let o = agent
        .run(
            &RunOptions {
                interactive: true,
                ..cmd(&["cat"])
            },
            bytes(data.clone()),
        )
        .await;
    assert_eq!(o.code(), 0);
    assert!(
        o.stdout == data,
        "cat output differs ({} bytes)",
        o.stdout.len()
    );
    // The command stops reading early: no hang, its own exit code.
    let big = vec![b'a'; 20 << 20];
    let o = agent
        .run(
            &RunOptions {
                interactive: true,
                ..sh("head -c 10; exit 3")
            },
            bytes(big),
        )
        .await;
    assert_eq!(
        (o.code(), o.out()),
        (3, "aaaaaaaaaa".into()),
        "{:?}",
        o.result
    );
    // Stdin EOF propagates while stdin stays open on our side otherwise.
    let (tx, rx) = mpsc::channel(4);
    tx.send(b"line\n".to_vec()).await.expect("send");
    drop(tx);
    let o = agent
        .run(
            &RunOptions {
                interactive: true,
                ..cmd(&["wc", "-l"])
            },
            Stdin::Chunks(rx),
        )
        .await;
    assert_eq!((o.code(), o.out().trim()), (0, "1"));
}

/// Runs `script` (which prints when ready), sends `signo` once output
/// appears, and returns (exit code, stdout).
async fn signal_after_ready(agent: &Agent, script: &str, signo: i32) -> (i32, String) {
    let (ctl_tx, ctl_rx) = mpsc::unbounded_channel();
    let (ready_tx, ready_rx) = oneshot::channel();
    let mut out = Capture {
        first: Some(ready_tx),
        ..Default::default()
    };
    let mut err = Capture::default();
    tokio::spawn(async move {
        if ready_rx.await.is_ok() {
            let _ = ctl_tx.send(Control::Signal(signo));
        }
        // Keep the channel open until the run ends.
        tokio::time::sleep(Duration::from_secs(60)).await;
    });
    let r = agent
        .run_with(&sh(script), Stdin::Null, Some(ctl_rx), &mut out, &mut err)
        .await;
    (
        krypton::run::exit_code(&r),
        String::from_utf8_lossy(&out.buf).into_owned(),
    )
}

#[tokio::test]
async fn signals_reach_the_command() {
    require_agent_host!();
    let agent = Agent::start();
    let wait = "echo ready; while :; do sleep 0.05; done";
    assert_eq!(signal_after_ready(&agent, wait, libc::SIGTERM).await.0, 143);
    assert_eq!(signal_after_ready(&agent, wait, libc::SIGKILL).await.0, 137);
    assert_eq!(signal_after_ready(&agent, wait, libc::SIGINT).await.0, 130);
    // A handler in the command runs (the signal is forwarded, not turned
    // into a kill of the container).
    let trap = format!("trap 'echo caught; exit 42' TERM; {wait}");
    let (code, out) = signal_after_ready(&agent, &trap, libc::SIGTERM).await;
    assert_eq!((code, out.as_str()), (42, "ready\ncaught\n"));
}

#[tokio::test]
async fn tty_mode_merges_streams_and_resizes() {
    require_agent_host!();
    let agent = Agent::start();
    let probe = "if [ -t 0 ] && [ -t 1 ]; then echo tty; else echo notty; fi; echo err >&2";
    let o = agent.run(&sh(probe), Stdin::Null).await;
    assert_eq!(
        (o.code(), o.out(), o.err()),
        (0, "notty\n".into(), "err\n".into())
    );
    let o = agent
        .run(
            &RunOptions {
                tty: true,
                ..sh(&format!("{probe}; stty size"))
            },
            Stdin::Null,
        )
        .await;
    assert_eq!(o.code(), 0, "{:?}", o.result);
    assert_eq!(o.out().replace('\r', ""), "tty\nerr\n33 99\n");
    assert!(o.stderr.is_empty());
    // Resize, then let the command read a line and print its size.
    let (ctl_tx, ctl_rx) = mpsc::unbounded_channel();
    let (in_tx, in_rx) = mpsc::channel(4);
    tokio::spawn(async move {
        let _ = ctl_tx.send(Control::Resize {
            rows: 50,
            cols: 132,
        });
        tokio::time::sleep(Duration::from_millis(300)).await;
        let _ = in_tx.send(b"go\r".to_vec()).await;
        tokio::time::sleep(Duration::from_secs(60)).await;
    });
    let opts = RunOptions {
        tty: true,
        interactive: true,
        ..sh("read x; echo \"got $x\"; stty size")
    };
    let o = agent
        .run_ctl(&opts, Stdin::Chunks(in_rx), Some(ctl_rx))
        .await;
    assert_eq!(o.code(), 0, "{:?}", o.result);
    let out = o.out().replace('\r', "");
    assert!(out.ends_with("got go\n50 132\n"), "{out:?}");
}
