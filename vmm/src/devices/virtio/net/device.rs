//! The net device: its virtio side and the frame moves between the queues
//! and the tap.

use std::io;
use std::ops::Range;
use std::os::fd::OwnedFd;
use std::os::raw::c_uint;
use std::sync::Arc;

use virtio_bindings::virtio_net::{
    VIRTIO_NET_F_CSUM, VIRTIO_NET_F_GUEST_CSUM, VIRTIO_NET_F_GUEST_TSO4, VIRTIO_NET_F_GUEST_TSO6,
    VIRTIO_NET_F_HOST_TSO4, VIRTIO_NET_F_HOST_TSO6, VIRTIO_NET_F_MAC, VIRTIO_NET_F_MRG_RXBUF,
    VIRTIO_NET_F_STATUS, VIRTIO_NET_S_LINK_UP,
};
use virtio_queue::{DescriptorChain, Queue, QueueState, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemory, GuestMemoryMmap, Permissions};
use vmm_sys_util::eventfd::EventFd;

use super::event_handler::TapWatch;
use super::metrics::NetMetrics;
use super::tap::Tap;
use super::{
    NetError, MAX_FRAME_LEN, NUM_BUFFERS_OFFSET, QUEUE_SIZES, RX, TX, VIRTIO_ID_NET, VNET_HDR_LEN,
};
use crate::devices::log_limit::LogLimiter;
use crate::devices::virtio::{
    read_config_bytes, ActivateError, Interrupt, VirtioDevice, VIRTIO_F_VERSION_1,
};
use crate::guest_warn;

/// An Ethernet header; a shorter frame is not worth sending.
const ETH_HLEN: usize = 14;
/// Frames moved per wake-up before the event loop serves others.
const BATCH: usize = 256;

const fn bit(feature: u32) -> u64 {
    1 << feature
}

/// What the device offers. Every offload passes through in the vnet header.
const FEATURES: u64 = VIRTIO_F_VERSION_1
    | bit(VIRTIO_NET_F_MAC)
    | bit(VIRTIO_NET_F_STATUS)
    | bit(VIRTIO_NET_F_MRG_RXBUF)
    | bit(VIRTIO_NET_F_CSUM)
    | bit(VIRTIO_NET_F_HOST_TSO4)
    | bit(VIRTIO_NET_F_HOST_TSO6)
    | bit(VIRTIO_NET_F_GUEST_CSUM)
    | bit(VIRTIO_NET_F_GUEST_TSO4)
    | bit(VIRTIO_NET_F_GUEST_TSO6);

/// Why a descriptor chain was returned unused.
#[derive(Debug, thiserror::Error)]
enum ChainError {
    #[error("{0}")]
    WrongDirection(&'static str),
    #[error("descriptor {addr:#x}+{len:#x} is outside guest memory")]
    OutsideMemory { addr: u64, len: u32 },
    #[error("the chain ends early (a loop, a bad next index, or longer than the queue)")]
    Truncated,
    #[error("the frame is longer than {MAX_FRAME_LEN} bytes")]
    TooLong,
    #[error("{0} bytes is too short for a vnet and Ethernet header")]
    TooShort(usize),
}

/// The queues and memory of an activated device.
struct Active {
    mem: GuestMemoryMmap,
    queues: Vec<Queue>,
}

/// The backend, if the device has one.
struct Backend {
    tap: Tap,
    /// The tap failed for good (its interface is gone); it is no longer read.
    failed: bool,
    /// Whether the event loop watches the tap.
    watch: TapWatch,
}

/// An rx chain taken from the queue for the frame waiting in [`Rx`].
struct RxChain {
    head: u16,
    /// Its writable ranges, in [`Rx::segments`].
    segments: Range<usize>,
    /// A malformed chain, returned with length 0 along with the frame.
    bad: bool,
}

/// The receive side: one frame from the tap and the chains held for it.
struct Rx {
    frame: Vec<u8>,
    /// Length of the frame waiting in `frame`; 0 when none waits.
    frame_len: usize,
    /// Chains popped for the waiting frame and not yet returned. They are
    /// always the last ones popped, so a snapshot can give them back by
    /// rewinding the queue (see `active_queues`).
    chains: Vec<RxChain>,
    segments: Vec<(GuestAddress, u32)>,
}

/// What became of the waiting rx frame.
enum Delivery {
    /// It is in the guest's buffers.
    Delivered,
    /// It cannot fit the guest's buffers and was dropped.
    Dropped,
    /// The guest has too few buffers; it keeps waiting.
    NoBuffers,
}

/// The virtio-net device.
pub struct Net {
    mac: [u8; 6],
    backend: Option<Backend>,
    acked_features: u64,
    pub(super) queue_events: Vec<EventFd>,
    pub(super) activate_evt: EventFd,
    interrupt: Arc<Interrupt>,
    active: Option<Active>,
    rx: Rx,
    /// A tx frame on its way from guest memory to the tap.
    tx_frame: Vec<u8>,
    metrics: NetMetrics,
    log_limit: LogLimiter,
}

impl Net {
    /// A device with MAC address `mac` whose frames go to and come from
    /// `tap` (see the module docs for what the fd must be). Without a tap
    /// the device is detached: it drops what the guest sends and never
    /// receives anything.
    pub fn new(
        mac: [u8; 6],
        tap: Option<OwnedFd>,
        interrupt: Arc<Interrupt>,
    ) -> Result<Net, NetError> {
        let backend = match tap {
            Some(fd) => Some(Backend {
                tap: Tap::new(fd)?,
                failed: false,
                watch: TapWatch::Off,
            }),
            None => None,
        };
        let eventfd = || EventFd::new(libc::EFD_NONBLOCK).map_err(NetError::EventFd);
        Ok(Net {
            mac,
            backend,
            acked_features: 0,
            queue_events: vec![eventfd()?, eventfd()?],
            activate_evt: eventfd()?,
            interrupt,
            active: None,
            rx: Rx {
                frame: vec![0; MAX_FRAME_LEN],
                frame_len: 0,
                chains: Vec::new(),
                segments: Vec::new(),
            },
            tx_frame: vec![0; MAX_FRAME_LEN],
            metrics: NetMetrics::default(),
            log_limit: LogLimiter::default(),
        })
    }

    /// The frame and byte counters.
    pub fn metrics(&self) -> NetMetrics {
        self.metrics
    }

    /// Whether the device has no backend.
    pub fn is_detached(&self) -> bool {
        self.backend.is_none()
    }

    /// Moves frames both ways and interrupts the guest if it got buffers
    /// back.
    pub fn process(&mut self) {
        let used = self.process_tx() | self.process_rx();
        if used {
            self.interrupt.signal_used_queue();
        }
    }

    /// Interrupts the guest; called after a batch of used buffers.
    pub(super) fn signal_used(&self) {
        self.interrupt.signal_used_queue();
    }

    /// The tap to watch, its watch state, and whether the device wants its
    /// frames now (active, backend healthy, no frame waiting for buffers).
    pub(super) fn tap_watch(&mut self) -> Option<(&Tap, &mut TapWatch, bool)> {
        let wants = self.active.is_some() && self.rx.frame_len == 0;
        self.backend
            .as_mut()
            .map(|b| (&b.tap, &mut b.watch, wants && !b.failed))
    }

    /// Whether the backend failed for good.
    pub(super) fn backend_failed(&self) -> bool {
        self.backend.as_ref().is_some_and(|b| b.failed)
    }

    /// The tap reported an error or hang-up: its interface is gone.
    pub(super) fn fail_backend(&mut self, why: &str) {
        if let Some(b) = self.backend.as_mut().filter(|b| !b.failed) {
            log::error!("net: {why}; the guest's network is down from now on");
            b.failed = true;
        }
    }

    /// Guest → tap: sends every frame the guest queued. Returns whether any
    /// buffer was used.
    pub(super) fn process_tx(&mut self) -> bool {
        let Some(active) = self.active.as_mut() else {
            return false;
        };
        let queue = &mut active.queues[TX];
        let start = queue.next_used();
        let mut popped = 0;
        while popped < BATCH {
            let Some(chain) = queue.pop_descriptor_chain(&active.mem) else {
                break;
            };
            popped += 1;
            let head = chain.head_index();
            match read_tx_chain(&active.mem, chain, &mut self.tx_frame) {
                Ok(len) => send(
                    self.backend.as_ref(),
                    &self.tx_frame[..len],
                    &mut self.metrics,
                    &mut self.log_limit,
                ),
                Err(e) => {
                    self.metrics.bad_chains += 1;
                    guest_warn!(self.log_limit, "net: dropping a tx chain: {e}");
                }
            }
            // The device writes nothing into a tx buffer.
            if let Err(e) = queue.add_used(&active.mem, head, 0) {
                guest_warn!(self.log_limit, "net: cannot return a tx buffer: {e}");
            }
        }
        if popped == BATCH {
            // There may be more: come back after the event loop served others.
            if let Err(e) = self.queue_events[TX].write(1) {
                log::error!("net: cannot requeue tx work: {e}");
            }
        }
        queue.next_used() != start
    }

    /// Tap → guest: delivers the waiting frame, then reads and delivers
    /// more until the tap is empty, the guest has no buffers, or a batch is
    /// done. Returns whether any buffer was used.
    pub(super) fn process_rx(&mut self) -> bool {
        let Some(active) = self.active.as_mut() else {
            return false;
        };
        let Some(backend) = self.backend.as_mut().filter(|b| !b.failed) else {
            return false;
        };
        let mergeable = self.acked_features & bit(VIRTIO_NET_F_MRG_RXBUF) != 0;
        let start = active.queues[RX].next_used();
        for _ in 0..BATCH {
            if self.rx.frame_len == 0 {
                match backend.tap.read(&mut self.rx.frame) {
                    Ok(0) => {
                        log::error!(
                            "net: the backend closed; the guest's network is down from now on"
                        );
                        backend.failed = true;
                        break;
                    }
                    Ok(n) if n < VNET_HDR_LEN + ETH_HLEN => {
                        self.metrics.rx_dropped += 1;
                        continue;
                    }
                    Ok(n) => self.rx.frame_len = n,
                    Err(e)
                        if matches!(
                            e.kind(),
                            io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
                        ) =>
                    {
                        break
                    }
                    Err(e) => {
                        log::error!("net: cannot read from the tap: {e}; the guest's network is down from now on");
                        backend.failed = true;
                        break;
                    }
                }
            }
            let len = self.rx.frame_len;
            match self
                .rx
                .deliver(active, mergeable, &mut self.metrics, &mut self.log_limit)
            {
                Delivery::Delivered => {
                    self.metrics.rx_frames += 1;
                    self.metrics.rx_bytes += (len - VNET_HDR_LEN) as u64;
                }
                Delivery::Dropped => self.metrics.rx_dropped += 1,
                Delivery::NoBuffers => break,
            }
        }
        active.queues[RX].next_used() != start
    }
}

impl Rx {
    /// Puts the waiting frame into as many rx chains as it needs (one
    /// without `mergeable`), setting `num_buffers`.
    fn deliver(
        &mut self,
        active: &mut Active,
        mergeable: bool,
        metrics: &mut NetMetrics,
        log_limit: &mut LogLimiter,
    ) -> Delivery {
        let Active { mem, queues } = active;
        let queue = &mut queues[RX];
        let len = self.frame_len;
        let (mut good, mut capacity) = (0usize, 0usize);
        for chain in self.chains.iter().filter(|c| !c.bad) {
            good += 1;
            let held: usize = self.segments[chain.segments.clone()]
                .iter()
                .map(|&(_, n)| n as usize)
                .sum();
            capacity = capacity.saturating_add(held);
        }
        while good == 0 || capacity < len {
            if good == 1 && !mergeable {
                // Without mergeable buffers a frame must fit one chain: drop
                // the frame; the chain waits for the next one.
                self.frame_len = 0;
                return Delivery::Dropped;
            }
            if self.chains.len() >= usize::from(queue.size()) {
                // More chains than the queue holds and still no room: the
                // guest's buffers make no sense. Drop the frame and give
                // them back.
                self.frame_len = 0;
                self.return_chains(mem, queue, log_limit);
                return Delivery::Dropped;
            }
            let Some(chain) = queue.pop_descriptor_chain(&*mem) else {
                return Delivery::NoBuffers;
            };
            let head = chain.head_index();
            let first = self.segments.len();
            match read_rx_chain(mem, chain, &mut self.segments) {
                Ok(n) => {
                    good += 1;
                    capacity = capacity.saturating_add(n);
                    self.chains.push(RxChain {
                        head,
                        segments: first..self.segments.len(),
                        bad: false,
                    });
                }
                Err(e) => {
                    self.segments.truncate(first);
                    metrics.bad_chains += 1;
                    guest_warn!(log_limit, "net: returning an rx chain unused: {e}");
                    self.chains.push(RxChain {
                        head,
                        segments: first..first,
                        bad: true,
                    });
                    if good == 0 {
                        // Nothing else is held: no need to keep it.
                        self.return_chains(mem, queue, log_limit);
                    }
                }
            }
        }
        let num_buffers = u16::try_from(good).expect("at most a queue's worth of chains");
        self.frame[NUM_BUFFERS_OFFSET..NUM_BUFFERS_OFFSET + 2]
            .copy_from_slice(&num_buffers.to_le_bytes());
        // Malformed chains first, so the frame's buffers are adjacent in the
        // used ring as the driver expects.
        let mut offset = 0;
        for bad in [true, false] {
            for chain in self.chains.iter().filter(|c| c.bad == bad) {
                let mut written = 0usize;
                for &(addr, n) in &self.segments[chain.segments.clone()] {
                    let n = (n as usize).min(len - offset);
                    if n == 0 {
                        break;
                    }
                    if let Err(e) = mem.write_slice(&self.frame[offset..offset + n], addr) {
                        // Checked when the chain was read; memory does not shrink.
                        guest_warn!(log_limit, "net: cannot write an rx buffer: {e}");
                    }
                    offset += n;
                    written += n;
                }
                let written = u32::try_from(written).expect("at most MAX_FRAME_LEN");
                if let Err(e) = queue.add_used(mem, chain.head, written) {
                    guest_warn!(log_limit, "net: cannot return an rx buffer: {e}");
                }
            }
        }
        self.chains.clear();
        self.segments.clear();
        self.frame_len = 0;
        Delivery::Delivered
    }

    /// Returns every held chain with length 0.
    fn return_chains(
        &mut self,
        mem: &GuestMemoryMmap,
        queue: &mut Queue,
        log_limit: &mut LogLimiter,
    ) {
        for chain in self.chains.drain(..) {
            if let Err(e) = queue.add_used(mem, chain.head, 0) {
                guest_warn!(log_limit, "net: cannot return an rx buffer: {e}");
            }
        }
        self.segments.clear();
    }

    /// Forgets the waiting frame and the chains held for it.
    fn clear(&mut self) {
        self.frame_len = 0;
        self.chains.clear();
        self.segments.clear();
    }
}

/// Copies a tx chain's frame into `buf`; returns its length.
fn read_tx_chain(
    mem: &GuestMemoryMmap,
    chain: DescriptorChain<&GuestMemoryMmap>,
    buf: &mut [u8],
) -> Result<usize, ChainError> {
    let mut len = 0usize;
    let mut more = false;
    for desc in chain {
        if desc.is_write_only() {
            return Err(ChainError::WrongDirection(
                "a write-only descriptor in a tx chain",
            ));
        }
        let end = len
            .checked_add(desc.len() as usize)
            .filter(|&end| end <= buf.len())
            .ok_or(ChainError::TooLong)?;
        mem.read_slice(&mut buf[len..end], desc.addr())
            .map_err(|_| ChainError::OutsideMemory {
                addr: desc.addr().0,
                len: desc.len(),
            })?;
        len = end;
        more = desc.has_next();
    }
    if more {
        return Err(ChainError::Truncated);
    }
    if len < VNET_HDR_LEN + ETH_HLEN {
        return Err(ChainError::TooShort(len));
    }
    Ok(len)
}

/// Checks an rx chain and appends its writable ranges to `segments`;
/// returns its capacity. Stops reading once it holds a maximal frame.
fn read_rx_chain(
    mem: &GuestMemoryMmap,
    chain: DescriptorChain<&GuestMemoryMmap>,
    segments: &mut Vec<(GuestAddress, u32)>,
) -> Result<usize, ChainError> {
    let mut capacity = 0usize;
    let mut more = false;
    for desc in chain {
        if !desc.is_write_only() {
            return Err(ChainError::WrongDirection(
                "a read-only descriptor in an rx chain",
            ));
        }
        if !mem.check_range(desc.addr(), desc.len() as usize, Permissions::Write) {
            return Err(ChainError::OutsideMemory {
                addr: desc.addr().0,
                len: desc.len(),
            });
        }
        if desc.len() > 0 {
            segments.push((desc.addr(), desc.len()));
        }
        capacity = capacity.saturating_add(desc.len() as usize);
        more = desc.has_next();
        if capacity >= MAX_FRAME_LEN {
            // The rest would never be written; no need to look at it.
            more = false;
            break;
        }
    }
    if more {
        return Err(ChainError::Truncated);
    }
    if capacity < VNET_HDR_LEN {
        // The header, with num_buffers, must fit in the first buffer.
        return Err(ChainError::TooShort(capacity));
    }
    Ok(capacity)
}

/// Writes one frame to the backend; a full or missing backend drops it.
fn send(
    backend: Option<&Backend>,
    frame: &[u8],
    metrics: &mut NetMetrics,
    log_limit: &mut LogLimiter,
) {
    let Some(backend) = backend.filter(|b| !b.failed) else {
        metrics.tx_dropped += 1;
        return;
    };
    match backend.tap.write(frame) {
        Ok(_) => {
            metrics.tx_frames += 1;
            metrics.tx_bytes += (frame.len() - VNET_HDR_LEN) as u64;
        }
        // Full (EAGAIN, ENOBUFS) or down (EIO): the host's state, not the
        // guest's doing, and a NIC drops frames it cannot send.
        Err(e)
            if e.kind() == io::ErrorKind::WouldBlock
                || matches!(e.raw_os_error(), Some(libc::ENOBUFS | libc::EIO)) =>
        {
            metrics.tx_dropped += 1;
        }
        Err(e) => {
            metrics.tx_dropped += 1;
            guest_warn!(log_limit, "net: the tap refused a tx frame: {e}");
        }
    }
}

/// The `TUN_F_*` offloads for the guest features the driver accepted.
pub(super) fn tap_offloads(acked: u64) -> c_uint {
    let mut flags = 0;
    if acked & bit(VIRTIO_NET_F_GUEST_CSUM) != 0 {
        flags |= libc::TUN_F_CSUM;
        if acked & bit(VIRTIO_NET_F_GUEST_TSO4) != 0 {
            flags |= libc::TUN_F_TSO4;
        }
        if acked & bit(VIRTIO_NET_F_GUEST_TSO6) != 0 {
            flags |= libc::TUN_F_TSO6;
        }
    }
    flags
}

impl VirtioDevice for Net {
    fn device_type(&self) -> u32 {
        VIRTIO_ID_NET
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &QUEUE_SIZES
    }

    fn features(&self) -> u64 {
        FEATURES
    }

    fn set_acked_features(&mut self, features: u64) {
        self.acked_features = features & FEATURES;
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        // Config space: u8 mac[6]; le16 status; le16 max_virtqueue_pairs.
        let mut config = [0u8; 10];
        config[..6].copy_from_slice(&self.mac);
        let status = u16::try_from(VIRTIO_NET_S_LINK_UP).expect("bit 0");
        config[6..8].copy_from_slice(&status.to_le_bytes());
        config[8..10].copy_from_slice(&1u16.to_le_bytes());
        read_config_bytes(&config, offset, data);
    }

    fn queue_events(&self) -> &[EventFd] {
        &self.queue_events
    }

    fn activate(&mut self, mem: GuestMemoryMmap, queues: Vec<Queue>) -> Result<(), ActivateError> {
        if queues.len() != QUEUE_SIZES.len() {
            return Err(ActivateError::BadQueue(queues.len()));
        }
        self.rx.clear();
        if let Some(b) = &self.backend {
            let offloads = tap_offloads(self.acked_features);
            if let Err(e) = b.tap.set_offload(offloads) {
                log::warn!("net: cannot set the tap's offloads to {offloads:#x}: {e}");
            }
        }
        self.active = Some(Active { mem, queues });
        // The guest may have queued frames already (after a restore); the
        // event loop also starts watching the tap.
        self.activate_evt.write(1).map_err(ActivateError::Wake)
    }

    fn reset(&mut self) {
        self.active = None;
        self.acked_features = 0;
        self.rx.clear();
    }

    fn active_queues(&self) -> Vec<QueueState> {
        let Some(active) = &self.active else {
            return Vec::new();
        };
        let mut states: Vec<QueueState> = active.queues.iter().map(Queue::state).collect();
        // A waiting frame is not saved; the chains held for it go back to
        // the guest's side of the ring, to be popped again after a restore.
        let held = u16::try_from(self.rx.chains.len()).expect("at most a queue's worth of chains");
        if let Some(rx) = states.get_mut(RX) {
            rx.next_avail = rx.next_avail.wrapping_sub(held);
        }
        states
    }
}
