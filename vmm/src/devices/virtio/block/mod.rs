//! A read-only virtio-blk device backed by an image file, which carries a
//! container image (an erofs or ext4 file) into the guest.
//!
//! # Design
//! One device per image, one request queue, read-only. The device offers
//! `VIRTIO_F_VERSION_1`, `VIRTIO_BLK_F_RO` (Linux then marks the disk
//! read-only and refuses writes before they reach us),
//! `VIRTIO_BLK_F_BLK_SIZE` (512), `VIRTIO_BLK_F_SEG_MAX` and
//! `VIRTIO_BLK_F_SIZE_MAX` (without `SEG_MAX`, Linux sends one segment per
//! request). Requests:
//!
//! - `VIRTIO_BLK_T_IN`: read from the image straight into guest memory
//!   (`lseek`, then `read` into each guest-memory slice through vm-memory's
//!   `ReadVolatile`: no bounce buffer and no unsafe code);
//! - `VIRTIO_BLK_T_GET_ID`: the device's serial, `unipod-disk<N>` for the
//!   N-th disk (`/sys/block/vdX/serial` in the guest), so the guest can tell
//!   slots apart whatever image each holds;
//! - `VIRTIO_BLK_T_OUT`: `VIRTIO_BLK_S_IOERR`, the image is never written;
//! - `VIRTIO_BLK_T_FLUSH`: `VIRTIO_BLK_S_OK`; nothing is ever dirty. The
//!   flush feature is not offered (the disk is read-only, so Linux treats it
//!   as write-through and sends none), but a driver that sends one anyway
//!   gets a harmless success;
//! - anything else (discard, write-zeroes, zoned, ...): `VIRTIO_BLK_S_UNSUPP`.
//!
//! Every descriptor is untrusted (see STYLE.md). A chain must be: the
//! 16-byte header in a readable first descriptor, then the data descriptors,
//! then a writable last descriptor whose last byte takes the status. A chain
//! with no place for the status (empty, looped, a readable or out-of-memory
//! last descriptor) is returned with length 0; any other defect (a short
//! header, data in the wrong direction or outside guest memory, a length
//! that is not whole sectors or longer than [`MAX_REQUEST_LEN`], a sector
//! whose offset overflows, a read past the capacity) fails that request
//! with `VIRTIO_BLK_S_IOERR`.
//!
//! I/O is synchronous on the event-loop thread, like the other devices'
//! work. For a read-only image on a local disk that is fine: reads are
//! served from the host page cache (which every pod using the image shares)
//! or one local disk read, and a request is bounded by [`MAX_REQUEST_LEN`].
//! A slow network filesystem under the image would stall the loop; images
//! live in the local state directory.
//!
//! # Detached slots and warm start
//! The warm-start template VM is booted once and snapshotted, then restored
//! for every pod, and each pod has other images. So a device can be created
//! with no image ("detached"): its capacity is 0 and every read fails. A
//! restored VM attaches the pod's image ([`Block::attach`]): the device
//! takes the file, derives the capacity from its size, bumps the transport's
//! ConfigGeneration and raises the config-change interrupt
//! (`VIRTIO_MMIO_INT_CONFIG`). Linux's virtio_blk handles that by rereading
//! the capacity (`virtblk_config_changed` → `virtblk_update_capacity`), so
//! `/dev/vdX` takes the image's size and can be mounted. The backing file is
//! never part of a snapshot: a restored device starts detached, and its
//! capacity comes from whatever is attached next.
//!
//! # Limitations
//! Read-only only. One queue, no `VIRTIO_RING_F_EVENT_IDX`, no indirect
//! descriptors offered (virtio-queue follows them if a driver uses them
//! anyway). Data and status must be separate descriptors, as every driver
//! lays them out. An image whose size is not a multiple of 512 bytes reads
//! as zeros up to the end of its last sector. A slot takes one image for
//! its lifetime: attaching over an image is refused, since the guest's page
//! cache would still hold the old one's blocks. For the same reason a
//! snapshot taken with an image attached must be restored with the same
//! image; nothing checks this.

mod device;
mod event_handler;
pub mod metrics;

use std::fs::File;
use std::path::{Path, PathBuf};

pub use self::device::Block;
pub use self::metrics::BlockMetrics;

/// The virtio device ID for a block device.
pub const VIRTIO_ID_BLOCK: u32 = 2;
/// Sector size in bytes: request offsets and the capacity count these,
/// whatever the block size (virtio 1.2 §5.2.6).
pub const SECTOR_SIZE: u64 = 512;
/// The size of the request header: le32 type, le32 reserved, le64 sector.
pub const REQUEST_HEADER_LEN: u32 = 16;
/// The longest serial `VIRTIO_BLK_T_GET_ID` returns (`VIRTIO_BLK_ID_BYTES`).
pub const SERIAL_LEN: usize = 20;
const QUEUE_SIZE: u16 = 256;
const QUEUE_SIZES: [u16; 1] = [QUEUE_SIZE];
/// Data descriptors per request we tell the driver to stay under: the queue
/// less the header and status descriptors.
const SEG_MAX: u32 = QUEUE_SIZE as u32 - 2;
/// The largest data descriptor we tell the driver to send.
const SIZE_MAX: u32 = 128 << 10;
/// The most data one request may move: what the advertised limits allow
/// (about 32 MiB), so a driver that keeps to them never hits it, and one
/// request cannot hold the event loop for long. Linux sends at most
/// `max_sectors` (1280 KiB by default) per request.
pub const MAX_REQUEST_LEN: u64 = SEG_MAX as u64 * SIZE_MAX as u64;

/// Errors while creating the device or attaching an image.
#[derive(Debug, thiserror::Error)]
pub enum BlockError {
    /// The image file cannot be opened.
    #[error("--disk {}: cannot open", .0.display())]
    Open(PathBuf, #[source] std::io::Error),
    /// The image path is a directory.
    #[error("--disk {}: is a directory; give an image file (erofs, ext4, ...)", .0.display())]
    Directory(PathBuf),
    /// The image's size cannot be found.
    #[error("cannot find the size of the disk image")]
    Size(#[source] std::io::Error),
    /// The slot already has an image.
    #[error("disk {0} already has an image; a slot takes one image for its lifetime")]
    AlreadyAttached(String),
    /// An eventfd could not be created.
    #[error("cannot create a virtio-blk eventfd")]
    EventFd(#[source] std::io::Error),
}

/// Opens the image at `path` for a disk, read-only.
pub fn open_image(path: &Path) -> Result<File, BlockError> {
    let file = File::open(path).map_err(|e| BlockError::Open(path.to_path_buf(), e))?;
    let meta = file
        .metadata()
        .map_err(|e| BlockError::Open(path.to_path_buf(), e))?;
    if meta.is_dir() {
        return Err(BlockError::Directory(path.to_path_buf()));
    }
    Ok(file)
}

#[cfg(test)]
mod tests;
