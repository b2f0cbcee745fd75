//! The conformance guest: a minimal virtio-blk driver assembled with
//! iced-x86 for 64-bit long mode (entered through the ELF64 test-guest
//! path, identity-mapped first 4 GiB). It follows the virtio 1.2 driver
//! initialization sequence (§3.1.1) over virtio-mmio (§4.2.3), submits
//! requests through split virtqueue 0 (§2.7) and polls the used ring (one
//! request also waits for the device's interrupt through the IOAPIC). Every
//! check has its own debug-exit code (`code.rs`), so a failure names it.
//!
//! Requests are strictly sequential (one chain in flight, descriptors reused
//! from index 0), so all ring indices and addresses are known when the code
//! is assembled and are emitted as immediates; the guest still does the
//! driver's work itself: it writes the descriptors, the avail ring and the
//! notification, and waits for and checks the device's used-ring entry.

use iced_x86::IcedError;
use iced_x86::code_asm::*;

use crate::code;

/// virtio-mmio window of the first virtio device.
pub const MMIO: u64 = 0xd000_0000;
/// Where the code is loaded: the PT_LOAD address of `support::elf64`.
pub const LOAD: u64 = krypton_boot::layout::HIMEM_START;
/// Queue size the driver sets up (QueueNum).
pub const QSIZE: u16 = 16;
const DESC: u64 = 0x30_0000;
const AVAIL: u64 = 0x30_1000;
const USED: u64 = 0x30_2000;
const HDR: u64 = 0x31_0000;
const STATUS: u64 = 0x31_1000;
const IDBUF: u64 = 0x31_2000;
const IDT: u64 = 0x32_0000;
const IDTR: u64 = 0x32_1000;
/// Interrupts the handler has taken.
const IRQ_COUNT: u64 = 0x32_1010;
/// InterruptStatus as the handler read it.
const IRQ_ISR: u64 = 0x32_1014;
/// Vector the device's IOAPIC pin is routed to.
const VECTOR: u32 = 0x40;
/// IOAPIC pin of the first virtio-mmio slot.
pub const PIN: u32 = 5;
const IOAPIC: u64 = 0xfec0_0000;
const LAPIC: u64 = 0xfee0_0000;
/// Buffer the pattern is generated in (and written from).
pub const WBUF: u64 = 0x40_0000;
/// Buffer sectors are read back into.
pub const RBUF: u64 = 0x50_0000;
/// Sectors the guest writes (and reads back), starting at `Plan::first`.
pub const SECTORS: u32 = 64;
const SECTOR: u32 = 512;
/// TSC ticks a bounded wait spins before giving up (3 to 5 s on common
/// hosts; the host-side run timeout is longer).
const WAIT_TICKS: u64 = 10_000_000_000;

/// What the guest does after initializing the device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Write, flush, read back (twice), GET_ID, interrupt status, and the
    /// negative requests; then debug-exit PASS.
    Full,
    /// Read-only disk: the sectors already hold the pattern; read them back,
    /// then a write must fail with IOERR or UNSUPP; then PASS.
    ReadOnly,
    /// Write and flush, then print [`FLUSHED`] on COM1 and spin forever.
    Durability,
}

/// The line the durability guest prints after its FLUSH completed.
pub const FLUSHED: &str = "FLUSHED\n";

/// Everything the host tells the guest (baked into the code).
#[derive(Debug, Clone, Copy)]
pub struct Plan {
    /// Disk capacity in sectors the host expects the device to report.
    pub capacity: u64,
    /// First sector of the written range.
    pub first: u64,
    /// Seed of the data pattern.
    pub seed: u32,
    /// Expected GET_ID serial, checked when given.
    pub id: Option<[u8; 20]>,
    /// What to do.
    pub mode: Mode,
}

/// Dword `j` of the pattern for `sector`.
pub fn pattern_dword(sector: u64, j: u32, seed: u32) -> u32 {
    (sector as u32).wrapping_add(1).wrapping_mul(0x9e37_79b1) ^ seed ^ j
}

/// The 512 pattern bytes of `sector`.
pub fn pattern(sector: u64, seed: u32) -> Vec<u8> {
    (0..SECTOR / 4)
        .flat_map(|j| pattern_dword(sector, j, seed).to_le_bytes())
        .collect()
}

const T_IN: u32 = 0;
const T_OUT: u32 = 1;
const T_FLUSH: u32 = 4;
const T_GET_ID: u32 = 8;
const S_OK: u8 = 0;
const S_IOERR: u8 = 1;
const S_UNSUPP: u8 = 2;
const F_NEXT: u32 = 1;
const F_WRITE: u32 = 2;

/// One request: header, data segments (device-writable for IN/GET_ID),
/// status byte.
struct Request<'a> {
    kind: u32,
    sector: u64,
    data: &'a [(u64, u32)],
    /// Status bytes accepted.
    ok: &'a [u8],
    /// Expected used length.
    used_len: u32,
    /// Wait for the device's interrupt (IF=1) before polling the used ring.
    irq: bool,
}

struct Guest {
    a: CodeAssembler,
    fails: Vec<(CodeLabel, u32)>,
    /// Requests submitted so far (= avail.idx = expected used.idx).
    submitted: u16,
}

impl Guest {
    /// A label that exits with `code`; its stub is emitted at the end.
    fn fail(&mut self, code: u32) -> CodeLabel {
        let l = self.a.create_label();
        self.fails.push((l, code));
        l
    }

    fn reg_read(&mut self, off: u64) -> Result<(), IcedError> {
        self.a.mov(eax, dword_ptr(rbx + off))
    }

    fn reg_write(&mut self, off: u64, v: u32) -> Result<(), IcedError> {
        self.a.mov(dword_ptr(rbx + off), v)
    }

    /// Reads register `off` and fails with `code` unless it equals `v`.
    fn reg_expect(&mut self, off: u64, v: u32, code: u32) -> Result<(), IcedError> {
        self.reg_read(off)?;
        self.a.cmp(eax, v)?;
        let f = self.fail(code);
        self.a.jne(f)
    }

    fn set_status(&mut self, v: u32) -> Result<(), IcedError> {
        self.reg_write(0x70, v)
    }

    /// RAX = TSC (clobbers RDX).
    fn tsc(&mut self) -> Result<(), IcedError> {
        self.a.rdtsc()?;
        self.a.shl(rdx, 32)?;
        self.a.or(rax, rdx)
    }

    /// Repeats `check` (which jumps to the label it is given once the
    /// condition holds) for at most [`WAIT_TICKS`], then fails with `code`.
    /// Clobbers RAX, RDX and R8.
    fn wait_until<F>(&mut self, code: u32, check: F) -> Result<(), IcedError>
    where
        F: Fn(&mut Self, CodeLabel) -> Result<(), IcedError>,
    {
        let (mut again, mut done) = (self.a.create_label(), self.a.create_label());
        self.tsc()?;
        self.a.mov(r8, WAIT_TICKS)?;
        self.a.add(r8, rax)?;
        self.a.set_label(&mut again)?;
        check(self, done)?;
        self.a.pause()?;
        self.tsc()?;
        self.a.cmp(rax, r8)?;
        self.a.jb(again)?;
        let f = self.fail(code);
        self.a.jmp(f)?;
        self.a.set_label(&mut done)
    }

    /// Waits (bounded) until register `off` has a bit of `mask` set.
    fn wait_reg_bit(&mut self, off: u64, mask: u32, code: u32) -> Result<(), IcedError> {
        self.wait_until(code, |g, done| {
            g.reg_read(off)?;
            g.a.test(eax, mask)?;
            g.a.jnz(done)
        })
    }

    /// Driver initialization, virtio 1.2 §3.1.1, and queue 0 setup (§4.2.3.2).
    fn init(&mut self, plan: &Plan) -> Result<(), IcedError> {
        self.a.mov(rbx, MMIO)?;
        self.a.xor(r15d, r15d)?; // base register for absolute RAM addresses
        self.reg_expect(0x000, 0x7472_6976, code::MAGIC)?;
        self.reg_expect(0x004, 2, code::VERSION)?;
        self.reg_expect(0x008, 2, code::DEVICE_ID)?;
        // 1. Reset, and wait for it to read back 0.
        self.set_status(0)?;
        self.reg_expect(0x070, 0, code::RESET)?;
        // 2. ACKNOWLEDGE, 3. DRIVER.
        self.set_status(1)?;
        self.set_status(1 | 2)?;
        // 4. Device features, both words; accept VIRTIO_F_VERSION_1 only.
        self.reg_write(0x014, 0)?;
        self.reg_read(0x010)?;
        self.a.and(eax, 1 << 5)?; // VIRTIO_BLK_F_RO
        self.a.cmp(
            eax,
            if plan.mode == Mode::ReadOnly {
                1 << 5
            } else {
                0
            },
        )?;
        let f = self.fail(code::RO_FEATURE);
        self.a.jne(f)?;
        self.reg_write(0x014, 1)?;
        self.reg_read(0x010)?;
        self.a.test(eax, 1)?;
        let f = self.fail(code::NO_VERSION_1);
        self.a.jz(f)?;
        self.reg_write(0x024, 0)?;
        self.reg_write(0x020, 0)?;
        self.reg_write(0x024, 1)?;
        self.reg_write(0x020, 1)?;
        // 5. FEATURES_OK, 6. re-read it.
        self.set_status(1 | 2 | 8)?;
        self.reg_expect(0x070, 1 | 2 | 8, code::FEATURES_OK)?;
        // 7. Queue 0.
        self.reg_write(0x030, 0)?;
        self.reg_expect(0x044, 0, code::QUEUE_BUSY)?;
        self.reg_read(0x034)?;
        self.a.cmp(eax, u32::from(QSIZE))?;
        let f = self.fail(code::QUEUE_MAX);
        self.a.jb(f)?;
        // Zero the rings before handing them over.
        self.a.mov(rdi, DESC)?;
        self.a.xor(eax, eax)?;
        self.a.mov(ecx, 0x3000)?;
        self.a.cld()?;
        self.a.rep().stosb()?;
        self.reg_write(0x038, u32::from(QSIZE))?;
        for (reg, addr) in [(0x080, DESC), (0x090, AVAIL), (0x0a0, USED)] {
            self.reg_write(reg, addr as u32)?;
            self.reg_write(reg + 4, (addr >> 32) as u32)?;
        }
        self.reg_write(0x044, 1)?;
        self.reg_expect(0x044, 1, code::QUEUE_READY)?;
        // 8. DRIVER_OK.
        self.set_status(1 | 2 | 8 | 4)?;
        self.reg_expect(0x070, 0xf, code::DRIVER_OK)?;
        // Capacity: config space offset 0, two 32-bit reads.
        self.reg_expect(0x100, plan.capacity as u32, code::CAPACITY)?;
        self.reg_expect(0x104, (plan.capacity >> 32) as u32, code::CAPACITY)
    }

    fn store_u64(&mut self, addr: u64, v: u64) -> Result<(), IcedError> {
        self.a.mov(rax, v)?;
        self.a.mov(qword_ptr(r15 + addr), rax)
    }

    fn store_desc(&mut self, i: u16, addr: u64, len: u32, flags: u32) -> Result<(), IcedError> {
        let d = DESC + 16 * u64::from(i);
        self.store_u64(d, addr)?;
        self.a.mov(dword_ptr(r15 + d + 8), len)?;
        self.a.mov(word_ptr(r15 + d + 12), flags)?;
        self.a.mov(word_ptr(r15 + d + 14), u32::from(i + 1))
    }

    /// Builds the chain at descriptor 0, publishes it, notifies, waits for
    /// the used element and checks it and the status byte.
    fn submit(&mut self, r: &Request<'_>) -> Result<(), IcedError> {
        let k = u32::from(self.submitted);
        self.a.mov(dword_ptr(r15 + HDR), r.kind)?;
        self.a.mov(dword_ptr(r15 + HDR + 4), 0)?;
        self.store_u64(HDR + 8, r.sector)?;
        self.a.mov(byte_ptr(r15 + STATUS), 0xff)?;
        let device_writes = matches!(r.kind, T_IN | T_GET_ID);
        self.store_desc(0, HDR, 16, F_NEXT)?;
        let mut i = 1u16;
        for &(addr, len) in r.data {
            self.store_desc(
                i,
                addr,
                len,
                F_NEXT | if device_writes { F_WRITE } else { 0 },
            )?;
            i += 1;
        }
        self.store_desc(i, STATUS, 1, F_WRITE)?;
        // Publish: ring entry first, then idx (x86 stores are ordered).
        let slot = u64::from(self.submitted % QSIZE);
        self.a.mov(word_ptr(r15 + AVAIL + 4 + 2 * slot), 0)?;
        self.submitted += 1;
        let n = u32::from(self.submitted);
        self.a.mov(word_ptr(r15 + AVAIL + 2), n)?;
        self.reg_write(0x050, 0)?; // QueueNotify(0)
        if r.irq {
            self.wait_irq()?;
        }
        // Poll used.idx.
        self.wait_until(code::TIMEOUT | k, |g, done| {
            g.a.movzx(eax, word_ptr(r15 + USED + 2))?;
            g.a.cmp(eax, n)?;
            g.a.je(done)
        })?;
        let elem = USED + 4 + 8 * slot;
        self.a.cmp(dword_ptr(r15 + elem), 0)?;
        let f = self.fail(code::USED_ID | k);
        self.a.jne(f)?;
        self.a.cmp(dword_ptr(r15 + elem + 4), r.used_len)?;
        let f = self.fail(code::USED_LEN | k);
        self.a.jne(f)?;
        self.a.movzx(eax, byte_ptr(r15 + STATUS))?;
        self.a.cmp(eax, 0xff)?;
        let f = self.fail(code::NO_STATUS | k);
        self.a.je(f)?;
        let mut ok = self.a.create_label();
        for &s in r.ok {
            self.a.cmp(eax, u32::from(s))?;
            self.a.je(ok)?;
        }
        let f = self.fail(code::STATUS | k);
        self.a.jmp(f)?;
        self.a.set_label(&mut ok)
    }

    /// Fills `count` sectors at `buf` with the pattern of `first..`.
    fn fill_pattern(&mut self, buf: u64, plan: &Plan) -> Result<(), IcedError> {
        let (mut outer, mut inner) = (self.a.create_label(), self.a.create_label());
        self.a.mov(rdi, buf)?;
        self.a.mov(esi, plan.first as u32)?;
        self.a.mov(r9d, SECTORS)?;
        self.a.set_label(&mut outer)?;
        self.a.lea(eax, dword_ptr(rsi + 1))?;
        self.a.imul_3(eax, eax, 0x9e37_79b1_u32)?;
        self.a.xor(eax, plan.seed)?;
        self.a.xor(ecx, ecx)?;
        self.a.set_label(&mut inner)?;
        self.a.mov(edx, eax)?;
        self.a.xor(edx, ecx)?;
        self.a.mov(dword_ptr(rdi + rcx * 4), edx)?;
        self.a.inc(ecx)?;
        self.a.cmp(ecx, SECTOR / 4)?;
        self.a.jne(inner)?;
        self.a.add(rdi, SECTOR as i32)?;
        self.a.inc(esi)?;
        self.a.dec(r9d)?;
        self.a.jnz(outer)
    }

    /// Fills the read buffer with 0xcc so stale data cannot pass.
    fn poison_rbuf(&mut self) -> Result<(), IcedError> {
        self.a.mov(rdi, RBUF)?;
        self.a.mov(eax, 0xcc)?;
        self.a.mov(ecx, SECTORS * SECTOR)?;
        self.a.rep().stosb()
    }

    fn compare(&mut self, code: u32) -> Result<(), IcedError> {
        self.a.mov(rsi, WBUF)?;
        self.a.mov(rdi, RBUF)?;
        self.a.mov(ecx, SECTORS * SECTOR / 8)?;
        self.a.repe().cmpsq()?;
        let f = self.fail(code);
        self.a.jne(f)
    }

    fn out(
        &mut self,
        sector_off: u32,
        count: u32,
        data: &[(u64, u32)],
        plan: &Plan,
    ) -> Result<(), IcedError> {
        debug_assert_eq!(data.iter().map(|d| d.1).sum::<u32>(), count * SECTOR);
        let sector = plan.first + u64::from(sector_off);
        self.submit(&Request {
            kind: T_OUT,
            sector,
            data,
            ok: &[S_OK],
            used_len: 1,
            irq: false,
        })
    }

    fn read(&mut self, sector: u64, data: &[(u64, u32)]) -> Result<(), IcedError> {
        let len: u32 = data.iter().map(|d| d.1).sum();
        self.submit(&Request {
            kind: T_IN,
            sector,
            data,
            ok: &[S_OK],
            used_len: len + 1,
            irq: false,
        })
    }

    /// The 64 sectors in four writes: 8 sectors, 24 sectors in three
    /// segments of uneven (not sector-aligned) sizes, 1 sector, 31 sectors.
    fn write_all(&mut self, plan: &Plan, check_isr: bool) -> Result<(), IcedError> {
        let s = |n: u32| WBUF + u64::from(n * SECTOR);
        self.out(0, 8, &[(s(0), 8 * SECTOR)], plan)?;
        if check_isr {
            // Used buffer => InterruptStatus bit 0; InterruptACK clears it.
            self.wait_reg_bit(0x060, 1, code::ISR_SET)?;
            self.reg_write(0x064, 1)?;
            self.reg_read(0x060)?;
            self.a.test(eax, 1)?;
            let f = self.fail(code::ISR_ACK);
            self.a.jnz(f)?;
        }
        self.out(
            8,
            24,
            &[
                (s(8), 100),
                (s(8) + 100, 5000),
                (s(8) + 5100, 24 * SECTOR - 5100),
            ],
            plan,
        )?;
        self.out(32, 1, &[(s(32), SECTOR)], plan)?;
        self.out(33, 31, &[(s(33), 31 * SECTOR)], plan)?;
        self.submit(&Request {
            kind: T_FLUSH,
            sector: 0,
            data: &[],
            ok: &[S_OK],
            used_len: 1,
            irq: false,
        })
    }

    /// Reads the range back as 40 sectors in one segment plus 24 sectors in
    /// two uneven segments, and compares.
    fn read_back(&mut self, plan: &Plan) -> Result<(), IcedError> {
        let r = |n: u32| RBUF + u64::from(n * SECTOR);
        self.poison_rbuf()?;
        self.read(plan.first, &[(r(0), 40 * SECTOR)])?;
        self.read(
            plan.first + 40,
            &[(r(40), 3000), (r(40) + 3000, 24 * SECTOR - 3000)],
        )?;
        self.compare(code::COMPARE)
    }

    fn serial_line(&mut self, text: &str) -> Result<(), IcedError> {
        for b in text.bytes() {
            let mut wait = self.a.create_label();
            self.a.mov(dx, 0x3fd_u32)?;
            self.a.set_label(&mut wait)?;
            self.a.in_(al, dx)?;
            self.a.test(al, 0x20)?; // THRE
            self.a.jz(wait)?;
            self.a.mov(dx, 0x3f8_u32)?;
            self.a.mov(al, u32::from(b))?;
            self.a.out(dx, al)?;
        }
        Ok(())
    }

    /// Routes the device's pin (edge, active high) to [`VECTOR`] on the
    /// local APIC and installs the handler; leaves IF=0. The handler reads
    /// InterruptStatus, acknowledges it, counts and writes the LAPIC EOI.
    fn setup_irq(&mut self, handler: CodeLabel) -> Result<(), IcedError> {
        let gate = IDT + 16 * u64::from(VECTOR);
        self.a.lea(rax, ptr(handler))?;
        self.a.mov(edx, eax)?;
        self.a.and(edx, 0xffff)?;
        self.a.or(edx, 0x10 << 16)?; // 64-bit code selector
        self.a.mov(dword_ptr(r15 + gate), edx)?;
        self.a.mov(edx, eax)?;
        self.a.and(edx, 0xffff_0000_u32)?;
        self.a.or(edx, 0x8e00)?; // present, DPL 0, interrupt gate
        self.a.mov(dword_ptr(r15 + gate + 4), edx)?;
        self.store_u64(gate + 8, 0)?;
        self.a.mov(word_ptr(r15 + IDTR), 0xfff)?;
        self.store_u64(IDTR + 2, IDT)?;
        self.a.lidt(ptr(r15 + IDTR))?;
        self.store_u64(IRQ_COUNT, 0)?;
        self.a.mov(rsi, LAPIC)?;
        self.a.mov(dword_ptr(rsi + 0xf0), 0x1ff)?; // SVR: enabled, spurious 0xff
        self.a.mov(rsi, IOAPIC)?;
        self.a.mov(dword_ptr(rsi), 0x10 + 2 * PIN + 1)?;
        self.a.mov(dword_ptr(rsi + 0x10), 0)?; // destination APIC 0
        self.a.mov(dword_ptr(rsi), 0x10 + 2 * PIN)?;
        self.a.mov(dword_ptr(rsi + 0x10), VECTOR) // fixed, edge, high, unmasked
    }

    fn emit_handler(&mut self, handler: &mut CodeLabel) -> Result<(), IcedError> {
        self.a.set_label(handler)?;
        self.a.push(rax)?;
        self.a.push(rsi)?;
        self.reg_read(0x060)?;
        self.a.mov(dword_ptr(r15 + IRQ_ISR), eax)?;
        self.a.mov(dword_ptr(rbx + 0x064), eax)?;
        self.a.inc(dword_ptr(r15 + IRQ_COUNT))?;
        self.a.mov(rsi, LAPIC)?;
        self.a.mov(dword_ptr(rsi + 0xb0), 0)?; // EOI
        self.a.pop(rsi)?;
        self.a.pop(rax)?;
        self.a.iretq()
    }

    /// With IF=1, spins (bounded) until the handler ran once; returns with
    /// IF=0 after checking what it saw in InterruptStatus.
    fn wait_irq(&mut self) -> Result<(), IcedError> {
        self.a.sti()?;
        self.wait_until(code::IRQ_TIMEOUT, |g, done| {
            g.a.cmp(dword_ptr(r15 + IRQ_COUNT), 0)?;
            g.a.jne(done)
        })?;
        self.a.cli()?;
        self.a.test(dword_ptr(r15 + IRQ_ISR), 1)?;
        let f = self.fail(code::IRQ_ISR);
        self.a.jz(f)
    }

    fn full(&mut self, plan: &Plan) -> Result<(), IcedError> {
        // A FLUSH completed through the interrupt path (as Linux does).
        let mut handler = self.a.create_label();
        self.setup_irq(handler)?;
        self.submit(&Request {
            kind: T_FLUSH,
            sector: 0,
            data: &[],
            ok: &[S_OK],
            used_len: 1,
            irq: true,
        })?;
        let mut skip = self.a.create_label();
        self.a.jmp(skip)?;
        self.emit_handler(&mut handler)?;
        self.a.set_label(&mut skip)?;
        if let Some(id) = plan.id {
            self.a.mov(rdi, IDBUF)?;
            self.a.xor(eax, eax)?;
            self.a.mov(ecx, 32)?;
            self.a.rep().stosb()?;
            self.submit(&Request {
                kind: T_GET_ID,
                sector: 0,
                data: &[(IDBUF, 20)],
                ok: &[S_OK],
                used_len: 21,
                irq: false,
            })?;
            for (i, w) in id.chunks_exact(4).enumerate() {
                let w = u32::from_le_bytes([w[0], w[1], w[2], w[3]]);
                self.a.cmp(dword_ptr(r15 + IDBUF + 4 * i as u64), w)?;
                let f = self.fail(code::GET_ID);
                self.a.jne(f)?;
            }
        }
        self.fill_pattern(WBUF, plan)?;
        self.write_all(plan, true)?;
        self.read_back(plan)?;
        // Again one sector per request: 64 chains, so the rings wrap.
        self.poison_rbuf()?;
        for i in 0..SECTORS {
            self.read(
                plan.first + u64::from(i),
                &[(RBUF + u64::from(i * SECTOR), SECTOR)],
            )?;
        }
        self.compare(code::COMPARE_SINGLE)?;
        // Negative requests.
        let cap = plan.capacity;
        let one = &[(RBUF, SECTOR)];
        for (sector, data) in [
            (cap - 1, &[(RBUF, 2 * SECTOR)][..]),
            (cap, one),
            (u64::MAX, one),
        ] {
            self.submit(&Request {
                kind: T_IN,
                sector,
                data,
                ok: &[S_IOERR],
                used_len: 1,
                irq: false,
            })?;
        }
        self.submit(&Request {
            kind: 0x55,
            sector: 0,
            data: &[],
            ok: &[S_UNSUPP],
            used_len: 1,
            irq: false,
        })
    }

    fn read_only(&mut self, plan: &Plan) -> Result<(), IcedError> {
        self.fill_pattern(WBUF, plan)?;
        self.read_back(plan)?;
        let data = &[(WBUF, SECTOR)];
        self.submit(&Request {
            kind: T_OUT,
            sector: plan.first,
            data,
            ok: &[S_IOERR, S_UNSUPP],
            used_len: 1,
            irq: false,
        })
    }
}

/// Assembles the guest for `plan`; the code is meant to be loaded at [`LOAD`].
pub fn assemble(plan: &Plan) -> Result<Vec<u8>, IcedError> {
    let mut g = Guest {
        a: CodeAssembler::new(64)?,
        fails: Vec::new(),
        submitted: 0,
    };
    g.a.mov(rsp, 0x8ff0_u64)?;
    g.init(plan)?;
    match plan.mode {
        Mode::Full => g.full(plan)?,
        Mode::ReadOnly => g.read_only(plan)?,
        Mode::Durability => {
            g.fill_pattern(WBUF, plan)?;
            g.write_all(plan, false)?;
            g.serial_line(FLUSHED)?;
            let mut spin = g.a.create_label();
            g.a.set_label(&mut spin)?;
            g.a.pause()?;
            g.a.jmp(spin)?;
        }
    }
    g.a.mov(eax, code::PASS)?;
    let mut exit = g.a.create_label();
    g.a.set_label(&mut exit)?;
    g.a.out(0xf4, eax)?;
    g.a.hlt()?;
    g.a.jmp(exit)?;
    for (mut l, c) in std::mem::take(&mut g.fails) {
        g.a.set_label(&mut l)?;
        g.a.mov(eax, c)?;
        g.a.jmp(exit)?;
    }
    g.a.assemble(LOAD)
}
