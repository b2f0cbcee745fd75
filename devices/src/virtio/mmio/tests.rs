use std::sync::Mutex;
use std::time::Duration;

use virtio_queue::QueueT;

use super::*;
use crate::virtio::ActivateError;
use crate::virtio::testing::{Driver, Ring, driver_for};

const EVENT_IDX: u64 = 1 << 29;
const DEV_BIT: u64 = 1 << 3;

/// (size, desc, avail, used, event_idx) of one activated queue.
type QueueSeen = (u16, u64, u64, u64, bool);

#[derive(Default)]
struct FakeState {
    activations: Vec<(usize, u64, Vec<QueueSeen>)>,
    notify: Option<Arc<Event>>,
    interrupt: Option<Arc<dyn VirtioInterrupt>>,
    resets: u32,
    fail: bool,
    config_writes: Vec<(u64, Vec<u8>)>,
}

struct Fake(Arc<Mutex<FakeState>>);

impl VirtioDevice for Fake {
    fn device_type(&self) -> u32 {
        0x42
    }
    fn queue_max_sizes(&self) -> &[u16] {
        &[16, 8]
    }
    fn device_features(&self) -> u64 {
        EVENT_IDX | DEV_BIT
    }
    fn read_config(&self, offset: u64, data: &mut [u8]) {
        for (i, b) in data.iter_mut().enumerate() {
            *b = (offset as u8).wrapping_add(i as u8);
        }
    }
    fn write_config(&mut self, offset: u64, data: &[u8]) {
        self.0
            .lock()
            .expect("fake")
            .config_writes
            .push((offset, data.to_vec()));
    }
    fn activate(&mut self, ctx: ActivateContext) -> Result<(), ActivateError> {
        let mut s = self.0.lock().expect("fake");
        if s.fail {
            return Err(ActivateError::QueueCount {
                expected: 2,
                got: ctx.queues.len(),
            });
        }
        let qs = ctx
            .queues
            .iter()
            .map(|q| {
                (
                    q.size(),
                    q.desc_table(),
                    q.avail_ring(),
                    q.used_ring(),
                    q.event_idx_enabled(),
                )
            })
            .collect();
        s.activations
            .push((ctx.queues.len(), ctx.acked_features, qs));
        s.notify = Some(ctx.notify);
        s.interrupt = Some(ctx.interrupt);
        Ok(())
    }
    fn reset(&mut self) {
        self.0.lock().expect("fake").resets += 1;
    }
}

fn fake() -> (
    Arc<Mutex<FakeState>>,
    Driver,
    GuestMem,
    Arc<crate::virtio::testing::PulseCounter>,
) {
    let state = Arc::new(Mutex::new(FakeState::default()));
    let (d, mem, irq) = driver_for(Box::new(Fake(Arc::clone(&state))));
    (state, d, mem, irq)
}

fn bring_up(d: &mut Driver, mem: &GuestMem) -> (Ring, Ring) {
    d.negotiate(u64::MAX);
    let r0 = Ring::new(mem, 0x10000, 16);
    let r1 = Ring::new(mem, 0x20000, 8);
    d.setup_queue(0, &r0);
    d.setup_queue(1, &r1);
    d.driver_ok();
    (r0, r1)
}

#[test]
fn identification_registers() {
    let (_, mut d, _, _) = fake();
    assert_eq!(d.read(reg::MAGIC_VALUE), MMIO_MAGIC);
    assert_eq!(d.read(reg::VERSION), 2);
    assert_eq!(d.read(reg::DEVICE_ID), 0x42);
    assert_eq!(d.read(reg::VENDOR_ID), MMIO_VENDOR);
    assert_eq!(d.device_features(), EVENT_IDX | DEV_BIT | (1 << 32));
    d.write(reg::QUEUE_SEL, 0);
    assert_eq!(d.read(reg::QUEUE_NUM_MAX), 16);
    d.write(reg::QUEUE_SEL, 1);
    assert_eq!(d.read(reg::QUEUE_NUM_MAX), 8);
    d.write(reg::QUEUE_SEL, 2);
    assert_eq!(d.read(reg::QUEUE_NUM_MAX), 0, "no third queue");
}

#[test]
fn linux_style_bring_up_activates_with_the_configured_queues() {
    let (state, mut d, mem, _) = fake();
    let (r0, r1) = bring_up(&mut d, &mem);
    assert!(d.t.is_activated());
    assert_eq!(d.read(reg::STATUS), 0xf);
    let s = state.lock().expect("fake");
    assert_eq!(s.activations.len(), 1);
    let (n, acked, qs) = &s.activations[0];
    assert_eq!(*n, 2);
    assert_eq!(*acked, EVENT_IDX | DEV_BIT | (1 << 32));
    assert_eq!(qs[0], (16, r0.desc, r0.avail, r0.used, true));
    assert_eq!(qs[1], (8, r1.desc, r1.avail, r1.used, true));
}

#[test]
fn event_idx_is_off_when_not_negotiated() {
    let (state, mut d, mem, _) = fake();
    d.negotiate(!EVENT_IDX);
    d.setup_queue(0, &Ring::new(&mem, 0x10000, 16));
    d.driver_ok();
    let s = state.lock().expect("fake");
    assert!(!s.activations[0].2[0].4);
    assert_eq!(
        s.activations[0].0, 1,
        "queues stop at the first one not ready"
    );
}

#[test]
fn features_ok_refused_for_unoffered_bits_or_missing_version_1() {
    for bad in [(1u64 << 32) | (1 << 5), 1 << 3] {
        let (_, mut d, _, _) = fake();
        d.write(reg::STATUS, status::ACKNOWLEDGE);
        d.write(reg::STATUS, status::ACKNOWLEDGE | status::DRIVER);
        d.write(reg::DRIVER_FEATURES_SEL, 0);
        d.write(reg::DRIVER_FEATURES, bad as u32);
        d.write(reg::DRIVER_FEATURES_SEL, 1);
        d.write(reg::DRIVER_FEATURES, (bad >> 32) as u32);
        d.write(reg::STATUS, 0xb);
        assert_eq!(d.read(reg::STATUS), 3, "FEATURES_OK refused for {bad:#x}");
        d.driver_ok();
        assert!(!d.t.is_activated());
    }
}

#[test]
fn invalid_status_transitions_are_ignored() {
    let (state, mut d, _, _) = fake();
    d.write(reg::STATUS, 0xf);
    assert_eq!(d.read(reg::STATUS), 0);
    d.write(reg::STATUS, status::ACKNOWLEDGE);
    d.write(reg::STATUS, status::ACKNOWLEDGE | status::DRIVER_OK);
    assert_eq!(d.read(reg::STATUS), 1);
    d.write(reg::STATUS, status::DEVICE_NEEDS_RESET | 1);
    assert_eq!(d.read(reg::STATUS), 1, "driver cannot set NEEDS_RESET");
    d.write(reg::STATUS, 1 | status::FAILED);
    assert_eq!(d.read(reg::STATUS), 0x81);
    assert!(state.lock().expect("fake").activations.is_empty());
}

#[test]
fn notify_signals_the_event_only_when_active() {
    let (state, mut d, mem, _) = fake();
    d.notify(0);
    let (_r0, _r1) = bring_up(&mut d, &mem);
    let ev = state
        .lock()
        .expect("fake")
        .notify
        .clone()
        .expect("notify event");
    assert!(
        !ev.wait_timeout(Duration::from_millis(1)),
        "pre-activation notify dropped"
    );
    d.notify(1);
    assert!(ev.wait_timeout(Duration::from_secs(1)));
    d.notify(7);
    assert!(
        !ev.wait_timeout(Duration::from_millis(1)),
        "nonexistent queue ignored"
    );
}

#[test]
fn interrupt_status_ack_and_edge_pulses() {
    let (state, mut d, mem, irq) = fake();
    bring_up(&mut d, &mem);
    let int = state
        .lock()
        .expect("fake")
        .interrupt
        .clone()
        .expect("interrupt");
    int.trigger(InterruptKind::Queue);
    assert_eq!(irq.count(), 1);
    int.trigger(InterruptKind::Config);
    assert_eq!(irq.count(), 2);
    assert_eq!(d.read(reg::INTERRUPT_STATUS), INT_VRING | INT_CONFIG);
    d.write(reg::INTERRUPT_ACK, INT_VRING);
    assert_eq!(d.read(reg::INTERRUPT_STATUS), INT_CONFIG);
    assert_eq!(d.ack_interrupt(), INT_CONFIG);
    assert_eq!(d.read(reg::INTERRUPT_STATUS), 0);
}

#[test]
fn reset_stops_the_device_and_clears_state() {
    let (state, mut d, mem, _) = fake();
    bring_up(&mut d, &mem);
    let int = state
        .lock()
        .expect("fake")
        .interrupt
        .clone()
        .expect("interrupt");
    int.trigger(InterruptKind::Queue);
    d.write(reg::STATUS, 0);
    assert_eq!(state.lock().expect("fake").resets, 1);
    assert!(!d.t.is_activated());
    assert_eq!(d.read(reg::STATUS), 0);
    assert_eq!(d.read(reg::INTERRUPT_STATUS), 0);
    d.write(reg::QUEUE_SEL, 0);
    assert_eq!(d.read(reg::QUEUE_READY), 0);
    // And it comes back up.
    bring_up(&mut d, &mem);
    assert_eq!(state.lock().expect("fake").activations.len(), 2);
}

#[test]
fn queue_config_is_frozen_after_driver_ok() {
    let (state, mut d, mem, _) = fake();
    let (r0, _) = bring_up(&mut d, &mem);
    d.write(reg::QUEUE_SEL, 0);
    d.write(reg::QUEUE_NUM, 4);
    d.write(reg::QUEUE_DESC_LOW, 0x5000);
    d.write(reg::QUEUE_READY, 0);
    assert_eq!(d.read(reg::QUEUE_READY), 1);
    // Rewriting the same status is a no-op, not a second activation.
    d.write(reg::STATUS, 0xf);
    let s = state.lock().expect("fake");
    assert_eq!(s.activations.len(), 1);
    assert_eq!(s.activations[0].2[0].1, r0.desc);
}

#[test]
fn unusable_queues_set_needs_reset() {
    // Size not a power of two; ring beyond guest memory; size above max.
    let cases: [(u32, u64); 3] = [(12, 0x10000), (16, 0xffff_0000), (32, 0x10000)];
    for (size, desc) in cases {
        let (state, mut d, _, irq) = fake();
        d.negotiate(u64::MAX);
        d.write(reg::QUEUE_SEL, 0);
        d.write(reg::QUEUE_NUM, size);
        d.write(reg::QUEUE_DESC_LOW, desc as u32);
        d.write(reg::QUEUE_DRIVER_LOW, 0x11000);
        d.write(reg::QUEUE_DEVICE_LOW, 0x12000);
        d.write(reg::QUEUE_READY, 1);
        d.driver_ok();
        assert!(!d.t.is_activated(), "size {size} desc {desc:#x}");
        assert_ne!(d.read(reg::STATUS) & status::DEVICE_NEEDS_RESET, 0);
        assert_eq!(d.read(reg::INTERRUPT_STATUS), INT_CONFIG);
        assert_eq!(irq.count(), 1);
        assert!(state.lock().expect("fake").activations.is_empty());
        d.write(reg::STATUS, 0);
        assert_eq!(d.read(reg::STATUS), 0, "reset clears NEEDS_RESET");
    }
}

#[test]
fn activation_failure_sets_needs_reset() {
    let (state, mut d, mem, _) = fake();
    state.lock().expect("fake").fail = true;
    bring_up(&mut d, &mem);
    assert!(!d.t.is_activated());
    assert_ne!(d.read(reg::STATUS) & status::DEVICE_NEEDS_RESET, 0);
}

#[test]
fn odd_accesses_are_harmless_and_config_is_forwarded() {
    let (state, mut d, _, _) = fake();
    let mut b2 = [0xffu8; 2];
    d.t.read(reg::MAGIC_VALUE, &mut b2);
    assert_eq!(b2, [0, 0]);
    let mut b4 = [0xffu8; 4];
    d.t.read(reg::MAGIC_VALUE + 1, &mut b4);
    assert_eq!(b4, [0; 4]);
    d.t.read(0x0f8, &mut b4);
    assert_eq!(b4, [0; 4]);
    d.t.write(reg::STATUS, &[1]);
    assert_eq!(d.read(reg::STATUS), 0);
    d.write(0x0f0, 1);
    d.write(reg::DRIVER_FEATURES, 1);
    assert_eq!(d.config_bytes(3, 2), vec![3, 4]);
    d.t.write(reg::CONFIG + 8, &[9, 9]);
    assert_eq!(
        state.lock().expect("fake").config_writes,
        vec![(8, vec![9, 9])]
    );
    assert_eq!(d.read(reg::SHM_LEN_LOW), u32::MAX);
}
