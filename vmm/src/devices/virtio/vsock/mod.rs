//! A virtio-vsock device with a hybrid (Unix socket) backend, wire-compatible
//! with Firecracker and Cloud Hypervisor.
//!
//! # Design
//! Host → guest: a client connects to the device's Unix socket and writes
//! `CONNECT <port>\n`; once the guest accepts it reads `OK <host_port>\n`
//! and the stream becomes a byte pipe. Guest → host: a guest `connect()` to
//! port P dials `<uds>_P`; without a listener the guest gets RST.
//!
//! Packets are parsed by the `virtio-vsock` crate, which checks descriptor
//! directions and lengths; a malformed chain is returned to the guest unused
//! and logged. The connection logic lives in [`muxer`]; this file only moves
//! packets between it and the queues. Everything runs on the VMM's event
//! loop and never blocks.

mod device;
mod event_handler;
pub mod handshake;
pub mod muxer;
pub mod packet;

pub use self::device::Vsock;
use self::muxer::MuxerError;

/// The virtio device ID for vsock.
pub const VIRTIO_ID_VSOCK: u32 = 19;
/// Largest payload we move in one packet (Linux uses 4 KiB rx buffers and up
/// to 64 KiB tx packets).
pub const MAX_PKT_DATA: u32 = 64 * 1024;
const QUEUE_SIZE: u16 = 256;
const QUEUE_SIZES: [u16; 3] = [QUEUE_SIZE; 3];
const RX: usize = 0;
const TX: usize = 1;
const EVENT: usize = 2;

/// Errors while creating the device.
#[derive(Debug, thiserror::Error)]
pub enum VsockError {
    /// Guest CIDs 0-2 are reserved.
    #[error("--vsock-cid {0}: guest CIDs start at 3 (0-2 are reserved)")]
    ReservedCid(u64),
    /// The host socket.
    #[error(transparent)]
    Muxer(#[from] MuxerError),
    /// An eventfd could not be created.
    #[error("cannot create a vsock eventfd")]
    EventFd(#[source] std::io::Error),
}

#[cfg(test)]
mod tests;
