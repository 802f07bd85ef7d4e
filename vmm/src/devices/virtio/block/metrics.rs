//! Counters of the block device: requests by outcome and bytes read. Plain
//! integers: only the event-loop thread updates them.

#![forbid(unsafe_code)]

/// Request counts since the device was created.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BlockMetrics {
    /// Reads served.
    pub reads: u64,
    /// Bytes read into the guest (zero fill past the image's end included).
    pub read_bytes: u64,
    /// Writes refused (the disk is read-only).
    pub writes_refused: u64,
    /// Flushes (each a no-op).
    pub flushes: u64,
    /// `GET_ID` requests served.
    pub get_ids: u64,
    /// Requests of a type the device does not support.
    pub unsupported: u64,
    /// Requests failed with `VIRTIO_BLK_S_IOERR`: malformed, out of range,
    /// on a detached disk, or a host read error (refused writes not
    /// included).
    pub io_errors: u64,
    /// Chains with no place for a status, returned with length 0.
    pub bad_chains: u64,
}
