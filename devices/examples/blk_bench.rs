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
use krypton_devices::virtio::blk::request::{Disk, read_exact_at, write_all_at};
use krypton_devices::virtio::blk::{Block, QUEUE_SIZE};
use krypton_devices::virtio::mmio::MmioTransport;
use krypton_devices::virtio::testing::{Driver, F_NEXT, F_WRITE, Ring, guest_mem};
use krypton_devices::virtio::worker::drain_queue;
use krypton_devices::virtio::{InterruptKind, VirtioInterrupt};
use virtio_queue::{Queue, QueueT};
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

/// Writes the descriptors of every request slot once, as a real driver
/// does; rounds then only fill in headers and publish heads.
fn write_slots(mem: &GuestMem, ring: &Ring, dir: Dir, size: u64) -> Vec<u16> {
    let depth = depth(size);
    let kind: u32 = if dir == Dir::Read { 0 } else { 1 };
    let data_flags = if dir == Dir::Read { F_WRITE } else { 0 };
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
    heads
}

struct NoInterrupt;

impl VirtioInterrupt for NoInterrupt {
    fn trigger(&self, _kind: InterruptKind) {}
}

/// The request path alone: same rings and requests, processed on this
/// thread with no worker hand-off, so scheduling noise does not count.
fn inline_round(
    disk: &Disk,
    queue: &mut Queue,
    mem: &GuestMem,
    ring: &mut Ring,
    dir: Dir,
    size: u64,
    time: Duration,
) -> f64 {
    let heads = write_slots(mem, ring, dir, size);
    let sectors = FILE_SIZE / 512;
    let (mut sector, mut bytes) = (0u64, 0u64);
    let start = Instant::now();
    while start.elapsed() < time {
        for &head in &heads {
            let hdr = HEADERS + 16 * u64::from(head / 3);
            mem.write_obj(sector, GuestAddress(hdr + 8)).expect("hdr");
            sector = (sector + size / 512) % sectors;
        }
        ring.publish_batch(mem, &heads);
        drain_queue(queue, mem, &NoInterrupt, |chain| disk.process(mem, chain));
        while ring.pop_used(mem).is_some() {
            bytes += size;
        }
    }
    bytes as f64 / start.elapsed().as_secs_f64()
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
    let sectors = FILE_SIZE / 512;
    let mut sector = 0u64;
    let mut bytes = 0u64;
    let heads = write_slots(mem, ring, dir, size);
    // Keep the ring full, as a guest with a deep queue does: ask for an
    // interrupt (EVENT_IDX used_event) when half the requests are done,
    // refill those, and kick only when the device's avail_event asks for it.
    let half = (heads.len() / 2).max(1);
    let mut fill = |ring: &mut Ring, d: &mut Driver, slots: &[u16]| {
        for &head in slots {
            let hdr = HEADERS + 16 * u64::from(head / 3);
            mem.write_obj(sector, GuestAddress(hdr + 8)).expect("hdr");
            sector = (sector + size / 512) % sectors;
        }
        let old = ring.avail_idx();
        ring.publish_batch(mem, slots);
        let new = ring.avail_idx();
        let event = ring.avail_event(mem);
        if new.wrapping_sub(event).wrapping_sub(1) < new.wrapping_sub(old) {
            d.notify(0);
        }
    };
    let mut popped = ring.used_idx(mem);
    let mut in_flight = heads.len();
    let start = Instant::now();
    fill(ring, d, &heads);
    let mut done: Vec<u16> = Vec::with_capacity(heads.len());
    loop {
        let timed_out = start.elapsed() >= time;
        let want = if timed_out { in_flight } else { half };
        ring.set_used_event(mem, popped.wrapping_add(want as u16 - 1));
        done.clear();
        while done.len() < want {
            while let Some((id, _)) = ring.pop_used(mem) {
                done.push(id as u16);
                popped = popped.wrapping_add(1);
            }
            if done.len() < want {
                // Sleep like a halted vCPU until the device interrupts.
                irq.0.wait_timeout(Duration::from_millis(100));
            }
        }
        bytes += done.len() as u64 * size;
        in_flight -= done.len();
        if timed_out {
            break;
        }
        fill(ring, d, &done);
        in_flight += done.len();
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

    // The inline side: its own ring and queue over the same guest memory,
    // and its own handle on the image (the device holds the lock).
    let inline_file = File::options()
        .read(true)
        .write(true)
        .open(&tmp.0)
        .expect("open");
    let disk = Disk::new(
        krypton_devices::virtio::blk::backing::Backing::File(inline_file),
        FILE_SIZE / 512,
        false,
        [0; 20],
    );
    let mut inline_ring = Ring::new(&mem, 0x6_0000, QUEUE_SIZE);
    let mut queue = Queue::new(QUEUE_SIZE).expect("queue");
    queue.set_size(QUEUE_SIZE);
    queue.set_desc_table_address(Some(inline_ring.desc as u32), Some(0));
    queue.set_avail_ring_address(Some(inline_ring.avail as u32), Some(0));
    queue.set_used_ring_address(Some(inline_ring.used as u32), Some(0));
    queue.set_ready(true);

    println!("virtio-blk vs raw pread/pwrite, 64 MiB file in page cache, {secs} s rounds");
    println!("  inline: request path on the caller's thread (device cost only)");
    println!("  threaded: transport + worker thread + interrupts, driver sleeps");
    println!(
        "{:<6} {:>6} {:>10} {:>10} {:>10} {:>7} {:>7}",
        "op", "size", "inline", "threaded", "raw MB/s", "inline", "thread"
    );
    for dir in [Dir::Read, Dir::Write] {
        for size in [4096u64, 65536] {
            let (mut best_inline, mut best_dev, mut best_raw) = (0f64, 0f64, 0f64);
            for _ in 0..ROUNDS {
                let r = inline_round(&disk, &mut queue, &mem, &mut inline_ring, dir, size, time);
                best_inline = best_inline.max(r);
                let r = device_round(&mut d, &irq, &mem, &mut ring, dir, size, time);
                best_dev = best_dev.max(r);
                best_raw = best_raw.max(raw_round(&raw, dir, size, time));
            }
            let op = if dir == Dir::Read { "read" } else { "write" };
            println!(
                "{op:<6} {:>5}K {:>10.0} {:>10.0} {:>10.0} {:>7.2} {:>7.2}",
                size / 1024,
                best_inline / 1e6,
                best_dev / 1e6,
                best_raw / 1e6,
                best_inline / best_raw,
                best_dev / best_raw
            );
        }
    }
}
