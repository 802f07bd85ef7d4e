//! Virtio devices and the virtio-mmio transport they share.
//!
//! # Design
//! A device ([`VirtioDevice`]) knows its queues and its config space; the
//! [`mmio::MmioTransport`] owns the register file the driver programs and
//! hands the device its queues when the driver sets DRIVER_OK. Queue
//! notifications reach the device as eventfds, so its work runs on the VMM's
//! event-loop thread, never on a vCPU thread; interrupts leave through an
//! irqfd ([`Interrupt`]).

pub mod balloon;
pub mod block;
pub mod mmio;
pub mod net;
#[cfg(test)]
pub(crate) mod test_queue;
pub mod vsock;

use std::sync::atomic::{AtomicU32, Ordering};

use virtio_bindings::virtio_mmio::{VIRTIO_MMIO_INT_CONFIG, VIRTIO_MMIO_INT_VRING};
use virtio_queue::{Queue, QueueState};
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::EventFd;

/// Virtio 1.0 ("modern") devices, the only kind we offer.
pub const VIRTIO_F_VERSION_1: u64 = 1 << virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;

/// Errors while activating a device.
#[derive(Debug, thiserror::Error)]
pub enum ActivateError {
    /// The driver gave a queue the device cannot use.
    #[error("queue {0} is not valid (size or ring addresses)")]
    BadQueue(usize),
    /// The device cannot signal its event loop.
    #[error("cannot wake the device's event loop")]
    Wake(#[source] std::io::Error),
}

/// Copies `data.len()` bytes of a device's `config` space from `offset`;
/// bytes past its end read as zero, as the spec allows for any offset the
/// driver tries.
pub fn read_config_bytes(config: &[u8], offset: u64, data: &mut [u8]) {
    let start = usize::try_from(offset).unwrap_or(usize::MAX);
    for (i, byte) in data.iter_mut().enumerate() {
        *byte = start
            .checked_add(i)
            .and_then(|at| config.get(at))
            .copied()
            .unwrap_or(0);
    }
}

/// A virtio device behind a transport.
pub trait VirtioDevice: Send {
    /// The virtio device ID (e.g. 19 for vsock).
    fn device_type(&self) -> u32;
    /// The maximum size of each queue; the length is the queue count.
    fn queue_max_sizes(&self) -> &[u16];
    /// The feature bits the device offers.
    fn features(&self) -> u64;
    /// The features the driver accepted, before [`VirtioDevice::activate`].
    fn set_acked_features(&mut self, _features: u64) {}
    /// Reads the device-specific config space.
    fn read_config(&self, offset: u64, data: &mut [u8]);
    /// The eventfds the transport signals on a queue notification, one per queue.
    fn queue_events(&self) -> &[EventFd];
    /// Starts the device with the queues the driver set up.
    fn activate(&mut self, mem: GuestMemoryMmap, queues: Vec<Queue>) -> Result<(), ActivateError>;
    /// Returns the device to its pre-activation state (driver wrote status 0).
    fn reset(&mut self);
    /// The state of the queues an activated device holds, for a snapshot.
    fn active_queues(&self) -> Vec<QueueState>;
}

/// A device's interrupt line: the ISR status bits plus the irqfd that raises
/// it, and the config generation the transport shows.
///
/// The generation lives here rather than in the transport because the device
/// changes its config space and the transport shows the counter: this is the
/// one object both hold. Every config change is announced through
/// [`Interrupt::signal_config_change`], which bumps the generation first.
pub struct Interrupt {
    status: AtomicU32,
    config_generation: AtomicU32,
    irqfd: EventFd,
}

impl Interrupt {
    /// Wraps an irqfd already registered with KVM.
    pub fn new(irqfd: EventFd) -> Interrupt {
        Interrupt {
            status: AtomicU32::new(0),
            config_generation: AtomicU32::new(0),
            irqfd,
        }
    }

    /// Tells the driver that a queue has new used buffers.
    pub fn signal_used_queue(&self) {
        self.raise(VIRTIO_MMIO_INT_VRING);
    }

    /// Tells the driver that the device's config space changed, after
    /// bumping the config generation so that a driver that was reading the
    /// config space across the change rereads it (virtio 1.2 §2.5.1).
    /// The device must hold its own lock while it changes the config space
    /// and calls this: the transport reads both under that lock.
    pub fn signal_config_change(&self) {
        self.config_generation.fetch_add(1, Ordering::SeqCst);
        self.raise(VIRTIO_MMIO_INT_CONFIG);
    }

    /// The ConfigGeneration register.
    pub fn config_generation(&self) -> u32 {
        self.config_generation.load(Ordering::SeqCst)
    }

    fn raise(&self, bit: u32) {
        self.status.fetch_or(bit, Ordering::SeqCst);
        if let Err(e) = self.irqfd.write(1) {
            log::error!("cannot raise a virtio interrupt: {e}");
        }
    }

    /// The pending ISR bits, as the InterruptStatus register shows them.
    pub fn status(&self) -> u32 {
        self.status.load(Ordering::SeqCst)
    }

    /// Sets the ISR bits and config generation of a restored device and
    /// raises the line again if any bit was pending, since the interrupt may
    /// not have reached the guest.
    pub fn restore(&self, bits: u32, config_generation: u32) {
        self.config_generation
            .store(config_generation, Ordering::SeqCst);
        self.status.store(0, Ordering::SeqCst);
        if bits != 0 {
            self.raise(bits);
        }
    }

    /// Clears the bits the driver acknowledged.
    pub fn ack(&self, bits: u32) {
        self.status.fetch_and(!bits, Ordering::SeqCst);
    }
}
