//! Counters of the balloon device. Plain integers: only the event-loop
//! thread updates them.

#![forbid(unsafe_code)]

/// Free page reports since the device was created.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BalloonMetrics {
    /// Free ranges given back to the host.
    pub ranges: u64,
    /// Their bytes.
    pub bytes: u64,
    /// Ranges skipped: read-only, unaligned, outside guest memory, or
    /// refused by madvise.
    pub bad_ranges: u64,
    /// Chains on the inflate or deflate queue, returned unused.
    pub ignored_chains: u64,
}
