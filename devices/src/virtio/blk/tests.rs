//! Drives the device as Linux's virtio_mmio + virtio_blk would, over plain
//! guest memory, including malicious chains.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};

use vm_memory::{Bytes, GuestAddress};

use super::*;
use crate::GuestMem;
use crate::virtio::mmio::{reg, status};
use crate::virtio::testing::{Driver, F_INDIRECT, F_NEXT, F_WRITE, PulseCounter, Ring, driver_for};

const HDR: u64 = 0x20_0000;
const DATA: u64 = 0x30_0000;
const STATUS: u64 = 0x2f_0000;

struct TempImage(PathBuf);

impl TempImage {
    fn new(sectors: u64) -> TempImage {
        static N: AtomicU32 = AtomicU32::new(0);
        let path = std::env::temp_dir().join(format!(
            "krypton-blk-test-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::SeqCst)
        ));
        let data: Vec<u8> = (0..sectors * SECTOR_SIZE).map(pattern).collect();
        std::fs::write(&path, data).expect("write image");
        TempImage(path)
    }
    fn contents(&self) -> Vec<u8> {
        std::fs::read(&self.0).expect("read image")
    }
}

impl Drop for TempImage {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

fn pattern(i: u64) -> u8 {
    (i.wrapping_mul(7) ^ (i >> 9)) as u8
}

struct Harness {
    d: Driver,
    mem: GuestMem,
    irq: Arc<PulseCounter>,
    ring: Ring,
    img: TempImage,
    id: [u8; 20],
}

fn harness(sectors: u64, read_only: bool) -> Harness {
    let img = TempImage::new(sectors);
    let block = Block::new(&img.0, read_only).expect("open image");
    let id = block.id();
    let (mut d, mem, irq) = driver_for(Box::new(block));
    let ring = Ring::new(&mem, 0x10000, QUEUE_SIZE);
    bring_up(&mut d, &ring);
    Harness {
        d,
        mem,
        irq,
        ring,
        img,
        id,
    }
}

fn bring_up(d: &mut Driver, ring: &Ring) {
    d.negotiate(u64::MAX);
    d.setup_queue(0, ring);
    d.driver_ok();
    assert!(d.t.is_activated());
}

impl Harness {
    fn header(&self, kind: u32, sector: u64) {
        self.mem.write_obj(kind, GuestAddress(HDR)).expect("type");
        self.mem
            .write_obj(0u32, GuestAddress(HDR + 4))
            .expect("ioprio");
        self.mem
            .write_obj(sector, GuestAddress(HDR + 8))
            .expect("sector");
        self.mem
            .write_obj(0xaau8, GuestAddress(STATUS))
            .expect("status");
    }

    /// Submits a chain and waits for it; returns (used len, status byte).
    fn submit(&mut self, descs: &[(u64, u32, u16)]) -> (u32, u8) {
        let head = self.ring.add_chain(&self.mem, descs);
        self.d.notify(0);
        let (id, len) = self.ring.wait_used(&self.mem).expect("request completed");
        assert_eq!(id, u32::from(head));
        (
            len,
            self.mem.read_obj(GuestAddress(STATUS)).expect("status"),
        )
    }

    /// A plain, well-formed request: header, one data segment, status.
    fn simple(&mut self, kind: u32, sector: u64, len: u32) -> (u32, u8) {
        self.header(kind, sector);
        let dir = if kind == VIRTIO_BLK_T_OUT { 0 } else { F_WRITE };
        self.submit(&[(HDR, 16, 0), (DATA, len, dir), (STATUS, 1, F_WRITE)])
    }

    fn data(&self, len: usize) -> Vec<u8> {
        let mut v = vec![0u8; len];
        self.mem
            .read_slice(&mut v, GuestAddress(DATA))
            .expect("data");
        v
    }
}

use virtio_bindings::virtio_blk::{
    VIRTIO_BLK_S_IOERR as IOERR, VIRTIO_BLK_S_OK as OK, VIRTIO_BLK_S_UNSUPP as UNSUPP,
    VIRTIO_BLK_T_FLUSH, VIRTIO_BLK_T_GET_ID, VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT,
};
const OK8: u8 = OK as u8;
const IOERR8: u8 = IOERR as u8;

#[test]
fn config_space_and_features() {
    let mut h = harness(100, false);
    assert_eq!(h.d.read(reg::DEVICE_ID), BLOCK_DEVICE_ID);
    assert_eq!(h.d.config_bytes(0, 8), 100u64.to_le_bytes());
    assert_eq!(h.d.config_bytes(12, 4), SEG_MAX.to_le_bytes());
    assert_eq!(h.d.config_bytes(20, 4), 512u32.to_le_bytes());
    assert_eq!(
        h.d.config_bytes(0x1000, 4),
        vec![0; 4],
        "beyond config reads 0"
    );
    let f = h.d.device_features();
    assert_ne!(f & (1 << VIRTIO_BLK_F_FLUSH), 0);
    assert_eq!(f & (1 << VIRTIO_BLK_F_RO), 0);
    assert_ne!(f & (1 << VIRTIO_RING_F_EVENT_IDX), 0);
    let ro = harness(1, true);
    let mut d = ro.d;
    assert_ne!(d.device_features() & (1 << VIRTIO_BLK_F_RO), 0);
}

#[test]
fn read_with_split_header_and_scattered_data() {
    let mut h = harness(64, false);
    h.header(VIRTIO_BLK_T_IN, 3);
    let (len, st) = h.submit(&[
        (HDR, 5, 0),
        (HDR + 5, 11, 0),
        (DATA, 1000, F_WRITE),
        (DATA + 1000, 2000, F_WRITE),
        (DATA + 3000, 1096, F_WRITE),
        (STATUS, 1, F_WRITE),
    ]);
    assert_eq!((len, st), (4097, OK8));
    let expect: Vec<u8> = (3 * 512..3 * 512 + 4096).map(pattern).collect();
    assert_eq!(h.data(4096), expect);
    assert!(h.irq.count() >= 1);
    assert_ne!(h.d.ack_interrupt() & 1, 0);
}

#[test]
fn write_goes_straight_to_the_file_and_reads_back() {
    let mut h = harness(64, false);
    let payload: Vec<u8> = (0..1024u32).map(|i| (i * 13 + 5) as u8).collect();
    h.mem
        .write_slice(&payload, GuestAddress(DATA))
        .expect("payload");
    // Header and first data bytes share a descriptor; status shares none.
    h.mem
        .write_slice(&payload[..100], GuestAddress(HDR + 16))
        .expect("inline");
    h.header(VIRTIO_BLK_T_OUT, 10);
    let (len, st) = h.submit(&[(HDR, 116, 0), (DATA + 100, 924, 0), (STATUS, 1, F_WRITE)]);
    assert_eq!((len, st), (1, OK8));
    let file = h.img.contents();
    assert_eq!(&file[10 * 512..10 * 512 + 1024], &payload[..]);
    assert_eq!(
        file[10 * 512 - 1],
        pattern(10 * 512 - 1),
        "neighbours untouched"
    );
    h.header(VIRTIO_BLK_T_FLUSH, 0);
    assert_eq!(h.submit(&[(HDR, 16, 0), (STATUS, 1, F_WRITE)]), (1, OK8));
    h.mem
        .write_slice(&[0u8; 1024], GuestAddress(DATA))
        .expect("clear");
    assert_eq!(h.simple(VIRTIO_BLK_T_IN, 10, 1024), (1025, OK8));
    assert_eq!(h.data(1024), payload);
}

#[test]
fn status_byte_may_share_the_last_data_descriptor() {
    let mut h = harness(8, false);
    h.header(VIRTIO_BLK_T_IN, 1);
    let (len, _) = h.submit(&[(HDR, 16, 0), (DATA, 513, F_WRITE)]);
    assert_eq!(len, 513);
    assert_eq!(
        h.mem.read_obj::<u8>(GuestAddress(DATA + 512)).expect("st"),
        OK8
    );
    let expect: Vec<u8> = (512..1024).map(pattern).collect();
    assert_eq!(h.data(512), expect);
}

#[test]
fn get_id_returns_the_serial() {
    let mut h = harness(8, false);
    assert_eq!(h.simple(VIRTIO_BLK_T_GET_ID, 0, 20), (21, OK8));
    assert_eq!(h.data(20), h.id.to_vec());
    assert!(h.id.starts_with(b"kr"));
    let other = harness(8, false);
    assert_ne!(other.id, h.id, "distinct images have distinct ids");
}

#[test]
fn bounds_alignment_and_unsupported_requests() {
    let mut h = harness(16, false);
    assert_eq!(h.simple(VIRTIO_BLK_T_IN, 15, 512), (513, OK8));
    assert_eq!(h.simple(VIRTIO_BLK_T_IN, 15, 1024).1, IOERR8);
    assert_eq!(h.simple(VIRTIO_BLK_T_IN, 16, 512).1, IOERR8);
    assert_eq!(h.simple(VIRTIO_BLK_T_OUT, u64::MAX, 512).1, IOERR8);
    assert_eq!(h.simple(VIRTIO_BLK_T_OUT, u64::MAX / 512, 512).1, IOERR8);
    assert_eq!(h.simple(VIRTIO_BLK_T_IN, 0, 100).1, IOERR8);
    assert_eq!(h.simple(11, 0, 512), (1, UNSUPP as u8));
    assert_eq!(
        h.img.contents(),
        TempImage::new(16).contents(),
        "nothing written"
    );
}

#[test]
fn read_only_disk_refuses_writes() {
    let mut h = harness(4, true);
    h.mem
        .write_slice(&[0x55; 512], GuestAddress(DATA))
        .expect("payload");
    assert_eq!(h.simple(VIRTIO_BLK_T_OUT, 0, 512).1, IOERR8);
    assert_eq!(h.img.contents()[0..512], TempImage::new(1).contents()[..]);
    assert_eq!(h.simple(VIRTIO_BLK_T_IN, 0, 512).1, OK8);
}

#[test]
fn malicious_chains_get_errors_and_the_device_keeps_working() {
    let mut h = harness(16, false);
    let end = 16u64 << 20;
    h.header(VIRTIO_BLK_T_IN, 0);
    // Data outside guest memory, or straddling its end.
    assert_eq!(
        h.submit(&[
            (HDR, 16, 0),
            (end + 4096, 512, F_WRITE),
            (STATUS, 1, F_WRITE)
        ])
        .1,
        IOERR8
    );
    assert_eq!(
        h.submit(&[
            (HDR, 16, 0),
            (end - 256, 512, F_WRITE),
            (STATUS, 1, F_WRITE)
        ])
        .1,
        IOERR8
    );
    // Oversize length.
    assert_eq!(
        h.submit(&[
            (HDR, 16, 0),
            (DATA, u32::MAX, F_WRITE),
            (STATUS, 1, F_WRITE)
        ])
        .1,
        IOERR8
    );
    // Wrong directions.
    assert_eq!(
        h.submit(&[(HDR, 16, 0), (DATA, 512, 0), (STATUS, 1, F_WRITE)])
            .1,
        IOERR8
    );
    h.header(VIRTIO_BLK_T_OUT, 0);
    assert_eq!(
        h.submit(&[(HDR, 16, 0), (DATA, 512, F_WRITE), (STATUS, 1, F_WRITE)])
            .1,
        IOERR8
    );
    // Readable after writable.
    assert_eq!(
        h.submit(&[
            (HDR, 16, 0),
            (DATA, 512, F_WRITE),
            (DATA, 8, 0),
            (STATUS, 1, F_WRITE)
        ])
        .1,
        IOERR8
    );
    // Header too short.
    assert_eq!(h.submit(&[(HDR, 8, 0), (STATUS, 1, F_WRITE)]).1, IOERR8);
    // Header itself outside memory.
    assert_eq!(h.submit(&[(end, 16, 0), (STATUS, 1, F_WRITE)]).1, IOERR8);
    // No writable status byte: nothing to report, used length 0.
    assert_eq!(h.submit(&[(HDR, 16, 0), (DATA, 512, 0)]).0, 0);
    assert_eq!(h.submit(&[(HDR, 16, 0), (STATUS, 0, F_WRITE)]).0, 0);
    assert_eq!(h.submit(&[(HDR, 16, 0), (end, 1, F_WRITE)]).0, 0);
    assert_eq!(
        h.img.contents(),
        TempImage::new(16).contents(),
        "nothing written"
    );
    // Still healthy.
    assert_eq!(h.simple(VIRTIO_BLK_T_IN, 2, 512), (513, OK8));
}

#[test]
fn descriptor_loop_terminates() {
    let mut h = harness(4, false);
    h.header(VIRTIO_BLK_T_IN, 0);
    let base = 200;
    h.ring.write_desc(&h.mem, base, HDR, 16, F_NEXT, base + 1);
    h.ring
        .write_desc(&h.mem, base + 1, DATA, 512, F_WRITE | F_NEXT, base + 2);
    h.ring
        .write_desc(&h.mem, base + 2, STATUS, 1, F_WRITE | F_NEXT, base + 1);
    h.ring.publish(&h.mem, base);
    h.d.notify(0);
    let (id, _) = h.ring.wait_used(&h.mem).expect("loop answered");
    assert_eq!(id, u32::from(base));
    // Next descriptor index beyond the ring ends the chain early.
    h.ring.write_desc(&h.mem, base, HDR, 16, F_NEXT, 999);
    h.ring.publish(&h.mem, base);
    h.d.notify(0);
    assert_eq!(h.ring.wait_used(&h.mem).expect("answered").1, 0);
    assert_eq!(h.simple(VIRTIO_BLK_T_IN, 0, 512), (513, OK8));
}

#[test]
fn indirect_tables_good_and_bad() {
    let mut h = harness(8, false);
    let table = 0x28_0000u64;
    let write_entry = |i: u64, addr: u64, len: u32, flags: u16, next: u16| {
        let a = GuestAddress(table + 16 * i);
        h.mem.write_obj(addr, a).expect("addr");
        h.mem.write_obj(len, GuestAddress(a.0 + 8)).expect("len");
        h.mem
            .write_obj(flags, GuestAddress(a.0 + 12))
            .expect("flags");
        h.mem.write_obj(next, GuestAddress(a.0 + 14)).expect("next");
    };
    write_entry(0, HDR, 16, F_NEXT, 1);
    write_entry(1, DATA, 512, F_WRITE | F_NEXT, 2);
    write_entry(2, STATUS, 1, F_WRITE, 0);
    h.header(VIRTIO_BLK_T_IN, 4);
    assert_eq!(h.submit(&[(table, 48, F_INDIRECT)]), (513, OK8));
    assert_eq!(
        h.data(512),
        (4 * 512..5 * 512).map(pattern).collect::<Vec<_>>()
    );
    // Table length not a multiple of 16, and a table outside memory.
    assert_eq!(h.submit(&[(table, 40, F_INDIRECT)]).0, 0);
    assert_eq!(h.submit(&[(16 << 20, 48, F_INDIRECT)]).0, 0);
    assert_eq!(h.simple(VIRTIO_BLK_T_IN, 0, 512), (513, OK8));
}

#[test]
fn corrupt_avail_index_stops_the_queue_until_reset() {
    let mut h = harness(4, false);
    h.ring.set_avail_idx(&h.mem, 1000);
    h.d.notify(0);
    std::thread::sleep(std::time::Duration::from_millis(50));
    assert_eq!(h.ring.used_idx(&h.mem), 0, "nothing consumed");
    h.d.write(reg::STATUS, 0);
    let mut ring = Ring::new(&h.mem, 0x10000, QUEUE_SIZE);
    bring_up(&mut h.d, &ring);
    h.header(VIRTIO_BLK_T_IN, 0);
    ring.add_chain(
        &h.mem,
        &[(HDR, 16, 0), (DATA, 512, F_WRITE), (STATUS, 1, F_WRITE)],
    );
    h.d.notify(0);
    assert_eq!(ring.wait_used(&h.mem).expect("works after reset").1, 513);
}

#[test]
fn event_idx_suppresses_and_requests_interrupts() {
    let mut h = harness(4, false);
    // used_event = 5: the device interrupts only when used idx passes 5.
    h.ring.set_used_event(&h.mem, 5);
    for _ in 0..3 {
        h.simple(VIRTIO_BLK_T_IN, 0, 512);
    }
    assert_eq!(h.irq.count(), 0, "suppressed by used_event");
    assert_eq!(
        h.ring.avail_event(&h.mem),
        3,
        "device publishes avail_event"
    );
    h.ring.set_used_event(&h.mem, 3);
    h.simple(VIRTIO_BLK_T_IN, 0, 512);
    assert_eq!(h.irq.count(), 1);
}

#[test]
fn reset_and_reactivation() {
    let mut h = harness(4, false);
    assert_eq!(h.simple(VIRTIO_BLK_T_IN, 0, 512).1, OK8);
    h.d.write(reg::STATUS, 0);
    assert_eq!(h.d.read(reg::STATUS), 0);
    let mut ring = Ring::new(&h.mem, 0x40000, 16);
    bring_up(&mut h.d, &ring);
    assert_eq!(h.d.read(reg::STATUS) & status::DEVICE_NEEDS_RESET, 0);
    h.header(VIRTIO_BLK_T_IN, 1);
    ring.add_chain(
        &h.mem,
        &[(HDR, 16, 0), (DATA, 512, F_WRITE), (STATUS, 1, F_WRITE)],
    );
    h.d.notify(0);
    assert_eq!(ring.wait_used(&h.mem).expect("used").1, 513);
}

#[test]
fn advisory_lock_keeps_writers_exclusive() {
    let img = TempImage::new(4);
    let rw = Block::new(&img.0, false).expect("first writer");
    assert!(matches!(
        Block::new(&img.0, false),
        Err(BlkError::Locked { .. })
    ));
    assert!(matches!(
        Block::new(&img.0, true),
        Err(BlkError::Locked { .. })
    ));
    drop(rw);
    let ro1 = Block::new(&img.0, true).expect("reader 1");
    let _ro2 = Block::new(&img.0, true).expect("reader 2");
    assert!(matches!(
        Block::new(&img.0, false),
        Err(BlkError::Locked { .. })
    ));
    drop(ro1);
}

#[test]
fn bad_images_are_rejected() {
    let missing = std::env::temp_dir().join("krypton-blk-test-does-not-exist");
    assert!(matches!(
        Block::new(&missing, false),
        Err(BlkError::Open { .. })
    ));
    assert!(matches!(
        Block::new(&std::env::temp_dir(), true),
        Err(BlkError::NotAnImage { .. }) | Err(BlkError::Open { .. })
    ));
    let img = TempImage::new(0);
    assert!(matches!(
        Block::new(&img.0, false),
        Err(BlkError::NotAnImage { .. })
    ));
}

#[test]
fn layer_disk_shows_each_file_at_its_place_and_zeros_elsewhere() {
    let a = TempImage::new(3); // 1536 bytes: its span is rounded to 4 KiB
    let b = TempImage::new(16);
    let (block, placed) = Block::layers(&[a.0.clone(), b.0.clone()]).expect("layers");
    assert_eq!(
        placed,
        vec![(LAYER_DISK_BASE, 4096), (LAYER_DISK_BASE + 4096, 8192)]
    );
    assert_eq!(block.capacity(), LAYER_DISK_BYTES / SECTOR_SIZE);
    assert_ne!(block.device_features() & (1 << VIRTIO_BLK_F_RO), 0);
    let (mut d, mem, irq) = driver_for(Box::new(block));
    let ring = Ring::new(&mem, 0x10000, QUEUE_SIZE);
    bring_up(&mut d, &ring);
    let mut h = Harness {
        d,
        mem,
        irq,
        ring,
        img: TempImage::new(1),
        id: [0; 20],
    };
    // All of a's span and the first sector of b.
    let (_, st) = h.simple(VIRTIO_BLK_T_IN, LAYER_DISK_BASE / SECTOR_SIZE, 4608);
    assert_eq!(st, OK as u8);
    let got = h.data(4608);
    let want_a: Vec<u8> = (0..1536).map(pattern).collect();
    assert_eq!(&got[..1536], &want_a[..]);
    assert!(
        got[1536..4096].iter().all(|&x| x == 0),
        "padding reads as zeros"
    );
    let want_b: Vec<u8> = (0..512).map(pattern).collect();
    assert_eq!(&got[4096..], &want_b[..]);
    // Before the first layer and far past the last: zeros.
    for sector in [0, LAYER_DISK_BYTES / SECTOR_SIZE - 8] {
        let (_, st) = h.simple(VIRTIO_BLK_T_IN, sector, 4096);
        assert_eq!(st, OK as u8);
        assert!(h.data(4096).iter().all(|&x| x == 0));
    }
    let (_, st) = h.simple(VIRTIO_BLK_T_OUT, LAYER_DISK_BASE / SECTOR_SIZE, 512);
    assert_eq!(st, IOERR as u8, "read-only");
    let (_, st) = h.simple(VIRTIO_BLK_T_IN, LAYER_DISK_BYTES / SECTOR_SIZE, 512);
    assert_eq!(st, IOERR as u8, "past the end");
}

#[test]
fn layer_placements_are_bounded() {
    assert_eq!(layer_placements(&[]).expect("none"), vec![]);
    assert!(matches!(
        layer_placements(&[LAYER_DISK_BYTES]),
        Err(BlkError::LayersTooLarge(_))
    ));
    assert!(layer_placements(&[u64::MAX]).is_err());
    let max = LAYER_DISK_BYTES - LAYER_DISK_BASE;
    assert_eq!(layer_placements(&[max]).expect("fits").len(), 1);
    assert!(layer_placements(&[max, 1]).is_err());
    let empty = TempImage::new(0);
    assert!(matches!(
        Block::layers(std::slice::from_ref(&empty.0)),
        Err(BlkError::NotAnImage { .. })
    ));
}
