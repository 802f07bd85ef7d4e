//! A virtio-balloon device that only takes free page reports: the guest
//! tells the host which of its pages are free, and the host drops them, so
//! memory a pod used once and freed goes back to the host.
//!
//! # Design
//! The device offers `VIRTIO_F_VERSION_1` and `VIRTIO_BALLOON_F_REPORTING`,
//! and its target size (`num_pages`) is always 0, so the driver never
//! inflates. Linux's driver then sets up three queues (inflate, deflate,
//! reporting; a queue of a feature not offered gets no index) and its free
//! page reporting (mm/page_reporting.c) sends, about two seconds after
//! enough memory was freed, chains of device-writable descriptors, each one
//! free block of `2^page_reporting_order` pages (4 MiB by default here).
//!
//! For each reported range the device calls `madvise(MADV_DONTNEED)` on the
//! guest memory behind it and returns the chain. On a cold-booted VM
//! (anonymous memory) the pages are freed and read back as zeros; on a VM
//! restored from a snapshot (a `MAP_PRIVATE` file mapping) the pod's private
//! copies are dropped and the pages read back as the snapshot's, which the
//! page cache shares between pods. Either way a free page's contents do not
//! matter to the guest: the kernel does not poison free pages here, and the
//! device does not offer `VIRTIO_BALLOON_F_PAGE_POISON`.
//!
//! Every descriptor is untrusted: a range must be page-aligned, inside one
//! guest memory region, and device-writable, or it is skipped (and counted)
//! and the rest of the chain still served. Buffers on the inflate and
//! deflate queues, which a driver following the spec never sends while the
//! target is 0, are returned unused.
//!
//! # Limitations
//! No inflation or deflation (there is no host-driven target), no
//! statistics queue, no free page hinting.

mod device;
mod event_handler;
pub mod metrics;

pub use self::device::Balloon;
pub use self::metrics::BalloonMetrics;

/// The virtio device ID of a memory balloon.
pub const VIRTIO_ID_BALLOON: u32 = 5;
/// The free page reporting feature bit (virtio 1.2 §5.5.3).
pub const VIRTIO_BALLOON_F_REPORTING: u32 = 5;
/// The queues in the order the driver numbers them: inflate, deflate and
/// reporting.
const QUEUE_SIZES: [u16; 3] = [QUEUE_SIZE; 3];
const QUEUE_SIZE: u16 = 32;
/// Index of the reporting queue.
const REPORTING_QUEUE: usize = 2;
/// The unit of reported ranges: the guest's page size.
pub const PAGE_SIZE: u64 = 4096;

/// Errors while creating the device.
#[derive(Debug, thiserror::Error)]
pub enum BalloonError {
    /// An eventfd could not be created.
    #[error("cannot create a virtio-balloon eventfd")]
    EventFd(#[source] std::io::Error),
}

#[cfg(test)]
mod tests;
