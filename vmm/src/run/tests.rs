use std::time::Duration;

use krypton_protocol::{
    ExitStatus, Message, PROTOCOL_VERSION, Stream, read_message_async, write_message_async,
};
use tokio::io::{DuplexStream, duplex};
use tokio::sync::mpsc;

use super::*;

fn opts(argv: &[&str]) -> RunOptions {
    RunOptions {
        argv: argv.iter().map(|s| s.to_string()).collect(),
        ..Default::default()
    }
}

/// Fake agent: hello exchange, returns the Exec it received.
async fn agent_start(s: &mut DuplexStream) -> krypton_protocol::ExecRequest {
    write_message_async(
        s,
        &Message::Hello {
            version: PROTOCOL_VERSION,
            caps: 0,
        },
    )
    .await
    .expect("test step");
    assert!(matches!(
        read_message_async(s).await.expect("test step"),
        Message::Hello {
            version: PROTOCOL_VERSION,
            ..
        }
    ));
    match read_message_async(s).await.expect("test step") {
        Message::Exec(e) => *e,
        other => panic!("expected exec, got {other:?}"),
    }
}

async fn run(
    stream: DuplexStream,
    o: &RunOptions,
    stdin: Stdin,
    control: Option<mpsc::UnboundedReceiver<Control>>,
) -> (Result<i32, RunError>, Vec<u8>, Vec<u8>) {
    let (mut out, mut err) = (Vec::new(), Vec::new());
    let io = RunIo {
        stdin,
        stdout: &mut out,
        stderr: &mut err,
        control,
        size: Some((33, 99)),
    };
    let r = run_with_io(stream, o, io).await;
    (r, out, err)
}

#[tokio::test]
async fn echo_session_streams_stdin_and_output_before_exit() {
    let (host, mut agent) = duplex(1 << 16);
    let fake = tokio::spawn(async move {
        let e = agent_start(&mut agent).await;
        assert_eq!(e.argv, ["cat"]);
        assert_eq!((e.rows, e.cols, e.tty), (33, 99, true));
        write_message_async(&mut agent, &Message::Started { id: e.id, pid: 9 })
            .await
            .expect("test step");
        let mut got = Vec::new();
        loop {
            match read_message_async(&mut agent).await.expect("test step") {
                Message::Stdin { data, .. } => got.extend(data),
                Message::StdinEof { .. } => break,
                other => panic!("unexpected {other:?}"),
            }
        }
        for (stream, data) in [
            (Stream::Stdout, got.clone()),
            (Stream::Stderr, b"e".to_vec()),
        ] {
            for chunk in data.chunks(krypton_protocol::MAX_CHUNK) {
                let m = Message::Output {
                    id: e.id,
                    stream,
                    data: chunk.to_vec(),
                };
                write_message_async(&mut agent, &m)
                    .await
                    .expect("test step");
            }
            write_message_async(&mut agent, &Message::OutputEof { id: e.id, stream })
                .await
                .expect("test step");
        }
        let exit = Message::Exit {
            id: e.id,
            status: ExitStatus::Code(3),
        };
        write_message_async(&mut agent, &exit)
            .await
            .expect("test step");
        got
    });
    let input: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
    let o = RunOptions {
        interactive: true,
        tty: true,
        ..opts(&["cat"])
    };
    let stdin = Stdin::Reader(Box::new(std::io::Cursor::new(input.clone())));
    let (r, out, err) = run(host, &o, stdin, None).await;
    assert_eq!(r.expect("test step"), 3);
    assert_eq!(out, input);
    assert_eq!(err, b"e");
    assert_eq!(fake.await.expect("test step"), input);
}

#[tokio::test]
async fn non_interactive_sends_eof_and_ignores_stdin() {
    let (host, mut agent) = duplex(1 << 16);
    let fake = tokio::spawn(async move {
        let e = agent_start(&mut agent).await;
        let first = read_message_async(&mut agent).await.expect("test step");
        write_message_async(
            &mut agent,
            &Message::Exit {
                id: e.id,
                status: ExitStatus::Code(0),
            },
        )
        .await
        .expect("test step");
        first
    });
    let stdin = Stdin::Reader(Box::new(std::io::Cursor::new(b"ignored".to_vec())));
    let (r, _, _) = run(host, &opts(&["true"]), stdin, None).await;
    assert_eq!(r.expect("test step"), 0);
    assert_eq!(fake.await.expect("test step"), Message::StdinEof { id: 1 });
}

#[tokio::test]
async fn exec_errors_map_to_126_127_and_125() {
    for (code, want) in [(127u8, 127), (126, 126), (125, 125)] {
        let (host, mut agent) = duplex(1 << 16);
        tokio::spawn(async move {
            let e = agent_start(&mut agent).await;
            let m = Message::ExecError {
                id: e.id,
                code,
                message: "nope".into(),
            };
            write_message_async(&mut agent, &m)
                .await
                .expect("test step");
            let _ = read_message_async(&mut agent).await;
        });
        let (r, _, _) = run(host, &opts(&["x"]), Stdin::Null, None).await;
        assert!(r.is_err(), "{r:?}");
        assert_eq!(exit_code(&r), want);
    }
}

#[tokio::test]
async fn signal_is_forwarded_and_signal_exit_is_128_plus_n() {
    let (host, mut agent) = duplex(1 << 16);
    tokio::spawn(async move {
        let e = agent_start(&mut agent).await;
        write_message_async(&mut agent, &Message::Started { id: e.id, pid: 9 })
            .await
            .expect("test step");
        loop {
            match read_message_async(&mut agent).await.expect("test step") {
                Message::Signal { signo, .. } => {
                    let m = Message::Exit {
                        id: e.id,
                        status: ExitStatus::Signal(signo),
                    };
                    write_message_async(&mut agent, &m)
                        .await
                        .expect("test step");
                }
                Message::StdinEof { .. } => {}
                other => panic!("unexpected {other:?}"),
            }
        }
    });
    let (tx, rx) = mpsc::unbounded_channel();
    tx.send(Control::Signal(15)).expect("test step");
    let (r, _, _) = run(host, &opts(&["sleep", "9"]), Stdin::Null, Some(rx)).await;
    assert_eq!(r.expect("test step"), 143);
}

#[tokio::test]
async fn timeout_is_124() {
    let (host, mut agent) = duplex(1 << 16);
    tokio::spawn(async move {
        let e = agent_start(&mut agent).await;
        write_message_async(&mut agent, &Message::Started { id: e.id, pid: 9 })
            .await
            .expect("test step");
        tokio::time::sleep(Duration::from_secs(30)).await;
    });
    let o = RunOptions {
        timeout: Some(Duration::from_millis(100)),
        ..opts(&["sleep"])
    };
    let (r, _, _) = run(host, &o, Stdin::Null, None).await;
    assert!(matches!(r, Err(RunError::Timeout)));
    assert_eq!(exit_code(&r), 124);
}

/// The timeout counts the command's run time only: a slow container
/// set-up before `Started` does not use it up.
#[tokio::test]
async fn timeout_starts_when_the_command_starts() {
    let (host, mut agent) = duplex(1 << 16);
    tokio::spawn(async move {
        let e = agent_start(&mut agent).await;
        tokio::time::sleep(Duration::from_millis(400)).await;
        for m in [
            Message::Started { id: e.id, pid: 9 },
            Message::OutputEof {
                id: e.id,
                stream: krypton_protocol::Stream::Stdout,
            },
            Message::OutputEof {
                id: e.id,
                stream: krypton_protocol::Stream::Stderr,
            },
            Message::Exit {
                id: e.id,
                status: krypton_protocol::ExitStatus::Code(0),
            },
        ] {
            write_message_async(&mut agent, &m)
                .await
                .expect("test step");
        }
        tokio::time::sleep(Duration::from_secs(30)).await;
    });
    let o = RunOptions {
        timeout: Some(Duration::from_millis(150)),
        ..opts(&["true"])
    };
    let (r, _, _) = run(host, &o, Stdin::Null, None).await;
    assert_eq!(r.expect("exit before the limit"), 0);
}

#[tokio::test]
async fn agent_failures_are_125() {
    // Closes right after the exec.
    let (host, mut agent) = duplex(1 << 16);
    tokio::spawn(async move {
        let _ = agent_start(&mut agent).await;
    });
    let (r, _, _) = run(host, &opts(&["x"]), Stdin::Null, None).await;
    assert_eq!(exit_code(&r), 125, "{r:?}");
    // Wrong protocol version.
    let (host, mut agent) = duplex(1 << 16);
    tokio::spawn(async move {
        write_message_async(
            &mut agent,
            &Message::Hello {
                version: 99,
                caps: 0,
            },
        )
        .await
        .expect("test step");
        let _ = read_message_async(&mut agent).await;
    });
    let (r, _, _) = run(host, &opts(&["x"]), Stdin::Null, None).await;
    assert!(matches!(r, Err(RunError::Handshake(_))), "{r:?}");
    // Garbage instead of frames.
    let (host, mut agent) = duplex(1 << 16);
    tokio::spawn(async move {
        use tokio::io::AsyncWriteExt;
        agent.write_all(&[0xff; 64]).await.expect("test step");
    });
    let (r, _, _) = run(host, &opts(&["x"]), Stdin::Null, None).await;
    assert!(matches!(r, Err(RunError::Protocol(_))), "{r:?}");
    // Empty argv is refused locally.
    let (host, _agent) = duplex(64);
    let (r, _, _) = run(host, &RunOptions::default(), Stdin::Null, None).await;
    assert!(matches!(r, Err(RunError::Invalid(_))));
}

#[tokio::test]
async fn mounts_need_an_agent_that_can_mount_and_are_sent() {
    let mount = krypton_protocol::Mount {
        tag: "krypton-v0".into(),
        target: "/data".into(),
        read_only: true,
    };
    let o = RunOptions {
        mounts: vec![mount.clone()],
        ..opts(&["true"])
    };
    // An agent without caps::MOUNTS: refused before the Exec.
    let (host, mut agent) = duplex(1 << 16);
    let fake = tokio::spawn(async move {
        write_message_async(
            &mut agent,
            &Message::Hello {
                version: PROTOCOL_VERSION,
                caps: 0,
            },
        )
        .await
        .expect("test step");
        let _ = read_message_async(&mut agent).await;
        read_message_async(&mut agent).await.is_ok()
    });
    let (r, _, _) = run(host, &o, Stdin::Null, None).await;
    let e = r.expect_err("no mount support");
    assert!(
        e.to_string().contains("handshake") || format!("{e:?}").contains("mount"),
        "{e:?}"
    );
    assert!(!fake.await.expect("test step"), "no Exec was sent");
    // An agent with it gets the mounts in the Exec.
    let (host, mut agent) = duplex(1 << 16);
    let fake = tokio::spawn(async move {
        write_message_async(
            &mut agent,
            &Message::Hello {
                version: PROTOCOL_VERSION,
                caps: krypton_protocol::caps::MOUNTS,
            },
        )
        .await
        .expect("test step");
        let _ = read_message_async(&mut agent).await;
        let Message::Exec(e) = read_message_async(&mut agent).await.expect("exec") else {
            panic!("expected exec")
        };
        let exit = Message::Exit {
            id: e.id,
            status: ExitStatus::Code(0),
        };
        write_message_async(&mut agent, &exit)
            .await
            .expect("test step");
        e.mounts
    });
    let (r, _, _) = run(host, &o, Stdin::Null, None).await;
    assert_eq!(r.expect("ran"), 0);
    assert_eq!(fake.await.expect("test step"), vec![mount]);
}
