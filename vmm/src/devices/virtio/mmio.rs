//! The virtio-mmio transport, version 2 ("modern"), per virtio 1.2 §4.2.
//!
//! # Design
//! The transport keeps the queue configuration the driver writes and, on
//! DRIVER_OK, validates every queue against guest memory before handing them
//! to the device. A driver that writes status 0 resets the device. Queue
//! notifications normally never reach this code: the device manager registers
//! an ioeventfd for the QueueNotify register, so KVM signals the device's
//! eventfd directly; the write path here is the fallback.

use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};
use virtio_bindings::virtio_config::{
    VIRTIO_CONFIG_S_ACKNOWLEDGE, VIRTIO_CONFIG_S_DRIVER, VIRTIO_CONFIG_S_DRIVER_OK,
    VIRTIO_CONFIG_S_FAILED, VIRTIO_CONFIG_S_FEATURES_OK,
};
use virtio_bindings::virtio_mmio as reg;
use virtio_queue::{Queue, QueueState, QueueT};
use vm_memory::GuestMemoryMmap;

use super::{Interrupt, VirtioDevice, VIRTIO_F_VERSION_1};
use crate::devices::log_limit::LogLimiter;
use crate::devices::BusDevice;
use crate::guest_warn;

/// Size of one device's MMIO window.
pub const MMIO_WINDOW_LEN: u64 = 0x1000;
/// Offset of the QueueNotify register, for ioeventfd registration.
pub const QUEUE_NOTIFY_OFFSET: u64 = reg::VIRTIO_MMIO_QUEUE_NOTIFY as u64;

const MAGIC: u32 = 0x7472_6976; // "virt"
const MMIO_VERSION: u32 = 2;
const VENDOR_ID: u32 = 0x554e_4950; // "UNIP"

/// The transport's registers and queues, saved in a snapshot.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MmioState {
    /// The device status register.
    pub status: u32,
    /// Features the driver acknowledged.
    pub driver_features: u64,
    /// QueueSel.
    pub queue_select: u32,
    /// DeviceFeaturesSel.
    pub device_features_select: u32,
    /// DriverFeaturesSel.
    pub driver_features_select: u32,
    /// Whether the device was running.
    pub activated: bool,
    /// Pending InterruptStatus bits.
    pub interrupt_status: u32,
    /// Every queue's configuration and ring positions.
    pub queues: Vec<SavedQueue>,
    /// The ConfigGeneration register (absent in older snapshots: 0).
    #[serde(default)]
    pub config_generation: u32,
}

/// A queue's state; virtio-queue's `QueueState` has no serde support.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SavedQueue(#[serde(with = "QueueStateDef")] pub QueueState);

#[derive(Serialize, Deserialize)]
#[serde(remote = "QueueState")]
struct QueueStateDef {
    max_size: u16,
    next_avail: u16,
    next_used: u16,
    event_idx_enabled: bool,
    size: u16,
    ready: bool,
    desc_table: u64,
    avail_ring: u64,
    used_ring: u64,
}

/// Why a saved transport cannot be restored.
#[derive(Debug, thiserror::Error)]
pub enum MmioRestoreError {
    /// The snapshot has a different queue count than the device.
    #[error("the snapshot has {saved} queues; the device has {device}")]
    QueueCount {
        /// In the snapshot.
        saved: usize,
        /// On the device.
        device: usize,
    },
    /// A saved queue is invalid for this guest memory.
    #[error("saved queue {0} is invalid")]
    BadQueue(usize),
    /// The device refused its queues.
    #[error("the device cannot be activated")]
    Activate(#[source] super::ActivateError),
}

/// One virtio device as seen through its MMIO window.
pub struct MmioTransport {
    device: Arc<Mutex<dyn VirtioDevice>>,
    interrupt: Arc<Interrupt>,
    mem: GuestMemoryMmap,
    queues: Vec<Queue>,
    queue_select: u32,
    device_features_select: u32,
    driver_features_select: u32,
    driver_features: u64,
    status: u32,
    activated: bool,
    log_limit: LogLimiter,
}

impl MmioTransport {
    /// Puts `device` behind a transport.
    pub fn new(
        device: Arc<Mutex<dyn VirtioDevice>>,
        interrupt: Arc<Interrupt>,
        mem: GuestMemoryMmap,
    ) -> MmioTransport {
        let queues = fresh_queues(&*lock(&device));
        MmioTransport {
            device,
            interrupt,
            mem,
            queues,
            queue_select: 0,
            device_features_select: 0,
            driver_features_select: 0,
            driver_features: 0,
            status: 0,
            activated: false,
            log_limit: LogLimiter::default(),
        }
    }

    /// Rebuilds a transport from `state`; an activated device gets its
    /// queues back and resumes where it stopped.
    pub fn restore(
        device: Arc<Mutex<dyn VirtioDevice>>,
        interrupt: Arc<Interrupt>,
        mem: GuestMemoryMmap,
        state: &MmioState,
    ) -> Result<MmioTransport, MmioRestoreError> {
        let count = lock(&device).queue_max_sizes().len();
        if state.queues.len() != count {
            return Err(MmioRestoreError::QueueCount {
                saved: state.queues.len(),
                device: count,
            });
        }
        let queues = state
            .queues
            .iter()
            .enumerate()
            .map(|(i, q)| Queue::try_from(q.0).map_err(|_| MmioRestoreError::BadQueue(i)))
            .collect::<Result<Vec<_>, _>>()?;
        let mut transport = MmioTransport::new(device, interrupt, mem);
        transport.status = state.status;
        transport.driver_features = state.driver_features;
        transport.queue_select = state.queue_select;
        transport.device_features_select = state.device_features_select;
        transport.driver_features_select = state.driver_features_select;
        if state.activated {
            if let Some(bad) = queues.iter().position(|q| !q.is_valid(&transport.mem)) {
                return Err(MmioRestoreError::BadQueue(bad));
            }
            {
                let mut device = lock(&transport.device);
                device.set_acked_features(state.driver_features);
                device
                    .activate(transport.mem.clone(), queues)
                    .map_err(MmioRestoreError::Activate)?;
            }
            transport.activated = true;
        } else {
            transport.queues = queues;
        }
        transport
            .interrupt
            .restore(state.interrupt_status, state.config_generation);
        Ok(transport)
    }

    /// The state to save; the device must not be processing queues.
    pub fn save_state(&self) -> MmioState {
        let queues = if self.activated {
            lock(&self.device).active_queues()
        } else {
            self.queues.iter().map(Queue::state).collect()
        };
        MmioState {
            status: self.status,
            driver_features: self.driver_features,
            queue_select: self.queue_select,
            device_features_select: self.device_features_select,
            driver_features_select: self.driver_features_select,
            activated: self.activated,
            interrupt_status: self.interrupt.status(),
            queues: queues.into_iter().map(SavedQueue).collect(),
            config_generation: self.interrupt.config_generation(),
        }
    }

    fn selected_queue(&mut self) -> Option<&mut Queue> {
        let index = usize::try_from(self.queue_select).ok()?;
        self.queues.get_mut(index)
    }

    fn read_register(&self, offset: u32) -> u32 {
        let device = lock(&self.device);
        match offset {
            reg::VIRTIO_MMIO_MAGIC_VALUE => MAGIC,
            reg::VIRTIO_MMIO_VERSION => MMIO_VERSION,
            reg::VIRTIO_MMIO_DEVICE_ID => device.device_type(),
            reg::VIRTIO_MMIO_VENDOR_ID => VENDOR_ID,
            reg::VIRTIO_MMIO_DEVICE_FEATURES => match self.device_features_select {
                0 => low_half(device.features()),
                1 => low_half(device.features() >> 32),
                _ => 0,
            },
            reg::VIRTIO_MMIO_QUEUE_NUM_MAX => usize::try_from(self.queue_select)
                .ok()
                .and_then(|i| self.queues.get(i))
                .map_or(0, |q| u32::from(q.max_size())),
            reg::VIRTIO_MMIO_QUEUE_READY => usize::try_from(self.queue_select)
                .ok()
                .and_then(|i| self.queues.get(i))
                .map_or(0, |q| u32::from(q.ready())),
            reg::VIRTIO_MMIO_INTERRUPT_STATUS => self.interrupt.status(),
            reg::VIRTIO_MMIO_STATUS => self.status,
            // Read under the device lock, which the device holds while it
            // changes its config space and bumps the generation.
            reg::VIRTIO_MMIO_CONFIG_GENERATION => self.interrupt.config_generation(),
            _ => {
                log::debug!("virtio-mmio: read of unknown register {offset:#x}");
                0
            }
        }
    }

    fn write_register(&mut self, offset: u32, value: u32) {
        // Queue layout is frozen once the device runs (virtio 1.2 §2.1.2).
        let queue_setup_allowed = !self.activated && self.status & VIRTIO_CONFIG_S_DRIVER != 0;
        match offset {
            reg::VIRTIO_MMIO_DEVICE_FEATURES_SEL => self.device_features_select = value,
            reg::VIRTIO_MMIO_DRIVER_FEATURES_SEL => self.driver_features_select = value,
            reg::VIRTIO_MMIO_DRIVER_FEATURES => {
                if self.status & VIRTIO_CONFIG_S_FEATURES_OK != 0 {
                    guest_warn!(
                        self.log_limit,
                        "virtio-mmio: driver changed features after FEATURES_OK; ignored"
                    );
                    return;
                }
                let offered = lock(&self.device).features();
                let shift = match self.driver_features_select {
                    0 => 0,
                    1 => 32,
                    _ => return,
                };
                // Only offered bits can be acked.
                self.driver_features |= (u64::from(value) << shift) & offered;
            }
            reg::VIRTIO_MMIO_QUEUE_SEL => self.queue_select = value,
            reg::VIRTIO_MMIO_QUEUE_NUM if queue_setup_allowed => {
                if let (Some(q), Ok(size)) = (self.selected_queue(), u16::try_from(value)) {
                    q.set_size(size);
                }
            }
            reg::VIRTIO_MMIO_QUEUE_READY if queue_setup_allowed => {
                if let Some(q) = self.selected_queue() {
                    q.set_ready(value == 1);
                }
            }
            reg::VIRTIO_MMIO_QUEUE_DESC_LOW if queue_setup_allowed => {
                self.set_queue_address(|q| q.set_desc_table_address(Some(value), None));
            }
            reg::VIRTIO_MMIO_QUEUE_DESC_HIGH if queue_setup_allowed => {
                self.set_queue_address(|q| q.set_desc_table_address(None, Some(value)));
            }
            reg::VIRTIO_MMIO_QUEUE_AVAIL_LOW if queue_setup_allowed => {
                self.set_queue_address(|q| q.set_avail_ring_address(Some(value), None));
            }
            reg::VIRTIO_MMIO_QUEUE_AVAIL_HIGH if queue_setup_allowed => {
                self.set_queue_address(|q| q.set_avail_ring_address(None, Some(value)));
            }
            reg::VIRTIO_MMIO_QUEUE_USED_LOW if queue_setup_allowed => {
                self.set_queue_address(|q| q.set_used_ring_address(Some(value), None));
            }
            reg::VIRTIO_MMIO_QUEUE_USED_HIGH if queue_setup_allowed => {
                self.set_queue_address(|q| q.set_used_ring_address(None, Some(value)));
            }
            reg::VIRTIO_MMIO_QUEUE_NOTIFY => self.notify(value),
            reg::VIRTIO_MMIO_INTERRUPT_ACK => self.interrupt.ack(value),
            reg::VIRTIO_MMIO_STATUS => self.set_status(value),
            _ => log::debug!("virtio-mmio: ignored write of {value:#x} to register {offset:#x}"),
        }
    }

    fn set_queue_address(&mut self, set: impl FnOnce(&mut Queue)) {
        if let Some(q) = self.selected_queue() {
            set(q);
        }
    }

    fn notify(&mut self, queue: u32) {
        let device = lock(&self.device);
        let evt = usize::try_from(queue)
            .ok()
            .and_then(|i| device.queue_events().get(i));
        match evt {
            Some(evt) => {
                if let Err(e) = evt.write(1) {
                    guest_warn!(
                        self.log_limit,
                        "virtio-mmio: cannot signal queue {queue}: {e}"
                    );
                }
            }
            None => guest_warn!(
                self.log_limit,
                "virtio-mmio: notify for nonexistent queue {queue}"
            ),
        }
    }

    fn set_status(&mut self, status: u32) {
        if status == 0 {
            self.reset();
            return;
        }
        // The driver may only add bits (virtio 1.2 §3.1.1), except FAILED.
        if status & self.status != self.status {
            guest_warn!(
                self.log_limit,
                "virtio-mmio: driver cleared status bits ({:#x} -> {status:#x}); ignored",
                self.status
            );
            return;
        }
        let added = status & !self.status;
        if added & VIRTIO_CONFIG_S_FEATURES_OK != 0
            && self.driver_features & VIRTIO_F_VERSION_1 == 0
        {
            // Leaving FEATURES_OK unset tells the driver we refuse (§3.1.1 step 6).
            guest_warn!(
                self.log_limit,
                "virtio-mmio: driver did not accept VIRTIO_F_VERSION_1; refusing"
            );
            self.status = status & !VIRTIO_CONFIG_S_FEATURES_OK;
            return;
        }
        self.status = status;
        let ready_bits = VIRTIO_CONFIG_S_ACKNOWLEDGE
            | VIRTIO_CONFIG_S_DRIVER
            | VIRTIO_CONFIG_S_FEATURES_OK
            | VIRTIO_CONFIG_S_DRIVER_OK;
        if added & VIRTIO_CONFIG_S_DRIVER_OK != 0 && status & ready_bits == ready_bits {
            self.activate();
        }
    }

    fn activate(&mut self) {
        if self.activated {
            return;
        }
        if let Some(bad) = self
            .queues
            .iter()
            .position(|q| !q.ready() || !q.is_valid(&self.mem))
        {
            guest_warn!(
                self.log_limit,
                "virtio-mmio: queue {bad} is not ready or not valid; device failed"
            );
            self.status |= VIRTIO_CONFIG_S_FAILED;
            return;
        }
        let queues = std::mem::take(&mut self.queues);
        let result = {
            let mut device = lock(&self.device);
            device.set_acked_features(self.driver_features);
            device.activate(self.mem.clone(), queues)
        };
        self.queues = fresh_queues(&*lock(&self.device));
        match result {
            Ok(()) => self.activated = true,
            Err(e) => {
                guest_warn!(self.log_limit, "virtio-mmio: device activation failed: {e}");
                self.status |= VIRTIO_CONFIG_S_FAILED;
            }
        }
    }

    fn reset(&mut self) {
        if self.activated {
            lock(&self.device).reset();
        }
        self.activated = false;
        self.status = 0;
        self.driver_features = 0;
        self.queue_select = 0;
        self.interrupt.ack(u32::MAX);
        self.queues = fresh_queues(&*lock(&self.device));
    }
}

impl BusDevice for MmioTransport {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        if offset >= u64::from(reg::VIRTIO_MMIO_CONFIG) {
            let config_offset = offset - u64::from(reg::VIRTIO_MMIO_CONFIG);
            lock(&self.device).read_config(config_offset, data);
            return;
        }
        let value = match (u32::try_from(offset), data.len()) {
            (Ok(offset), 4) => self.read_register(offset),
            _ => {
                guest_warn!(
                    self.log_limit,
                    "virtio-mmio: {}-byte read at {offset:#x}; registers are 32-bit",
                    data.len()
                );
                0
            }
        };
        let bytes = value.to_le_bytes();
        let n = data.len().min(4);
        data[..n].copy_from_slice(&bytes[..n]);
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if offset >= u64::from(reg::VIRTIO_MMIO_CONFIG) {
            log::debug!("virtio-mmio: config space is read-only for this device");
            return;
        }
        match (u32::try_from(offset), <[u8; 4]>::try_from(data)) {
            (Ok(offset), Ok(bytes)) => self.write_register(offset, u32::from_le_bytes(bytes)),
            _ => guest_warn!(
                self.log_limit,
                "virtio-mmio: {}-byte write at {offset:#x}; registers are 32-bit",
                data.len()
            ),
        }
    }
}

fn fresh_queues(device: &dyn VirtioDevice) -> Vec<Queue> {
    device
        .queue_max_sizes()
        .iter()
        .map(|&max| Queue::new(max).expect("device queue sizes are powers of two"))
        .collect()
}

fn low_half(v: u64) -> u32 {
    u32::try_from(v & u64::from(u32::MAX)).expect("masked to 32 bits")
}

fn lock<T: ?Sized>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().expect("virtio device lock poisoned")
}

#[cfg(test)]
mod tests {
    use vm_memory::GuestAddress;
    use vmm_sys_util::eventfd::EventFd;

    use super::*;
    use crate::devices::virtio::ActivateError;
    use virtio_bindings::virtio_mmio::{VIRTIO_MMIO_INT_CONFIG, VIRTIO_MMIO_INT_VRING};

    struct FakeDevice {
        events: Vec<EventFd>,
        activated_with: Option<usize>,
        queues: Vec<QueueState>,
        resets: usize,
        acked: u64,
    }

    impl VirtioDevice for FakeDevice {
        fn device_type(&self) -> u32 {
            42
        }
        fn queue_max_sizes(&self) -> &[u16] {
            &[16, 16]
        }
        fn features(&self) -> u64 {
            VIRTIO_F_VERSION_1 | 0b101
        }
        fn set_acked_features(&mut self, features: u64) {
            self.acked = features;
        }
        fn read_config(&self, offset: u64, data: &mut [u8]) {
            data.fill(u8::try_from(offset).unwrap_or(0xff));
        }
        fn queue_events(&self) -> &[EventFd] {
            &self.events
        }
        fn activate(
            &mut self,
            _: GuestMemoryMmap,
            queues: Vec<Queue>,
        ) -> Result<(), ActivateError> {
            self.activated_with = Some(queues.len());
            self.queues = queues.iter().map(Queue::state).collect();
            Ok(())
        }
        fn reset(&mut self) {
            self.resets += 1;
        }
        fn active_queues(&self) -> Vec<QueueState> {
            self.queues.clone()
        }
    }

    fn fake_device() -> Arc<Mutex<FakeDevice>> {
        Arc::new(Mutex::new(FakeDevice {
            events: vec![
                EventFd::new(libc::EFD_NONBLOCK).unwrap(),
                EventFd::new(libc::EFD_NONBLOCK).unwrap(),
            ],
            activated_with: None,
            queues: Vec::new(),
            resets: 0,
            acked: 0,
        }))
    }

    fn fake_memory() -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap()
    }

    fn setup() -> (MmioTransport, Arc<Mutex<FakeDevice>>) {
        let device = fake_device();
        let irq = Arc::new(Interrupt::new(EventFd::new(libc::EFD_NONBLOCK).unwrap()));
        (
            MmioTransport::new(device.clone(), irq, fake_memory()),
            device,
        )
    }

    fn restore(
        state: &MmioState,
    ) -> Result<(MmioTransport, Arc<Mutex<FakeDevice>>), MmioRestoreError> {
        let device = fake_device();
        let irq = Arc::new(Interrupt::new(EventFd::new(libc::EFD_NONBLOCK).unwrap()));
        MmioTransport::restore(device.clone(), irq, fake_memory(), state).map(|t| (t, device))
    }

    #[test]
    fn an_active_transport_survives_save_and_restore() {
        let (mut t, _) = setup();
        negotiate(&mut t, 1);
        let s = read(&mut t, reg::VIRTIO_MMIO_STATUS) | VIRTIO_CONFIG_S_DRIVER_OK;
        write(&mut t, reg::VIRTIO_MMIO_STATUS, s);
        t.interrupt.raise(VIRTIO_MMIO_INT_VRING);
        assert_eq!(read(&mut t, reg::VIRTIO_MMIO_CONFIG_GENERATION), 0);
        t.interrupt.signal_config_change();
        assert_eq!(read(&mut t, reg::VIRTIO_MMIO_CONFIG_GENERATION), 1);
        let saved = t.save_state();
        assert!(saved.activated);
        assert_eq!(saved.queues[1].0.desc_table, 0x2000);
        assert_eq!(saved.config_generation, 1);

        let json = serde_json::to_string(&saved).unwrap();
        let back: MmioState = serde_json::from_str(&json).unwrap();
        assert_eq!(back, saved);
        let (mut restored, dev) = restore(&back).expect("restored");
        assert_eq!(
            dev.lock().unwrap().activated_with,
            Some(2),
            "device resumed"
        );
        assert_eq!(dev.lock().unwrap().acked, VIRTIO_F_VERSION_1);
        assert_eq!(restored.save_state(), saved);
        assert_eq!(read(&mut restored, reg::VIRTIO_MMIO_STATUS), s);
        assert_eq!(
            read(&mut restored, reg::VIRTIO_MMIO_INTERRUPT_STATUS),
            VIRTIO_MMIO_INT_VRING | VIRTIO_MMIO_INT_CONFIG
        );
        assert_eq!(
            read(&mut restored, reg::VIRTIO_MMIO_CONFIG_GENERATION),
            1,
            "the generation never goes back, so a driver mid-read rereads"
        );
    }

    #[test]
    fn a_saved_transport_from_before_config_generations_still_loads() {
        let (t, _) = setup();
        let saved = t.save_state();
        let mut json = serde_json::to_value(&saved).unwrap();
        json.as_object_mut()
            .unwrap()
            .remove("config_generation")
            .expect("serialized");
        let back: MmioState = serde_json::from_value(json).expect("old state loads");
        assert_eq!(back, saved);
    }

    #[test]
    fn a_saved_queue_outside_guest_memory_is_refused() {
        let (mut t, _) = setup();
        negotiate(&mut t, 1);
        let s = read(&mut t, reg::VIRTIO_MMIO_STATUS) | VIRTIO_CONFIG_S_DRIVER_OK;
        write(&mut t, reg::VIRTIO_MMIO_STATUS, s);
        let mut saved = t.save_state();
        saved.queues[0].0.used_ring = 1 << 40;
        assert!(matches!(
            restore(&saved),
            Err(MmioRestoreError::BadQueue(0))
        ));
        saved.queues.pop();
        assert!(matches!(
            restore(&saved),
            Err(MmioRestoreError::QueueCount {
                saved: 1,
                device: 2
            })
        ));
    }

    fn read(t: &mut MmioTransport, offset: u32) -> u32 {
        let mut b = [0u8; 4];
        t.read(u64::from(offset), &mut b);
        u32::from_le_bytes(b)
    }

    fn write(t: &mut MmioTransport, offset: u32, value: u32) {
        t.write(u64::from(offset), &value.to_le_bytes());
    }

    /// Runs the driver side of virtio 1.2 §3.1.1 with valid queues.
    fn negotiate(t: &mut MmioTransport, features_hi: u32) {
        write(t, reg::VIRTIO_MMIO_STATUS, VIRTIO_CONFIG_S_ACKNOWLEDGE);
        write(
            t,
            reg::VIRTIO_MMIO_STATUS,
            VIRTIO_CONFIG_S_ACKNOWLEDGE | VIRTIO_CONFIG_S_DRIVER,
        );
        write(t, reg::VIRTIO_MMIO_DRIVER_FEATURES_SEL, 1);
        write(t, reg::VIRTIO_MMIO_DRIVER_FEATURES, features_hi);
        let s = VIRTIO_CONFIG_S_ACKNOWLEDGE | VIRTIO_CONFIG_S_DRIVER | VIRTIO_CONFIG_S_FEATURES_OK;
        write(t, reg::VIRTIO_MMIO_STATUS, s);
        for q in 0..2u32 {
            write(t, reg::VIRTIO_MMIO_QUEUE_SEL, q);
            write(t, reg::VIRTIO_MMIO_QUEUE_NUM, 16);
            write(t, reg::VIRTIO_MMIO_QUEUE_DESC_LOW, 0x1000 * (q + 1));
            write(
                t,
                reg::VIRTIO_MMIO_QUEUE_AVAIL_LOW,
                0x1000 * (q + 1) + 0x100,
            );
            write(t, reg::VIRTIO_MMIO_QUEUE_USED_LOW, 0x1000 * (q + 1) + 0x200);
            write(t, reg::VIRTIO_MMIO_QUEUE_READY, 1);
        }
    }

    #[test]
    fn identifies_as_a_modern_virtio_device() {
        let (mut t, _) = setup();
        assert_eq!(read(&mut t, reg::VIRTIO_MMIO_MAGIC_VALUE), MAGIC);
        assert_eq!(read(&mut t, reg::VIRTIO_MMIO_VERSION), 2);
        assert_eq!(read(&mut t, reg::VIRTIO_MMIO_DEVICE_ID), 42);
        write(&mut t, reg::VIRTIO_MMIO_DEVICE_FEATURES_SEL, 1);
        assert_eq!(
            read(&mut t, reg::VIRTIO_MMIO_DEVICE_FEATURES),
            1,
            "VERSION_1 is bit 32"
        );
        write(&mut t, reg::VIRTIO_MMIO_QUEUE_SEL, 1);
        assert_eq!(read(&mut t, reg::VIRTIO_MMIO_QUEUE_NUM_MAX), 16);
        write(&mut t, reg::VIRTIO_MMIO_QUEUE_SEL, 2);
        assert_eq!(
            read(&mut t, reg::VIRTIO_MMIO_QUEUE_NUM_MAX),
            0,
            "no third queue"
        );
        let mut cfg = [0u8; 2];
        t.read(u64::from(reg::VIRTIO_MMIO_CONFIG) + 3, &mut cfg);
        assert_eq!(cfg, [3, 3], "config reads go to the device at their offset");
    }

    #[test]
    fn driver_ok_activates_with_all_queues() {
        let (mut t, dev) = setup();
        negotiate(&mut t, 1);
        let s = read(&mut t, reg::VIRTIO_MMIO_STATUS) | VIRTIO_CONFIG_S_DRIVER_OK;
        write(&mut t, reg::VIRTIO_MMIO_STATUS, s);
        assert_eq!(dev.lock().unwrap().activated_with, Some(2));
        assert_eq!(
            dev.lock().unwrap().acked,
            VIRTIO_F_VERSION_1,
            "told what was acked"
        );
        assert_eq!(read(&mut t, reg::VIRTIO_MMIO_STATUS), s);
        // Writing 0 resets the device.
        write(&mut t, reg::VIRTIO_MMIO_STATUS, 0);
        assert_eq!(dev.lock().unwrap().resets, 1);
        assert_eq!(read(&mut t, reg::VIRTIO_MMIO_STATUS), 0);
    }

    #[test]
    fn a_driver_without_version_1_is_refused() {
        let (mut t, dev) = setup();
        negotiate(&mut t, 0);
        let status = read(&mut t, reg::VIRTIO_MMIO_STATUS);
        assert_eq!(
            status & VIRTIO_CONFIG_S_FEATURES_OK,
            0,
            "FEATURES_OK not accepted"
        );
        assert_eq!(dev.lock().unwrap().activated_with, None);
    }

    #[test]
    fn queues_outside_guest_memory_fail_the_device() {
        let (mut t, dev) = setup();
        negotiate(&mut t, 1);
        write(&mut t, reg::VIRTIO_MMIO_QUEUE_SEL, 0);
        write(&mut t, reg::VIRTIO_MMIO_QUEUE_READY, 0);
        write(&mut t, reg::VIRTIO_MMIO_QUEUE_DESC_HIGH, 0xffff);
        write(&mut t, reg::VIRTIO_MMIO_QUEUE_READY, 1);
        let s = read(&mut t, reg::VIRTIO_MMIO_STATUS) | VIRTIO_CONFIG_S_DRIVER_OK;
        write(&mut t, reg::VIRTIO_MMIO_STATUS, s);
        assert_eq!(dev.lock().unwrap().activated_with, None);
        assert_ne!(
            read(&mut t, reg::VIRTIO_MMIO_STATUS) & VIRTIO_CONFIG_S_FAILED,
            0
        );
    }

    #[test]
    fn notify_signals_the_queue_eventfd_and_ack_clears_interrupts() {
        let (mut t, dev) = setup();
        write(&mut t, reg::VIRTIO_MMIO_QUEUE_NOTIFY, 1);
        assert_eq!(dev.lock().unwrap().events[1].read().unwrap(), 1);
        write(&mut t, reg::VIRTIO_MMIO_QUEUE_NOTIFY, 9); // no such queue: ignored
        t.interrupt.signal_used_queue();
        assert_eq!(read(&mut t, reg::VIRTIO_MMIO_INTERRUPT_STATUS), 1);
        write(&mut t, reg::VIRTIO_MMIO_INTERRUPT_ACK, 1);
        assert_eq!(read(&mut t, reg::VIRTIO_MMIO_INTERRUPT_STATUS), 0);
    }

    #[test]
    fn odd_sized_register_accesses_are_ignored() {
        let (mut t, _) = setup();
        let mut b = [0xaau8; 2];
        t.read(u64::from(reg::VIRTIO_MMIO_MAGIC_VALUE), &mut b);
        assert_eq!(b, [0, 0]);
        t.write(u64::from(reg::VIRTIO_MMIO_STATUS), &[1]);
        assert_eq!(read(&mut t, reg::VIRTIO_MMIO_STATUS), 0);
    }
}
