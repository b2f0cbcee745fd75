use crate::oci::*;
use crate::*;

fn sample() -> OciSettings {
    OciSettings {
        root_tag: "krypton-v0".into(),
        root_readonly: true,
        additional_gids: vec![10, 20],
        binds: vec![Bind {
            tag: "krypton-v1".into(),
            source: "hosts".into(),
            target: "/etc/hosts".into(),
            read_only: false,
        }],
        guest_mounts: vec![GuestMount {
            fstype: "tmpfs".into(),
            target: "/run".into(),
            data: "mode=755".into(),
            flags: 2,
        }],
        rlimits: vec![Rlimit {
            resource: 7,
            soft: 1024,
            hard: 4096,
        }],
        no_new_privileges: true,
        caps: Some(Capabilities {
            bounding: 1,
            effective: 2,
            permitted: 3,
            inheritable: 4,
            ambient: 5,
        }),
        join: 0,
    }
}

fn exec_with(oci: OciSettings) -> Message {
    Message::Exec(Box::new(ExecRequest {
        id: 1,
        argv: vec!["true".into()],
        oci: Some(Box::new(oci)),
        ..ExecRequest::default()
    }))
}

#[test]
fn oci_settings_round_trip() {
    for o in [
        sample(),
        OciSettings {
            root_tag: String::new(),
            join: 42,
            caps: None,
            ..sample()
        },
    ] {
        let m = exec_with(o);
        let bytes = encode(&m).expect("encode");
        assert_eq!(decode(&bytes[4..]).expect("decode"), m);
        // Every truncation is an error, never a panic.
        for cut in 5..bytes.len() {
            assert!(decode(&bytes[4..cut]).is_err(), "cut at {cut}");
        }
    }
}

#[test]
fn bad_oci_settings_rejected() {
    let cases: Vec<OciSettings> = vec![
        OciSettings {
            root_tag: String::new(),
            ..sample()
        },
        OciSettings {
            root_tag: "x".repeat(MAX_TAG + 1),
            ..sample()
        },
        OciSettings {
            binds: vec![Bind {
                tag: "t".into(),
                source: "../etc".into(),
                target: "/x".into(),
                read_only: false,
            }],
            ..sample()
        },
        OciSettings {
            binds: vec![Bind {
                tag: "t".into(),
                source: "/abs".into(),
                target: "/x".into(),
                read_only: false,
            }],
            ..sample()
        },
        OciSettings {
            guest_mounts: vec![GuestMount {
                fstype: "ext4".into(),
                target: "/x".into(),
                ..GuestMount::default()
            }],
            ..sample()
        },
        OciSettings {
            guest_mounts: vec![GuestMount {
                fstype: "tmpfs".into(),
                target: "/a/../b".into(),
                ..GuestMount::default()
            }],
            ..sample()
        },
        OciSettings {
            rlimits: vec![Rlimit {
                resource: 16,
                soft: 0,
                hard: 0,
            }],
            ..sample()
        },
        OciSettings {
            additional_gids: vec![0; MAX_GROUPS + 1],
            ..sample()
        },
    ];
    for o in cases {
        assert!(o.check().is_err(), "{o:?}");
        assert!(encode(&exec_with(o)).is_err());
    }
    // A well-formed frame whose settings fail the check is rejected too.
    let good = encode(&exec_with(sample())).expect("encode");
    let mut bad = good.clone();
    let pos = bad
        .windows(5)
        .position(|w| w == b"tmpfs")
        .expect("fstype in frame");
    bad[pos..pos + 5].copy_from_slice(b"ext4x");
    assert!(decode(&bad[4..]).is_err());
}
