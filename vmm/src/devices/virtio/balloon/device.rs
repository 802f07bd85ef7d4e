//! The balloon device: its virtio side and the free page reports it serves.

use std::sync::Arc;

use virtio_queue::{Queue, QueueState, QueueT};
use vm_memory::{
    Address, GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion,
    MemoryRegionAddress,
};
use vmm_sys_util::eventfd::EventFd;

use super::metrics::BalloonMetrics;
use super::VIRTIO_ID_BALLOON;
use super::{BalloonError, PAGE_SIZE, QUEUE_SIZES, REPORTING_QUEUE, VIRTIO_BALLOON_F_REPORTING};
use crate::devices::log_limit::LogLimiter;
use crate::devices::virtio::{
    read_config_bytes, ActivateError, Interrupt, VirtioDevice, VIRTIO_F_VERSION_1,
};
use crate::guest_warn;

/// What the device offers.
const FEATURES: u64 = VIRTIO_F_VERSION_1 | (1 << VIRTIO_BALLOON_F_REPORTING);
/// The config space: num_pages, actual, free_page_hint_cmd_id, poison_val;
/// all zero, so the driver never inflates.
const CONFIG: [u8; 16] = [0; 16];
/// Chains served per queue per wake-up before the event loop serves others.
const BATCH: usize = 64;

/// Why a reported range was not discarded.
#[derive(Debug, thiserror::Error)]
pub(super) enum RangeError {
    #[error("the descriptor is device-readable; reports are device-writable")]
    ReadOnly,
    #[error("range {addr:#x}+{len:#x} is not page-aligned")]
    Unaligned { addr: u64, len: u32 },
    #[error("range {addr:#x}+{len:#x} is not inside one guest memory region")]
    OutsideMemory { addr: u64, len: u32 },
    #[error("madvise(MADV_DONTNEED) on {addr:#x}+{len:#x} failed: {source}")]
    Discard {
        addr: u64,
        len: u32,
        source: std::io::Error,
    },
}

/// The queues and memory of an activated device.
struct Active {
    mem: GuestMemoryMmap,
    queues: Vec<Queue>,
}

/// The virtio-balloon device (free page reporting only).
pub struct Balloon {
    pub(super) queue_events: Vec<EventFd>,
    interrupt: Arc<Interrupt>,
    active: Option<Active>,
    metrics: BalloonMetrics,
    log_limit: LogLimiter,
}

impl Balloon {
    /// A balloon whose target stays 0: it takes free page reports only.
    pub fn new(interrupt: Arc<Interrupt>) -> Result<Balloon, BalloonError> {
        let queue_events = QUEUE_SIZES
            .iter()
            .map(|_| EventFd::new(libc::EFD_NONBLOCK).map_err(BalloonError::EventFd))
            .collect::<Result<_, _>>()?;
        Ok(Balloon {
            queue_events,
            interrupt,
            active: None,
            metrics: BalloonMetrics::default(),
            log_limit: LogLimiter::default(),
        })
    }

    /// The counters.
    pub fn metrics(&self) -> BalloonMetrics {
        self.metrics
    }

    /// Serves queue `index` and interrupts the guest if a buffer was used.
    pub fn process(&mut self, index: usize) {
        if self.process_queue(index) {
            self.interrupt.signal_used_queue();
        }
    }

    /// Serves up to a batch of chains of queue `index`: reports are
    /// discarded, anything else is returned unused. Returns whether a
    /// buffer was used.
    pub(super) fn process_queue(&mut self, index: usize) -> bool {
        let Some(Active { mem, queues }) = self.active.as_mut() else {
            return false;
        };
        let Some(queue) = queues.get_mut(index) else {
            return false;
        };
        let start = queue.next_used();
        let mut popped = 0;
        while popped < BATCH {
            let Some(chain) = queue.pop_descriptor_chain(&*mem) else {
                break;
            };
            popped += 1;
            let head = chain.head_index();
            if index == REPORTING_QUEUE {
                for desc in chain {
                    match discard(mem, desc.addr(), desc.len(), desc.is_write_only()) {
                        Ok(()) => {
                            self.metrics.ranges += 1;
                            self.metrics.bytes += u64::from(desc.len());
                        }
                        Err(e) => {
                            self.metrics.bad_ranges += 1;
                            guest_warn!(self.log_limit, "virtio-balloon: {e}");
                        }
                    }
                }
            } else {
                self.metrics.ignored_chains += 1;
            }
            if let Err(e) = queue.add_used(&*mem, head, 0) {
                guest_warn!(
                    self.log_limit,
                    "virtio-balloon: cannot return a buffer: {e}"
                );
            }
        }
        if popped == BATCH {
            // There may be more: come back after the event loop served others.
            if let Err(e) = self.queue_events[index].write(1) {
                log::error!("virtio-balloon: cannot requeue work: {e}");
            }
        }
        queue.next_used() != start
    }
}

/// Gives the host memory behind the guest range `addr`+`len` back: the
/// guest reported it free. The range must be page-aligned, device-writable
/// and inside one memory region.
pub(super) fn discard(
    mem: &GuestMemoryMmap,
    addr: GuestAddress,
    len: u32,
    writable: bool,
) -> Result<(), RangeError> {
    if !writable {
        return Err(RangeError::ReadOnly);
    }
    let (a, l) = (addr.raw_value(), len);
    if a % PAGE_SIZE != 0 || u64::from(l) % PAGE_SIZE != 0 || l == 0 {
        return Err(RangeError::Unaligned { addr: a, len: l });
    }
    let outside = || RangeError::OutsideMemory { addr: a, len: l };
    let (region, start) = mem.to_region_addr(addr).ok_or_else(outside)?;
    let len = usize::try_from(len).map_err(|_| outside())?;
    region.checked_offset(start, len - 1).ok_or_else(outside)?;
    let host = region
        .get_host_address(MemoryRegionAddress(start.raw_value()))
        .map_err(|_| outside())?;
    // SAFETY: `host`..`host + len` lies inside one mapping of guest memory
    // (checked above), which this VM owns for its whole life; the mapping is
    // private, so MADV_DONTNEED only drops the VM's own copies of the
    // pages, which the guest reported free and does not read before it
    // writes them again.
    let rc = unsafe { libc::madvise(host.cast(), len, libc::MADV_DONTNEED) };
    if rc != 0 {
        return Err(RangeError::Discard {
            addr: a,
            len: l,
            source: std::io::Error::last_os_error(),
        });
    }
    Ok(())
}

impl VirtioDevice for Balloon {
    fn device_type(&self) -> u32 {
        VIRTIO_ID_BALLOON
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &QUEUE_SIZES
    }

    fn features(&self) -> u64 {
        FEATURES
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_bytes(&CONFIG, offset, data);
    }

    fn queue_events(&self) -> &[EventFd] {
        &self.queue_events
    }

    fn activate(&mut self, mem: GuestMemoryMmap, queues: Vec<Queue>) -> Result<(), ActivateError> {
        if queues.len() != QUEUE_SIZES.len() {
            return Err(ActivateError::BadQueue(queues.len()));
        }
        self.active = Some(Active { mem, queues });
        // Reports may be queued already (after a restore): look at once.
        self.queue_events[REPORTING_QUEUE]
            .write(1)
            .map_err(ActivateError::Wake)
    }

    fn reset(&mut self) {
        self.active = None;
    }

    fn active_queues(&self) -> Vec<QueueState> {
        self.active
            .iter()
            .flat_map(|active| active.queues.iter().map(Queue::state))
            .collect()
    }
}
