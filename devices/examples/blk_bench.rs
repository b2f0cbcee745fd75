//! Device-level virtio-blk throughput against raw positioned I/O on the same
//! file, in one run.
//!
//! `cargo run --release -p krypton-devices --example blk_bench [-- SECONDS]`
//!
//! The "device" side drives the real transport and worker thread the way a
//! guest driver would: it keeps batches of requests (header, data, status
//! descriptors) in the ring, kicks QueueNotify once per batch and sleeps
//! until the device's interrupt (one per batch, through EVENT_IDX). The "raw" side does the same reads or writes with plain
//! `pread`/`pwrite` into a host buffer. Both run over a warm page cache on a
//! 64 MiB file, sequentially, for 4 KiB and 64 KiB requests, alternating
//! rounds; the best round of each is reported with the ratio.
#![allow(clippy::print_stdout)] // A benchmark's output is its result.

use std::fs::File;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use krypton_devices::GuestMem;
use krypton_devices::event::Event;
use krypton_devices::interrupt::IrqLine;
use krypton_devices::virtio::blk::request::{read_exact_at, write_all_at};
use krypton_devices::virtio::blk::{Block, QUEUE_SIZE};
use krypton_devices::virtio::mmio::MmioTransport;
use krypton_devices::virtio::testing::{Driver, F_NEXT, F_WRITE, Ring, guest_mem};
use vm_memory::{Bytes, GuestAddress};

const FILE_SIZE: u64 = 64 << 20;
const HEADERS: u64 = 0x10_0000;
const STATUS: u64 = 0x18_0000;
const DATA: u64 = 0x20_0000;
const ROUNDS: usize = 5;

/// The guest's view of the interrupt line: wakes the waiting "vCPU".
struct EventLine(Event);

impl IrqLine for EventLine {
    fn set_level(&self, asserted: bool) {
        if asserted {
            self.0.signal();
        }
    }
}

struct TempFile(PathBuf);

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

#[derive(Clone, Copy, PartialEq)]
enum Dir {
    Read,
    Write,
}

/// Requests in flight per batch for a request size (data must fit in the
/// 16 MiB of test guest memory, descriptors in the ring).
fn depth(size: u64) -> u64 {
    (0x80_0000 / size).min(u64::from(QUEUE_SIZE) / 3)
}

fn device_round(
    d: &mut Driver,
    irq: &EventLine,
    mem: &GuestMem,
    ring: &mut Ring,
    dir: Dir,
    size: u64,
    time: Duration,
) -> f64 {
    let depth = depth(size);
    let kind: u32 = if dir == Dir::Read { 0 } else { 1 };
    let data_flags = if dir == Dir::Read { F_WRITE } else { 0 };
    let sectors = FILE_SIZE / 512;
    let mut sector = 0u64;
    let mut bytes = 0u64;
    // Like a real driver, descriptors for each slot are written once; a
    // batch only fills in the headers and publishes the heads.
    let heads: Vec<u16> = (0..depth as u16).map(|i| 3 * i).collect();
    for (i, &head) in heads.iter().enumerate() {
        let i = i as u64;
        let hdr = HEADERS + 16 * i;
        mem.write_obj(kind, GuestAddress(hdr)).expect("hdr");
        ring.write_desc(mem, head, hdr, 16, F_NEXT, head + 1);
        ring.write_desc(
            mem,
            head + 1,
            DATA + i * size,
            size as u32,
            data_flags | F_NEXT,
            head + 2,
        );
        ring.write_desc(mem, head + 2, STATUS + i, 1, F_WRITE, 0);
    }
    let start = Instant::now();
    while start.elapsed() < time {
        for i in 0..depth {
            mem.write_obj(sector, GuestAddress(HEADERS + 16 * i + 8))
                .expect("hdr");
            sector = (sector + size / 512) % sectors;
        }
        ring.publish_batch(mem, &heads);
        // EVENT_IDX: one interrupt when the whole batch is done.
        let target = ring.used_idx(mem).wrapping_add(depth as u16 - 1);
        ring.set_used_event(mem, target);
        d.notify(0);
        let mut done = 0;
        while done < depth {
            while ring.pop_used(mem).is_some() {
                done += 1;
            }
            if done < depth {
                // Sleep like a halted vCPU until the device interrupts.
                irq.0.wait_timeout(Duration::from_millis(100));
            }
        }
        bytes += depth * size;
    }
    bytes as f64 / start.elapsed().as_secs_f64()
}

fn raw_round(file: &File, dir: Dir, size: u64, time: Duration) -> f64 {
    let depth = depth(size);
    let mut bufs = vec![0u8; (depth * size) as usize];
    let mut offset = 0u64;
    let mut bytes = 0u64;
    let start = Instant::now();
    while start.elapsed() < time {
        for chunk in bufs.chunks_mut(size as usize) {
            match dir {
                Dir::Read => read_exact_at(file, chunk, offset).expect("pread"),
                Dir::Write => write_all_at(file, chunk, offset).expect("pwrite"),
            }
            offset = (offset + size) % FILE_SIZE;
        }
        bytes += depth * size;
    }
    bytes as f64 / start.elapsed().as_secs_f64()
}

fn main() {
    let secs: f64 = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(1.0);
    let time = Duration::from_secs_f64(secs);
    let path = std::env::temp_dir().join(format!("krypton-blk-bench-{}", std::process::id()));
    let tmp = TempFile(path.clone());
    let pattern: Vec<u8> = (0..FILE_SIZE).map(|i| ((i * 31) >> 7) as u8).collect();
    std::fs::write(&tmp.0, &pattern).expect("bench image");
    drop(pattern);

    let block = Block::new(&tmp.0, false).expect("open image");
    let mem = guest_mem();
    let irq = Arc::new(EventLine(Event::new()));
    let line = Arc::clone(&irq) as Arc<dyn IrqLine>;
    let mut d = Driver {
        t: MmioTransport::new(Box::new(block), mem.clone(), line),
    };
    let mut ring = Ring::new(&mem, 0x10000, QUEUE_SIZE);
    d.negotiate(u64::MAX);
    d.setup_queue(0, &ring);
    d.driver_ok();
    // The raw side opens the same file; the device holds the advisory lock,
    // which does not stop plain I/O.
    let raw = File::options()
        .read(true)
        .write(true)
        .open(&tmp.0)
        .expect("raw open");

    println!("virtio-blk device vs raw pread/pwrite, 64 MiB file in page cache, {secs} s rounds");
    println!(
        "{:<6} {:>6} {:>12} {:>12} {:>7}",
        "op", "size", "device MB/s", "raw MB/s", "ratio"
    );
    for dir in [Dir::Read, Dir::Write] {
        for size in [4096u64, 65536] {
            let (mut best_dev, mut best_raw) = (0f64, 0f64);
            for _ in 0..ROUNDS {
                best_dev =
                    best_dev.max(device_round(&mut d, &irq, &mem, &mut ring, dir, size, time));
                best_raw = best_raw.max(raw_round(&raw, dir, size, time));
            }
            let op = if dir == Dir::Read { "read" } else { "write" };
            println!(
                "{op:<6} {:>5}K {:>12.0} {:>12.0} {:>7.2}",
                size / 1024,
                best_dev / 1e6,
                best_raw / 1e6,
                best_dev / best_raw
            );
        }
    }
}
