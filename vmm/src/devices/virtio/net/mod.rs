//! A virtio-net device backed by a tap fd.
//!
//! # Design
//! The tap is opened by someone else (`IFF_TAP | IFF_NO_PI | IFF_VNET_HDR`)
//! and handed over as an fd. With a vnet header size of 12 bytes, a tap frame
//! and a virtio-net frame are the same bytes: `struct virtio_net_hdr_v1`
//! (what a `VIRTIO_F_VERSION_1` driver uses, with or without
//! `VIRTIO_NET_F_MRG_RXBUF`) followed by the Ethernet frame. The device
//! therefore copies frames through unchanged; only `num_buffers` is filled
//! in on the way to the guest. Checksum and TSO offloads pass through in the
//! header: the device offers them, and on activation tells the tap (with
//! `TUNSETOFFLOAD`) which ones the driver accepted for received frames.
//!
//! - **tx** (queue 1): each chain's readable descriptors are gathered into
//!   one frame and written to the tap with one `write`. A full tap drops the
//!   frame; nothing blocks.
//! - **rx** (queue 0): one frame is read from the tap and spread over as
//!   many rx chains as it needs (`VIRTIO_NET_F_MRG_RXBUF`, so the guest posts
//!   small buffers). When the guest has no buffer left, the frame waits and
//!   the event loop stops watching the tap until the guest kicks the rx
//!   queue.
//! - **detached** (no tap): tx frames are dropped and counted and nothing is
//!   ever received. The warm-start template VM runs like this; a restored VM
//!   gets a real tap, which the device accepts since the transport
//!   re-activates it with the saved queues.
//!
//! Every descriptor is untrusted (see STYLE.md): a chain with the wrong
//! direction, an address outside guest memory, a loop, or more than
//! [`MAX_FRAME_LEN`] bytes fails on its own and is returned with length 0.
//!
//! # Limitations
//! One queue pair, no control queue (so no guest-driven MAC changes, VLAN
//! filtering or `GUEST_ANNOUNCE`), no `VIRTIO_RING_F_EVENT_IDX`, no UFO/USO.
//! The link is always reported up. A frame read from the tap but not yet
//! given to the guest is not part of a snapshot.

mod device;
mod event_handler;
pub mod metrics;
mod tap;

pub use self::device::Net;
pub use self::metrics::NetMetrics;
pub use self::tap::take_inherited_fd;

/// The virtio device ID for a network card.
pub const VIRTIO_ID_NET: u32 = 1;
/// The size of `struct virtio_net_hdr_v1`, which starts every frame both in
/// the queues and on the tap.
pub const VNET_HDR_LEN: usize = 12;
/// The largest frame, header included: a 64 KiB TSO frame plus Ethernet and
/// vnet headers (Firecracker and Cloud Hypervisor use the same bound).
pub const MAX_FRAME_LEN: usize = 65562;
/// Offset of `num_buffers` in the vnet header.
const NUM_BUFFERS_OFFSET: usize = 10;
const QUEUE_SIZE: u16 = 256;
const QUEUE_SIZES: [u16; 2] = [QUEUE_SIZE; 2];
const RX: usize = 0;
const TX: usize = 1;

const _: () =
    assert!(std::mem::size_of::<virtio_bindings::virtio_net::virtio_net_hdr_v1>() == VNET_HDR_LEN);

/// Errors while creating the device or taking its tap.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    /// The fd number given for the tap is not open in this process.
    #[error("--net-tap-fd {0}: not an open file descriptor; the parent must pass it open")]
    FdNotOpen(i32, #[source] std::io::Error),
    /// The fd number given for the tap is stdin, stdout or stderr.
    #[error("--net-tap-fd {0}: fds 0-2 are stdin, stdout and stderr; pass the tap as 3 or above")]
    StdioFd(i32),
    /// The tap lacks a flag frames depend on.
    #[error("the tap fd was opened without {0}; open it with IFF_TAP | IFF_NO_PI | IFF_VNET_HDR")]
    TapFlags(&'static str),
    /// The tun fd was never attached to an interface.
    #[error("the tap fd is not attached to an interface; call TUNSETIFF on it first")]
    NotAttached,
    /// The fd is neither a tap nor a datagram socket.
    #[error("the tap fd is neither a tap nor a datagram or seqpacket socket")]
    NotATap,
    /// A tap ioctl failed.
    #[error("tap ioctl {0} failed")]
    TapIoctl(&'static str, #[source] std::io::Error),
    /// The tap cannot be made nonblocking.
    #[error("cannot make the tap fd nonblocking")]
    Nonblocking(#[source] nix::Error),
    /// An eventfd could not be created.
    #[error("cannot create a virtio-net eventfd")]
    EventFd(#[source] std::io::Error),
}

#[cfg(test)]
mod tests;
