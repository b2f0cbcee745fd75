use std::io::Cursor;

use crate::*;

fn sample_exec() -> ExecRequest {
    ExecRequest {
        id: 7,
        argv: vec!["/bin/sh".into(), "-c".into(), "echo hi".into()],
        env: vec!["PATH=/bin".into(), "X=ü".into()],
        cwd: "/tmp".into(),
        uid: 1000,
        gid: 100,
        tty: true,
        rows: 24,
        cols: 80,
        rootfs: "/dev/vda".into(),
        hostname: "box".into(),
        limits: Limits {
            memory_bytes: Some(64 << 20),
            pids: Some(32),
            cpu: Some((50_000, 100_000)),
        },
        mounts: vec![
            Mount {
                tag: "krypton-v0".into(),
                target: "/data".into(),
                read_only: false,
            },
            Mount {
                tag: "t".into(),
                target: "/a/b c".into(),
                read_only: true,
            },
        ],
        user: "app:staff".into(),
        image: Some(ImageRoot {
            disk: "/dev/vdb".into(),
            layers: vec![
                Layer {
                    offset: 1 << 20,
                    size: 8192,
                },
                Layer {
                    offset: (1 << 20) + 8192,
                    size: 1 << 30,
                },
            ],
            scratch: String::new(),
        }),
        oci: None,
    }
}

fn all_messages() -> Vec<Message> {
    vec![
        Message::Hello {
            version: PROTOCOL_VERSION,
            caps: caps::TTY | caps::CGROUPS,
        },
        Message::Exec(Box::new(sample_exec())),
        Message::Exec(Box::new(ExecRequest {
            argv: vec!["true".into()],
            ..Default::default()
        })),
        Message::Stdin {
            id: 1,
            data: vec![1, 2, 3],
        },
        Message::Stdin {
            id: 1,
            data: vec![0xaa; MAX_CHUNK],
        },
        Message::StdinEof { id: 1 },
        Message::Signal { id: 1, signo: 15 },
        Message::Resize {
            id: 1,
            rows: 50,
            cols: 132,
        },
        Message::Shutdown,
        Message::Restored {
            entropy: vec![7; 64],
            unix_time_ns: 1_796_000_000_123_456_789,
        },
        Message::Started { id: 1, pid: 4242 },
        Message::ExecError {
            id: 1,
            code: 127,
            message: "not found".into(),
        },
        Message::Output {
            id: 1,
            stream: Stream::Stderr,
            data: b"err".to_vec(),
        },
        Message::OutputEof {
            id: 1,
            stream: Stream::Stdout,
        },
        Message::Exit {
            id: 1,
            status: ExitStatus::Code(123),
        },
        Message::Exit {
            id: 1,
            status: ExitStatus::Signal(9),
        },
        Message::Error {
            id: 0,
            message: "bad".into(),
        },
    ]
}

#[test]
fn round_trip_every_message() {
    for m in all_messages() {
        let frame = encode(&m).expect("encode");
        let len = u32::from_le_bytes(frame[..4].try_into().expect("4 bytes")) as usize;
        assert_eq!(len, frame.len() - 4);
        assert_eq!(decode(&frame[4..]).expect("decode"), m);
        assert_eq!(read_message(&mut Cursor::new(&frame)).expect("read"), m);
    }
}

#[test]
fn stream_of_frames_then_clean_close() {
    let mut buf = Vec::new();
    for m in all_messages() {
        write_message(&mut buf, &m).expect("write");
    }
    let mut cur = Cursor::new(buf);
    let mut fr = FrameReader::default();
    for m in all_messages() {
        assert_eq!(fr.read(&mut cur).expect("read"), m);
    }
    assert!(matches!(fr.read(&mut cur), Err(ProtocolError::Closed)));
}

#[test]
fn every_truncation_is_rejected() {
    for m in all_messages() {
        let frame = encode(&m).expect("encode");
        // Every cut of small frames; a sample of cuts for the 64 KiB one.
        let step = if frame.len() > 1024 { 997 } else { 1 };
        for cut in (1..frame.len()).step_by(step) {
            let err = read_message(&mut Cursor::new(&frame[..cut])).expect_err("truncated");
            assert!(
                matches!(err, ProtocolError::Truncated),
                "{m:?} cut {cut}: {err:?}"
            );
        }
        // Shortening the body while fixing up the length must also fail.
        for cut in (0..frame.len() - 4).step_by(step) {
            assert!(decode(&frame[4..4 + cut]).is_err(), "{m:?} body cut {cut}");
        }
    }
}

#[test]
fn trailing_bytes_rejected() {
    let mut frame = encode(&Message::StdinEof { id: 3 }).expect("encode");
    frame.push(0);
    assert!(matches!(
        decode(&frame[4..]),
        Err(ProtocolError::Trailing(1))
    ));
}

#[test]
fn bad_lengths_rejected() {
    for len in [0u32, MAX_FRAME as u32 + 1, u32::MAX] {
        let mut bytes = len.to_le_bytes().to_vec();
        bytes.extend_from_slice(&[T_PAD; 16]);
        let err = read_message(&mut Cursor::new(bytes)).expect_err("bad len");
        assert!(matches!(err, ProtocolError::BadLength(l) if l == len));
    }
}
const T_PAD: u8 = 0x15;

#[test]
fn unknown_type_and_bad_tags_rejected() {
    assert!(matches!(
        decode(&[0xee]),
        Err(ProtocolError::UnknownType(0xee))
    ));
    assert!(matches!(decode(&[]), Err(ProtocolError::Short(_))));
    // Output with stream tag 3.
    let body = [0x22, 1, 0, 0, 0, 3, 0, 0, 0, 0];
    assert!(matches!(
        decode(&body),
        Err(ProtocolError::BadTag {
            field: "stream",
            value: 3
        })
    ));
    // Signal 0 and 65 are out of range.
    for s in [0i32, 65, -1] {
        let mut body = vec![0x13, 1, 0, 0, 0];
        body.extend_from_slice(&s.to_le_bytes());
        assert!(
            matches!(decode(&body), Err(ProtocolError::OutOfBounds { .. })),
            "{s}"
        );
    }
}

#[test]
fn oversized_fields_rejected() {
    // Data chunk above MAX_CHUNK.
    let mut body = vec![0x11, 1, 0, 0, 0];
    body.extend_from_slice(&(MAX_CHUNK as u32 + 1).to_le_bytes());
    body.resize(body.len() + MAX_CHUNK + 1, 0);
    assert!(matches!(
        decode(&body),
        Err(ProtocolError::OutOfBounds { field: "data", .. })
    ));
    // Huge argv count with no bytes behind it: rejected without allocating.
    let mut body = vec![0x10, 1, 0, 0, 0];
    body.extend_from_slice(&u32::MAX.to_le_bytes());
    assert!(matches!(
        decode(&body),
        Err(ProtocolError::OutOfBounds { field: "argv", .. })
    ));
    // Encoding refuses oversized data.
    let big = Message::Stdin {
        id: 1,
        data: vec![0; MAX_CHUNK + 1],
    };
    assert!(matches!(encode(&big), Err(ProtocolError::TooLarge)));
    // Encoding refuses an exec that would not fit in one frame.
    let huge = ExecRequest {
        argv: vec!["x".repeat(MAX_STRING); 20],
        ..Default::default()
    };
    assert!(matches!(
        encode(&Message::Exec(Box::new(huge))),
        Err(ProtocolError::TooLarge)
    ));
}

#[test]
fn invalid_strings_rejected() {
    let mut m = encode(&Message::Error {
        id: 0,
        message: "ab".into(),
    })
    .expect("encode");
    let n = m.len();
    m[n - 1] = 0xff;
    assert!(matches!(decode(&m[4..]), Err(ProtocolError::BadString(_))));
    m[n - 1] = 0;
    assert!(matches!(decode(&m[4..]), Err(ProtocolError::BadString(_))));
    let exec = ExecRequest {
        argv: vec!["a\0b".into()],
        ..Default::default()
    };
    assert!(encode(&Message::Exec(Box::new(exec))).is_err());
    assert!(
        encode(&Message::Exec(Box::default())).is_err(),
        "empty argv"
    );
}

#[test]
fn bad_mounts_rejected() {
    for (tag, target) in [
        ("", "/data"),
        (&"x".repeat(37)[..], "/data"),
        ("t", "data"),
        ("t", "/"),
        ("t", "/a/../etc"),
        ("t", ""),
    ] {
        let exec = ExecRequest {
            argv: vec!["true".into()],
            mounts: vec![Mount {
                tag: tag.into(),
                target: target.into(),
                read_only: false,
            }],
            ..Default::default()
        };
        assert!(
            encode(&Message::Exec(Box::new(exec))).is_err(),
            "{tag:?} {target:?}"
        );
    }
    // A hostile frame: too many mounts, a bad read-only byte, a bad target.
    let ok = ExecRequest {
        argv: vec!["true".into()],
        mounts: vec![Mount {
            tag: "t".into(),
            target: "/d".into(),
            read_only: true,
        }],
        ..Default::default()
    };
    let frame = encode(&Message::Exec(Box::new(ok.clone()))).expect("encode");
    assert_eq!(
        decode(&frame[4..]).expect("decode"),
        Message::Exec(Box::new(ok))
    );
    // The mounts end 5 bytes before the frame does (empty user, no image).
    let n = frame.len() - 5;
    let mut bad = frame.clone();
    bad[n - 1] = 2;
    assert!(decode(&bad[4..]).is_err(), "ro byte 2");
    let mut bad = frame.clone();
    bad[n - 2] = b'.';
    bad[n - 3] = b'.';
    assert!(decode(&bad[4..]).is_err(), "relative target ..");
    let mut bad = frame;
    bad[n - 16] = 33;
    assert!(decode(&bad[4..]).is_err(), "33 mounts");
}

#[test]
fn bad_image_roots_rejected() {
    let layer = |offset, size| Layer { offset, size };
    for layers in [
        vec![],
        vec![layer(4096, 0)],
        vec![layer(4097, 4096)],
        vec![layer(4096, 4095)],
        vec![layer(u64::MAX - 4095, 8192)],
        vec![layer(4096, 4096); MAX_LAYERS + 1],
    ] {
        let exec = ExecRequest {
            argv: vec!["true".into()],
            image: Some(ImageRoot {
                disk: "/dev/vdb".into(),
                layers: layers.clone(),
                scratch: String::new(),
            }),
            ..Default::default()
        };
        assert!(
            encode(&Message::Exec(Box::new(exec))).is_err(),
            "{}",
            layers.len()
        );
    }
    // A hostile frame: the layer count beyond the bound, an unaligned size.
    let ok = ExecRequest {
        argv: vec!["true".into()],
        image: Some(ImageRoot {
            disk: "/dev/vdb".into(),
            layers: vec![layer(4096, 4096)],
            scratch: String::new(),
        }),
        ..Default::default()
    };
    let frame = encode(&Message::Exec(Box::new(ok.clone()))).expect("encode");
    assert_eq!(
        decode(&frame[4..]).expect("decode"),
        Message::Exec(Box::new(ok))
    );
    // The image is last but for the `oci` presence byte.
    let n = frame.len() - 1;
    let mut bad = frame.clone();
    bad[n - 8] = 1; // size 4096 + 1
    assert!(decode(&bad[4..]).is_err(), "unaligned size");
    let mut bad = frame.clone();
    bad[n - 20..n - 16].copy_from_slice(&(MAX_LAYERS as u32 + 1).to_le_bytes());
    assert!(decode(&bad[4..]).is_err(), "too many layers");
    let mut bad = frame;
    // "/dev/vdb" is the 8 bytes before scratch (4), count (4), layer (16).
    assert_eq!(&bad[n - 32..n - 24], b"/dev/vdb");
    bad[n - 32] = b'x';
    assert!(decode(&bad[4..]).is_err(), "relative disk path");
}

#[test]
fn exit_status_codes() {
    assert_eq!(ExitStatus::Code(3).code(), 3);
    assert_eq!(ExitStatus::Signal(9).code(), 137);
    assert_eq!(ExitStatus::Signal(15).code(), 143);
}

/// Cheap deterministic mutation fuzzing: flipping bytes of valid frames
/// must never panic.
#[test]
fn mutated_frames_never_panic() {
    let mut seed = 0x1234_5678_u32;
    let mut rnd = move || {
        seed ^= seed << 13;
        seed ^= seed >> 17;
        seed ^= seed << 5;
        seed
    };
    for m in all_messages() {
        let frame = encode(&m).expect("encode");
        for _ in 0..500 {
            let mut f = frame.clone();
            let flips = 1 + rnd() % 4;
            for _ in 0..flips {
                let i = rnd() as usize % f.len();
                f[i] = rnd() as u8;
            }
            let _ = read_message(&mut Cursor::new(&f));
            let _ = decode(&f[4..]);
        }
    }
}

#[tokio::test]
#[cfg(feature = "tokio")]
async fn async_round_trip() {
    let (mut a, mut b) = tokio::io::duplex(1 << 16);
    let msgs = all_messages();
    let sent = msgs.clone();
    let writer = tokio::spawn(async move {
        for m in &sent {
            write_message_async(&mut a, m).await.expect("write");
        }
    });
    for m in msgs {
        assert_eq!(read_message_async(&mut b).await.expect("read"), m);
    }
    writer.await.expect("join");
    assert!(matches!(
        read_message_async(&mut b).await,
        Err(ProtocolError::Closed)
    ));
}

#[test]
fn image_root_scratch_paths() {
    let root = |scratch: &str| ImageRoot {
        disk: "/dev/vdb".into(),
        layers: vec![Layer {
            offset: 0,
            size: 4096,
        }],
        scratch: scratch.into(),
    };
    for ok in ["", "/dev/vdc", "/dev/disk/by-id/x"] {
        assert!(root(ok).check().is_ok(), "{ok:?}");
    }
    for bad in [
        "vdc",
        "/dev/",
        "/tmp/x",
        "/dev/vdb",
        "/dev/../etc/x",
        "dev/vdc",
    ] {
        assert!(root(bad).check().is_err(), "{bad:?}");
    }
}
