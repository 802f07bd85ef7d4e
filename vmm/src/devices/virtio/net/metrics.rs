//! Counters of the net device: frames and bytes each way, and what was
//! dropped. Plain integers: only the event-loop thread updates them.

#![forbid(unsafe_code)]

/// Frame and byte counts since the device was created. Bytes count the
/// Ethernet frame, not the vnet header.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NetMetrics {
    /// Frames delivered to the guest.
    pub rx_frames: u64,
    /// Bytes delivered to the guest.
    pub rx_bytes: u64,
    /// Frames from the tap the guest could not take (too big for its
    /// buffers, or runts).
    pub rx_dropped: u64,
    /// Frames the guest sent that reached the tap.
    pub tx_frames: u64,
    /// Bytes the guest sent that reached the tap.
    pub tx_bytes: u64,
    /// Frames the guest sent that were dropped: detached device, full or
    /// failed tap.
    pub tx_dropped: u64,
    /// Malformed descriptor chains, returned to the guest unused.
    pub bad_chains: u64,
}
