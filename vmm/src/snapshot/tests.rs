use super::*;

const KVM: Backend = Backend::Kvm;

struct TmpDir(PathBuf);

impl TmpDir {
    fn new(tag: &str) -> TmpDir {
        let p = std::env::temp_dir().join(format!("krypton-snap-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).expect("temp dir");
        TmpDir(p)
    }
}

impl Drop for TmpDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn state() -> MachineState {
    let mut s = MachineState::default();
    s.vcpus.push(crate::hv::VcpuState::default());
    s.vm.clock_ns = 77;
    s
}

/// 2 MiB of RAM: a marker page, zeros, a tail marker.
fn ram() -> Vec<u8> {
    let mut m = vec![0u8; 2 << 20];
    m[..4096].fill(0x5a);
    m[(2 << 20) - 1] = 0xa5;
    m
}

#[test]
fn write_then_open_round_trips_and_checks_identity() {
    let dir = TmpDir::new("rt");
    let path = dir.0.join("a.snap");
    let (s, m) = (state(), ram());
    write(&path, KVM, 0x1234, &s, &[&m]).expect("write");
    let snap = Snapshot::open(&path).expect("open");
    assert_eq!(snap.state, s);
    assert_eq!(snap.header.mem_len, 2 << 20);
    assert_eq!(snap.header.mem_mib, 2);
    assert!(snap.check_identity(KVM, 0x1234, 2, 1).is_ok());
    assert!(matches!(
        snap.check_identity(KVM, 0x1235, 2, 1),
        Err(SnapshotError::Mismatch { .. })
    ));
    assert!(snap.check_identity(KVM, 0x1234, 4, 1).is_err());
    assert_eq!(snap.header.backend, KVM);
    assert!(snap.header.mem_offset.is_multiple_of(MEM_ALIGN));
    // A KVM snapshot is refused on WHP (and the reverse), with a reason.
    let e = snap
        .check_identity(Backend::Whp, 0x1234, 2, 1)
        .expect_err("restored a KVM snapshot on WHP");
    assert!(e.to_string().contains("holds KVM vCPU state"), "{e}");
    // (Another file: Windows cannot replace one that is open.)
    let path = dir.0.join("w.snap");
    write(&path, Backend::Whp, 0x1234, &s, &[&m]).expect("write");
    let snap = Snapshot::open(&path).expect("open");
    assert_eq!(snap.header.backend, Backend::Whp);
    assert!(snap.check_identity(Backend::Whp, 0x1234, 2, 1).is_ok());
    assert!(snap.check_identity(KVM, 0x1234, 2, 1).is_err());
    // No temporary file is left next to them.
    let names: Vec<_> = std::fs::read_dir(&dir.0).expect("ls").collect();
    assert_eq!(names.len(), 2);
}

/// On Windows (run under wine) this checks the `PAGE_WRITECOPY` view.
#[test]
fn memory_maps_copy_on_write() {
    use vm_memory::{Bytes, GuestAddress};
    let dir = TmpDir::new("cow");
    let path = dir.0.join("a.snap");
    write(&path, KVM, 1, &state(), &[&ram()]).expect("write");
    let snap = Snapshot::open(&path).expect("open");
    let mem = map_guest_memory(&snap, &[(0, 2 << 20)]).expect("map");
    assert_eq!(mem.read_obj::<u8>(GuestAddress(0)).ok(), Some(0x5a));
    assert_eq!(mem.read_obj::<u8>(GuestAddress(8192)).ok(), Some(0));
    assert_eq!(
        mem.read_obj::<u8>(GuestAddress((2 << 20) - 1)).ok(),
        Some(0xa5)
    );
    mem.write_obj(0x77u8, GuestAddress(0)).expect("write guest");
    assert_eq!(mem.read_obj::<u8>(GuestAddress(0)).ok(), Some(0x77));
    // The file is unchanged and a second mapping sees the original.
    let again =
        map_guest_memory(&Snapshot::open(&path).expect("open"), &[(0, 2 << 20)]).expect("map");
    assert_eq!(again.read_obj::<u8>(GuestAddress(0)).ok(), Some(0x5a));
    drop(again);
    let on_disk = std::fs::read(&path).expect("read back");
    assert_eq!(on_disk[snap.header.mem_offset as usize], 0x5a);
    assert!(map_guest_memory(&snap, &[(0, 4 << 20)]).is_err());
}

#[test]
fn damaged_files_are_rejected_with_a_reason() {
    let dir = TmpDir::new("bad");
    let path = dir.0.join("a.snap");
    write(&path, KVM, 1, &state(), &[&ram()]).expect("write");
    let good = std::fs::read(&path).expect("read");
    let check = |bytes: &[u8], want: &str| {
        let p = dir.0.join("b.snap");
        std::fs::write(&p, bytes).expect("write");
        let e = Snapshot::open(&p).expect_err("accepted a damaged snapshot");
        let msg = e.to_string();
        assert!(msg.contains(want), "{msg:?} lacks {want:?}");
    };
    check(b"", "not a Krypton snapshot");
    check(
        b"hello world, not a snapshot at all",
        "not a Krypton snapshot",
    );
    check(&good[..100], "corrupt");
    check(&good[..(HEADER_LEN as usize + 10)], "corrupt");
    check(&good[..good.len() - 1], "corrupt");
    let mut v = good.clone();
    v[8] = 99; // version
    check(&v, "format version 99");
    let mut b = good.clone();
    b[12] = 9; // backend tag
    check(&b, "unknown hypervisor backend");
    let mut h = good.clone();
    h[20] ^= 1; // inside the header
    check(&h, "header checksum");
    let mut s = good.clone();
    s[HEADER_LEN as usize + 3] ^= 0x40; // inside the state
    check(&s, "state checksum");
}
