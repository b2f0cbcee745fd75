//! The virtio-blk request path under fuzzing, shared by the libFuzzer target
//! (`fuzz_targets/fuzz_blk_request.rs`) and the smoke runner (`blk_smoke`).
//!
//! Input layout: byte 0 picks the queue size (1..=16), byte 1 bit 0 turns
//! EVENT_IDX on, the rest is copied to guest address 0. The descriptor table
//! is at 0x000, the available ring at 0x100, the used ring at 0x180, so a
//! few hundred bytes of input already describe whole requests.
//! Guest memory is two adjacent regions (so buffers can straddle regions)
//! and a third region past a hole (so buffers can fall into it).

use std::fs::File;
use std::sync::{Arc, OnceLock};

use krypton_devices::GuestMem;
use krypton_devices::virtio::blk::backing::Backing;
use krypton_devices::virtio::blk::request::Disk;
use krypton_devices::virtio::worker::drain_queue;
use krypton_devices::virtio::{InterruptKind, VirtioInterrupt};
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

/// Descriptor table address.
pub const DESC: u64 = 0x0000;
/// Available ring address.
pub const AVAIL: u64 = 0x100;
/// Used ring address.
pub const USED: u64 = 0x180;
/// First byte of the "data" area the generator points buffers at.
pub const DATA: u64 = 0x300;
/// Size of each of the two adjacent low regions.
pub const REGION: u64 = 0x4_0000;
/// Start of the region after the hole.
pub const HIGH: u64 = 0x10_0000;
/// Size of the region after the hole.
pub const HIGH_LEN: u64 = 0x1000;
/// Disk size in sectors.
pub const SECTORS: u64 = 64;

struct NoInterrupt;

impl VirtioInterrupt for NoInterrupt {
    fn trigger(&self, _kind: InterruptKind) {}
}

/// One scratch image per process (no lock: parallel fuzz jobs each have one).
fn disk() -> &'static Disk {
    static DISK: OnceLock<Disk> = OnceLock::new();
    DISK.get_or_init(|| {
        let path = std::env::temp_dir().join(format!("krypton-fuzz-blk-{}", std::process::id()));
        let file = File::options()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .expect("scratch image");
        file.set_len(SECTORS * 512).expect("scratch image size");
        // Unlinked at once on Unix; the open file lives for the process.
        let _ = std::fs::remove_file(&path);
        Disk::new(Backing::File(file), SECTORS, false, *b"krypton-fuzz-disk-00")
    })
}

/// Guest memory for one run.
pub fn guest_memory() -> GuestMem {
    GuestMemoryMmap::from_ranges(&[
        (GuestAddress(0), REGION as usize),
        (GuestAddress(REGION), REGION as usize),
        (GuestAddress(HIGH), HIGH_LEN as usize),
    ])
    .expect("guest memory")
}

/// Runs one input through queue processing and the request path.
/// Returns the number of chains completed.
pub fn run_blk(data: &[u8]) -> usize {
    let (Some(&size_sel), Some(&flags)) = (data.first(), data.get(1)) else {
        return 0;
    };
    let mem = guest_memory();
    let image = data.get(2..).unwrap_or(&[]);
    let image = &image[..image.len().min(2 * REGION as usize)];
    mem.write_slice(image, GuestAddress(0)).expect("image fits");
    let size = 1u16 << (size_sel % 5);
    let mut q = Queue::new(16).expect("queue");
    q.set_size(size);
    q.set_desc_table_address(Some(DESC as u32), Some(0));
    q.set_avail_ring_address(Some(AVAIL as u32), Some(0));
    q.set_used_ring_address(Some(USED as u32), Some(0));
    q.set_event_idx(flags & 1 != 0);
    q.set_ready(true);
    let interrupt: Arc<dyn VirtioInterrupt> = Arc::new(NoInterrupt);
    let mut done = 0;
    drain_queue(&mut q, &mem, interrupt.as_ref(), |chain| {
        done += 1;
        disk().process(&mem, chain)
    });
    done
}

/// A small deterministic PRNG (xorshift64*) for the smoke runner.
#[derive(Debug, Clone)]
pub struct Prng(u64);

impl Prng {
    /// Seeded generator (seed 0 is remapped).
    pub fn new(seed: u64) -> Prng {
        Prng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1)
    }
    /// Next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    /// Uniform-ish value below `n` (n > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }
}

/// A structured input: mostly plausible request chains (so the fuzzer and
/// the smoke runner get past ring parsing), then random corruption.
pub fn generate(rng: &mut Prng) -> Vec<u8> {
    let mut img = vec![0u8; (DATA + 0x800) as usize];
    let size_sel = 2 + rng.below(3) as u8; // 4..=16
    let size = 1u64 << size_sel;
    let chains = 1 + rng.below(size.min(16));
    let mut next_desc = 0u64;
    let put = |img: &mut Vec<u8>, at: u64, bytes: &[u8]| {
        let at = at as usize;
        img[at..at + bytes.len()].copy_from_slice(bytes);
    };
    for c in 0..chains {
        let head = next_desc % size;
        let ndesc = 1 + rng.below(5);
        // Header somewhere in the data area.
        let hdr = DATA + 32 * c;
        let kind = [0u32, 1, 4, 8, 11, rng.next_u64() as u32][rng.below(6) as usize];
        let sector = if rng.below(4) == 0 { rng.next_u64() } else { rng.below(SECTORS + 2) };
        put(&mut img, hdr, &kind.to_le_bytes());
        put(&mut img, hdr + 8, &sector.to_le_bytes());
        for i in 0..ndesc {
            let idx = (head + i) % size;
            let (addr, len, write) = if i == 0 {
                (hdr, 16u32, false)
            } else {
                let addr = match rng.below(6) {
                    0 => REGION - rng.below(1024),   // straddles the two regions
                    1 => HIGH + rng.below(HIGH_LEN), // near the region after the hole
                    2 => 2 * REGION + rng.below(0x1000), // in the hole
                    3 => rng.next_u64(),
                    _ => DATA + 0x200 + rng.below(0x600),
                };
                let len = match rng.below(4) {
                    0 => 1,
                    1 => 512 * (1 + rng.below(8) as u32),
                    2 => rng.next_u64() as u32,
                    _ => rng.below(1024) as u32,
                };
                (addr, len, i + 1 == ndesc || rng.below(3) != 0)
            };
            let mut flags = if write { 2u16 } else { 0 };
            if i + 1 < ndesc {
                flags |= 1;
            }
            if rng.below(40) == 0 {
                flags |= 4; // indirect
            }
            let next = if rng.below(30) == 0 { rng.below(size + 2) } else { (idx + 1) % size };
            let d = DESC + 16 * idx;
            put(&mut img, d, &addr.to_le_bytes());
            put(&mut img, d + 8, &len.to_le_bytes());
            put(&mut img, d + 12, &flags.to_le_bytes());
            put(&mut img, d + 14, &(next as u16).to_le_bytes());
        }
        next_desc += ndesc;
        put(&mut img, AVAIL + 4 + 2 * (c % size), &(head as u16).to_le_bytes());
    }
    let avail_idx = if rng.below(20) == 0 { rng.next_u64() as u16 } else { chains as u16 };
    put(&mut img, AVAIL + 2, &avail_idx.to_le_bytes());
    // Random corruption.
    for _ in 0..rng.below(8) {
        let at = rng.below(img.len() as u64) as usize;
        img[at] = rng.next_u64() as u8;
    }
    let mut input = vec![size_sel, rng.below(2) as u8];
    input.extend_from_slice(&img);
    input
}
