//! Vsock packet fields the muxer works with (virtio 1.2 §5.10.6), without
//! the CIDs, which the device fills in.

#![forbid(unsafe_code)]

/// Connection request.
pub const OP_REQUEST: u16 = 1;
/// Connection accepted.
pub const OP_RESPONSE: u16 = 2;
/// Connection reset.
pub const OP_RST: u16 = 3;
/// One side will not send or receive any more.
pub const OP_SHUTDOWN: u16 = 4;
/// Data.
pub const OP_RW: u16 = 5;
/// The sender's buffer space changed.
pub const OP_CREDIT_UPDATE: u16 = 6;
/// Please send a credit update.
pub const OP_CREDIT_REQUEST: u16 = 7;
/// `SHUTDOWN` flag: the sender will receive no more.
pub const SHUTDOWN_RECV: u32 = 1;
/// `SHUTDOWN` flag: the sender will send no more.
pub const SHUTDOWN_SEND: u32 = 2;
/// The only socket type we support.
pub const TYPE_STREAM: u16 = 1;
/// The host's CID.
pub const HOST_CID: u64 = 2;

/// A packet header minus the CIDs and type.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Header {
    /// Source port.
    pub src_port: u32,
    /// Destination port.
    pub dst_port: u32,
    /// One of the `OP_*` constants.
    pub op: u16,
    /// `SHUTDOWN_*` flags for `OP_SHUTDOWN`.
    pub flags: u32,
    /// Payload length.
    pub len: u32,
    /// The sender's receive buffer size.
    pub buf_alloc: u32,
    /// Bytes the sender has consumed from its receive buffer.
    pub fwd_cnt: u32,
}
