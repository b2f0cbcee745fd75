use super::*;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, Ordering};

#[derive(Default)]
struct CountingLine {
    rising: AtomicU32,
    level: Mutex<bool>,
}

impl IrqLine for CountingLine {
    fn set_level(&self, asserted: bool) {
        let mut l = self.level.lock().expect("line lock");
        if asserted && !*l {
            self.rising.fetch_add(1, Ordering::SeqCst);
        }
        *l = asserted;
    }
}

#[derive(Clone, Default)]
struct SharedBuf(Arc<Mutex<Vec<u8>>>);

impl Write for SharedBuf {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.lock().expect("buf lock").extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

fn setup() -> (Arc<CountingLine>, SharedBuf, Serial) {
    let line = Arc::new(CountingLine::default());
    let buf = SharedBuf::default();
    let serial = Serial::new(Arc::clone(&line) as Arc<dyn IrqLine>, Box::new(buf.clone()));
    (line, buf, serial)
}

fn inb(s: &mut Serial, off: u64) -> u8 {
    let mut b = [0u8];
    s.read(off, &mut b);
    b[0]
}

#[test]
fn idle_lsr_reads_0x60() {
    let (_, _, mut s) = setup();
    assert_eq!(inb(&mut s, 5), 0x60);
}

#[test]
fn output_reaches_the_writer_and_thre_interrupt_fires() {
    let (line, buf, mut s) = setup();
    s.write(1, &[0x02]); // IER: THR empty interrupt
    let after_ier = line.rising.load(Ordering::SeqCst);
    assert_eq!(after_ier, 1, "enabling THRE with an empty THR interrupts");
    assert_eq!(inb(&mut s, 2) & 0x0f, 0x02, "IIR says THR empty");
    for b in b"hi\n" {
        s.write(0, &[*b]);
    }
    assert_eq!(&*buf.0.lock().expect("buf"), b"hi\n");
    assert!(line.rising.load(Ordering::SeqCst) > after_ier);
    assert_eq!(inb(&mut s, 5), 0x60, "transmitter still idle");
}

#[test]
fn input_sets_data_ready_and_interrupts() {
    let (line, _, mut s) = setup();
    s.write(1, &[0x01]); // IER: received data available
    assert_eq!(s.enqueue_input(b"ab"), 2);
    assert_eq!(line.rising.load(Ordering::SeqCst), 1);
    assert_eq!(inb(&mut s, 5) & 1, 1, "LSR data ready");
    assert_eq!(inb(&mut s, 0), b'a');
    assert_eq!(inb(&mut s, 0), b'b');
    assert_eq!(inb(&mut s, 5), 0x60);
}

#[test]
fn input_is_bounded_by_the_fifo() {
    let (_, _, mut s) = setup();
    let cap = s.input_capacity();
    let big = vec![b'x'; cap + 100];
    assert_eq!(s.enqueue_input(&big), cap);
    assert_eq!(s.enqueue_input(b"more"), 0);
}

#[test]
fn bad_offsets_and_sizes_are_ignored() {
    let (_, buf, mut s) = setup();
    let mut b = [0xffu8; 4];
    s.read(0, &mut b);
    assert_eq!(b, [0; 4]);
    s.write(0, b"xy");
    s.write(8, b"z");
    s.write(u64::MAX, b"z");
    assert_eq!(inb(&mut s, 9), 0);
    assert!(buf.0.lock().expect("buf").is_empty());
}

fn watch() -> (Arc<ExitSignal>, PanicWatch<SharedBuf>, SharedBuf) {
    let exit = Arc::new(ExitSignal::new());
    let buf = SharedBuf::default();
    (Arc::clone(&exit), PanicWatch::new(buf.clone(), exit), buf)
}

#[test]
fn panic_line_requests_exit_and_passes_bytes_through() {
    let (exit, mut w, buf) = watch();
    w.write_all(b"booting\n[ 1.0] Kernel panic - not syn")
        .expect("write");
    assert_eq!(exit.get(), None);
    for b in b"cing: VFS: Unable to mount root fs\n" {
        w.write_all(&[*b]).expect("byte write");
    }
    assert_eq!(exit.get(), Some(GuestExit::Panic));
    assert!(buf.0.lock().expect("buf").ends_with(b"root fs\n"));
}

#[test]
fn no_exit_without_the_marker() {
    let (exit, mut w, _) = watch();
    w.write_all(b"Kernel panic - not\nsyncing\n")
        .expect("write");
    assert_eq!(exit.get(), None);
}

#[test]
fn long_lines_keep_memory_bounded_and_still_match() {
    let (exit, mut w, buf) = watch();
    let junk = vec![b'a'; 100_000];
    w.write_all(&junk).expect("write");
    assert!(w.line.len() <= LINE_BUFFER);
    assert!(w.line.capacity() <= 2 * LINE_BUFFER);
    assert_eq!(exit.get(), None);
    // Marker straddling the buffer boundary, in a line that never ends.
    let mut s = vec![b'b'; LINE_BUFFER - 10];
    s.extend_from_slice(PANIC_MARKER);
    s.extend_from_slice(&vec![b'c'; LINE_BUFFER]);
    w.write_all(&s).expect("write");
    assert_eq!(exit.get(), Some(GuestExit::Panic));
    assert_eq!(buf.0.lock().expect("buf").len(), junk.len() + s.len());
}
