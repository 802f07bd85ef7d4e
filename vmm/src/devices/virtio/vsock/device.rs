//! The vsock device: its virtio side and the packet moves between the
//! queues and the [`Muxer`].

use std::path::Path;
use std::sync::Arc;

use virtio_queue::{Queue, QueueOwnedT, QueueState, QueueT};
use virtio_vsock::packet::{VsockPacket, PKT_HEADER_SIZE};
use vm_memory::GuestMemoryMmap;
use vm_memory::{Bytes, GuestAddress};
use vmm_sys_util::eventfd::EventFd;

use super::muxer::Muxer;
use super::packet::{Header, HOST_CID, OP_RST, TYPE_STREAM};
use super::{VsockError, EVENT, MAX_PKT_DATA, QUEUE_SIZES, RX, TX, VIRTIO_ID_VSOCK};

/// The only vsock event: `VIRTIO_VSOCK_EVENT_TRANSPORT_RESET`.
const VIRTIO_VSOCK_EVENT_TRANSPORT_RESET: u32 = 0;
use crate::devices::log_limit::LogLimiter;
use crate::devices::virtio::{
    read_config_bytes, ActivateError, Interrupt, VirtioDevice, VIRTIO_F_VERSION_1,
};
use crate::guest_warn;

struct Active {
    mem: GuestMemoryMmap,
    queues: Vec<Queue>,
}

/// The vsock device.
pub struct Vsock {
    cid: u64,
    pub(super) queue_events: Vec<EventFd>,
    pub(super) activate_evt: EventFd,
    interrupt: Arc<Interrupt>,
    active: Option<Active>,
    pub(super) muxer: Muxer,
    /// Packet data on its way between guest memory and a host socket.
    scratch: Vec<u8>,
    /// A transport reset was posted and the guest has not handled it yet;
    /// nothing goes to the guest until it has, or the reset would also
    /// kill connections made after the restore.
    reset_pending: bool,
    log_limit: LogLimiter,
}

impl Vsock {
    /// A device for guest `cid`, listening for host clients on `uds_path`.
    pub fn new(cid: u64, uds_path: &Path, interrupt: Arc<Interrupt>) -> Result<Vsock, VsockError> {
        if cid <= HOST_CID || cid > u64::from(u32::MAX) {
            return Err(VsockError::ReservedCid(cid));
        }
        let eventfd = || EventFd::new(libc::EFD_NONBLOCK).map_err(VsockError::EventFd);
        Ok(Vsock {
            cid,
            queue_events: vec![eventfd()?, eventfd()?, eventfd()?],
            activate_evt: eventfd()?,
            interrupt,
            active: None,
            muxer: Muxer::new(uds_path)?,
            scratch: vec![0; MAX_PKT_DATA as usize],
            reset_pending: false,
            log_limit: LogLimiter::default(),
        })
    }

    /// Closes every host connection and removes the socket file. The VM is
    /// ending; vCPU threads may still hold the device, so Drop may never run.
    pub fn shutdown(&mut self) {
        self.active = None;
        self.muxer.reset_all();
        self.muxer.remove_socket_file();
    }

    /// Tells the guest that every connection it had is gone (virtio 1.2
    /// §5.10.6.7): after a snapshot restore, the host side of those
    /// connections no longer exists. The guest then resets its sockets and
    /// rereads its CID. Returns false if the guest left no event buffer.
    pub fn reset_transport(&mut self) -> bool {
        let Some(active) = self.active.as_mut() else {
            return false;
        };
        let Some(mut chain) = active.queues[EVENT].pop_descriptor_chain(&active.mem) else {
            return false;
        };
        let head = chain.head_index();
        let written = match chain.next() {
            Some(desc) if desc.is_write_only() && desc.len() >= 4 => {
                let id = VIRTIO_VSOCK_EVENT_TRANSPORT_RESET.to_le_bytes();
                match active.mem.write_slice(&id, GuestAddress(desc.addr().0)) {
                    Ok(()) => 4,
                    Err(_) => 0,
                }
            }
            _ => 0,
        };
        if let Err(e) = active.queues[EVENT].add_used(&active.mem, head, written) {
            guest_warn!(self.log_limit, "vsock: cannot return an event buffer: {e}");
        }
        self.interrupt.signal_used_queue();
        // The guest refills the event queue and kicks it once it has reset
        // its sockets; `event_queue_kicked` ends the wait.
        self.reset_pending = written == 4;
        self.reset_pending
    }

    /// The guest kicked the event queue: a posted transport reset, if any,
    /// has been handled.
    pub(super) fn event_queue_kicked(&mut self) {
        if std::mem::take(&mut self.reset_pending) {
            self.process();
        }
    }

    /// Moves every packet both ways until neither side can make progress.
    pub fn process(&mut self) {
        self.muxer.handle_host_events();
        let used = self.process_tx() | self.process_rx();
        if used {
            self.interrupt.signal_used_queue();
        }
    }

    /// Guest → host. Returns whether any buffer was used.
    fn process_tx(&mut self) -> bool {
        let Some(active) = self.active.as_mut() else {
            return false;
        };
        let mut used = false;
        while let Some(mut chain) = active.queues[TX].pop_descriptor_chain(&active.mem) {
            let head = chain.head_index();
            match VsockPacket::from_tx_virtq_chain(&active.mem, &mut chain, MAX_PKT_DATA) {
                Ok(pkt) if pkt.src_cid() != self.cid || pkt.dst_cid() != HOST_CID => {
                    guest_warn!(
                        self.log_limit,
                        "vsock: dropping a packet from CID {} to CID {}",
                        pkt.src_cid(),
                        pkt.dst_cid()
                    );
                }
                Ok(pkt) => {
                    // The parser bounded len by MAX_PKT_DATA, the scratch size.
                    let data = &mut self.scratch[..pkt.len() as usize];
                    if let Some(slice) = pkt.data_slice() {
                        slice.copy_to(data);
                    }
                    let hdr = Header {
                        src_port: pkt.src_port(),
                        dst_port: pkt.dst_port(),
                        op: pkt.op(),
                        flags: pkt.flags(),
                        len: pkt.len(),
                        buf_alloc: pkt.buf_alloc(),
                        fwd_cnt: pkt.fwd_cnt(),
                    };
                    if pkt.type_() == TYPE_STREAM {
                        self.muxer.on_guest_packet(&hdr, data);
                    } else if hdr.op != OP_RST {
                        // Unsupported type (e.g. seqpacket).
                        self.muxer.refuse(&hdr);
                    }
                }
                Err(e) => guest_warn!(self.log_limit, "vsock: malformed tx descriptor chain: {e}"),
            }
            if let Err(e) = active.queues[TX].add_used(&active.mem, head, 0) {
                guest_warn!(self.log_limit, "vsock: cannot return a tx buffer: {e}");
            }
            used = true;
        }
        used
    }

    /// Host → guest. Returns whether any buffer was used.
    fn process_rx(&mut self) -> bool {
        if self.reset_pending {
            return false;
        }
        let Some(active) = self.active.as_mut() else {
            return false;
        };
        let mut used = false;
        while self.muxer.has_rx() {
            let Some(mut chain) = active.queues[RX].pop_descriptor_chain(&active.mem) else {
                break;
            };
            let head = chain.head_index();
            let mut pkt =
                match VsockPacket::from_rx_virtq_chain(&active.mem, &mut chain, MAX_PKT_DATA) {
                    Ok(pkt) => pkt,
                    Err(e) => {
                        guest_warn!(self.log_limit, "vsock: malformed rx descriptor chain: {e}");
                        if let Err(e) = active.queues[RX].add_used(&active.mem, head, 0) {
                            guest_warn!(self.log_limit, "vsock: cannot return an rx buffer: {e}");
                        }
                        used = true;
                        continue;
                    }
                };
            let room = pkt
                .data_slice()
                .map_or(0, |s| s.len())
                .min(MAX_PKT_DATA as usize);
            let Some(hdr) = self.muxer.next_rx(&mut self.scratch[..room]) else {
                // Nothing after all; give the buffer back for later.
                active.queues[RX].go_to_previous_position();
                break;
            };
            let len = hdr.len as usize;
            if let (Some(slice), true) = (pkt.data_slice(), len > 0) {
                slice.copy_from(&self.scratch[..len]);
            }
            pkt.set_src_cid(HOST_CID)
                .set_dst_cid(self.cid)
                .set_src_port(hdr.src_port)
                .set_dst_port(hdr.dst_port)
                .set_type(TYPE_STREAM)
                .set_op(hdr.op)
                .set_flags(hdr.flags)
                .set_len(hdr.len)
                .set_buf_alloc(hdr.buf_alloc)
                .set_fwd_cnt(hdr.fwd_cnt);
            let written = u32::try_from(PKT_HEADER_SIZE).expect("44 bytes") + hdr.len;
            if let Err(e) = active.queues[RX].add_used(&active.mem, head, written) {
                guest_warn!(self.log_limit, "vsock: cannot return an rx buffer: {e}");
            }
            used = true;
        }
        used
    }
}

impl VirtioDevice for Vsock {
    fn device_type(&self) -> u32 {
        VIRTIO_ID_VSOCK
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &QUEUE_SIZES
    }

    fn features(&self) -> u64 {
        VIRTIO_F_VERSION_1
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        // Config space: le64 guest_cid.
        let config = self.cid.to_le_bytes();
        read_config_bytes(&config, offset, data);
    }

    fn queue_events(&self) -> &[EventFd] {
        &self.queue_events
    }

    fn activate(&mut self, mem: GuestMemoryMmap, queues: Vec<Queue>) -> Result<(), ActivateError> {
        if queues.len() != QUEUE_SIZES.len() {
            return Err(ActivateError::BadQueue(queues.len()));
        }
        self.active = Some(Active { mem, queues });
        // Host clients may be waiting already; the event loop picks them up.
        self.activate_evt.write(1).map_err(ActivateError::Wake)
    }

    fn reset(&mut self) {
        self.active = None;
        self.reset_pending = false;
        self.muxer.reset_all();
    }

    fn active_queues(&self) -> Vec<QueueState> {
        self.active
            .as_ref()
            .map(|a| a.queues.iter().map(Queue::state).collect())
            .unwrap_or_default()
    }
}
