//! The block device: its virtio side and the requests it serves from the
//! image.

#![forbid(unsafe_code)]

use std::fs::File;
use std::io::{Seek, SeekFrom};
use std::sync::Arc;

use virtio_bindings::virtio_blk::{
    VIRTIO_BLK_F_BLK_SIZE, VIRTIO_BLK_F_RO, VIRTIO_BLK_F_SEG_MAX, VIRTIO_BLK_F_SIZE_MAX,
    VIRTIO_BLK_S_IOERR, VIRTIO_BLK_S_OK, VIRTIO_BLK_S_UNSUPP, VIRTIO_BLK_T_FLUSH,
    VIRTIO_BLK_T_GET_ID, VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT,
};
use virtio_queue::desc::split::Descriptor;
use virtio_queue::{DescriptorChain, Queue, QueueState, QueueT};
use vm_memory::{
    Address, Bytes, GuestAddress, GuestMemory, GuestMemoryMmap, Permissions, ReadVolatile,
};
use vmm_sys_util::eventfd::EventFd;

use super::metrics::BlockMetrics;
use super::{
    BlockError, MAX_REQUEST_LEN, QUEUE_SIZES, REQUEST_HEADER_LEN, SECTOR_SIZE, SEG_MAX, SERIAL_LEN,
    SIZE_MAX, VIRTIO_ID_BLOCK,
};
use crate::devices::log_limit::LogLimiter;
use crate::devices::virtio::{
    read_config_bytes, ActivateError, Interrupt, VirtioDevice, VIRTIO_F_VERSION_1,
};
use crate::guest_warn;

/// Requests served per wake-up before the event loop serves others.
const BATCH: usize = 256;
/// The config space up to `blk_size`: capacity, size_max, seg_max, geometry
/// (zero: not offered) and blk_size.
const CONFIG_LEN: usize = 24;
/// Zeros for the end of an image's last, partial sector.
const ZEROS: [u8; 512] = [0; 512];
const _: () = assert!(ZEROS.len() as u64 == SECTOR_SIZE);

const fn bit(feature: u32) -> u64 {
    1 << feature
}

/// What the device offers.
const FEATURES: u64 = VIRTIO_F_VERSION_1
    | bit(VIRTIO_BLK_F_RO)
    | bit(VIRTIO_BLK_F_SIZE_MAX)
    | bit(VIRTIO_BLK_F_SEG_MAX)
    | bit(VIRTIO_BLK_F_BLK_SIZE);

/// Why a chain was returned with no status.
#[derive(Debug, thiserror::Error)]
enum ChainError {
    #[error("the chain ends early (a loop, a bad next index, or longer than the queue)")]
    Truncated,
    #[error("the last descriptor is read-only or empty, so the status has nowhere to go")]
    NoStatus,
    #[error("the status descriptor {addr:#x}+{len:#x} is outside guest memory")]
    StatusOutsideMemory { addr: u64, len: u32 },
}

/// Why a request failed with `VIRTIO_BLK_S_IOERR`.
#[derive(Debug, thiserror::Error)]
enum RequestError {
    #[error("no request header: the first descriptor is {0}")]
    BadHeader(&'static str),
    #[error("a read-only data descriptor in a request that writes to the guest")]
    ReadOnlyData,
    #[error("data descriptor {addr:#x}+{len:#x} is outside guest memory")]
    OutsideMemory { addr: u64, len: u32 },
    #[error("{0} data bytes is not a whole number of sectors")]
    PartialSector(u64),
    #[error("{0} data bytes is more than the {MAX_REQUEST_LEN}-byte limit")]
    TooLong(u64),
    #[error("sector {sector} + {len} bytes is past the disk's end ({capacity} sectors)")]
    OutOfRange {
        sector: u64,
        len: u64,
        capacity: u64,
    },
    #[error("cannot read the image: {0}")]
    Read(String),
}

/// The image behind the device.
struct Backing {
    file: File,
    /// The image's size in bytes when it was attached.
    len: u64,
}

impl Backing {
    fn new(file: File) -> Result<Backing, BlockError> {
        // Seeking to the end works for block devices too, whose metadata
        // length is 0.
        let len = (&file).seek(SeekFrom::End(0)).map_err(BlockError::Size)?;
        Ok(Backing { file, len })
    }

    /// The capacity in sectors: the size rounded up to whole sectors.
    fn sectors(&self) -> u64 {
        self.len.div_ceil(SECTOR_SIZE)
    }
}

/// The queue and memory of an activated device.
struct Active {
    mem: GuestMemoryMmap,
    queue: Queue,
}

/// A request's outcome: its status and the data bytes written to the guest.
type Served = (u32, u32);

/// The virtio-blk device.
pub struct Block {
    backing: Option<Backing>,
    serial: [u8; SERIAL_LEN],
    pub(super) queue_events: Vec<EventFd>,
    interrupt: Arc<Interrupt>,
    active: Option<Active>,
    /// The descriptors of the chain being served; reused.
    descs: Vec<Descriptor>,
    metrics: BlockMetrics,
    log_limit: LogLimiter,
}

impl Block {
    /// A read-only disk with `serial` (cut to 20 bytes) for `GET_ID`, whose
    /// blocks come from `image`. Without an image the disk is a detached
    /// slot: capacity 0 until [`Block::attach`].
    pub fn new(
        serial: &str,
        image: Option<File>,
        interrupt: Arc<Interrupt>,
    ) -> Result<Block, BlockError> {
        let mut id = [0u8; SERIAL_LEN];
        let n = serial.len().min(SERIAL_LEN);
        id[..n].copy_from_slice(&serial.as_bytes()[..n]);
        Ok(Block {
            backing: image.map(Backing::new).transpose()?,
            serial: id,
            queue_events: vec![EventFd::new(libc::EFD_NONBLOCK).map_err(BlockError::EventFd)?],
            interrupt,
            active: None,
            descs: Vec::with_capacity(usize::from(QUEUE_SIZES[0])),
            metrics: BlockMetrics::default(),
            log_limit: LogLimiter::default(),
        })
    }

    /// Gives a detached slot its image: the capacity follows the file's
    /// size, and the driver hears of it through a config-change interrupt
    /// (see the module docs). Returns the new capacity in sectors.
    pub fn attach(&mut self, image: File) -> Result<u64, BlockError> {
        if self.backing.is_some() {
            return Err(BlockError::AlreadyAttached(self.serial_str()));
        }
        let backing = Backing::new(image)?;
        let sectors = backing.sectors();
        self.backing = Some(backing);
        // The caller holds this device's lock, so the transport sees the new
        // capacity and the new generation together.
        self.interrupt.signal_config_change();
        Ok(sectors)
    }

    /// The capacity in 512-byte sectors; 0 for a detached slot.
    pub fn capacity(&self) -> u64 {
        self.backing.as_ref().map_or(0, Backing::sectors)
    }

    /// Whether the slot has no image.
    pub fn is_detached(&self) -> bool {
        self.backing.is_none()
    }

    /// The request counters.
    pub fn metrics(&self) -> BlockMetrics {
        self.metrics
    }

    fn serial_str(&self) -> String {
        let end = self
            .serial
            .iter()
            .position(|&b| b == 0)
            .unwrap_or(SERIAL_LEN);
        String::from_utf8_lossy(&self.serial[..end]).into_owned()
    }

    /// Serves the requests the guest queued and interrupts it if any
    /// completed.
    pub fn process(&mut self) {
        if self.process_queue() {
            self.interrupt.signal_used_queue();
        }
    }

    /// Serves up to a batch of requests; returns whether any buffer was
    /// used.
    pub(super) fn process_queue(&mut self) -> bool {
        let Some(active) = self.active.as_mut() else {
            return false;
        };
        let Active { mem, queue } = active;
        let start = queue.next_used();
        let mut popped = 0;
        while popped < BATCH {
            let Some(chain) = queue.pop_descriptor_chain(&*mem) else {
                break;
            };
            popped += 1;
            let head = chain.head_index();
            let used = match collect_chain(mem, chain, &mut self.descs) {
                Ok(status_addr) => {
                    let (status, written) = match serve(
                        mem,
                        &self.descs,
                        self.backing.as_ref(),
                        &self.serial,
                        &mut self.metrics,
                    ) {
                        Ok(served) => served,
                        Err(e) => {
                            self.metrics.io_errors += 1;
                            guest_warn!(self.log_limit, "virtio-blk: request failed: {e}");
                            (VIRTIO_BLK_S_IOERR, 0)
                        }
                    };
                    let status = u8::try_from(status).expect("status codes are small");
                    match mem.write_obj(status, status_addr) {
                        Ok(()) => written + 1,
                        // Checked when the chain was read; memory does not shrink.
                        Err(e) => {
                            guest_warn!(self.log_limit, "virtio-blk: cannot write a status: {e}");
                            0
                        }
                    }
                }
                Err(e) => {
                    self.metrics.bad_chains += 1;
                    guest_warn!(self.log_limit, "virtio-blk: dropping a request: {e}");
                    0
                }
            };
            if let Err(e) = queue.add_used(&*mem, head, used) {
                guest_warn!(self.log_limit, "virtio-blk: cannot return a buffer: {e}");
            }
        }
        if popped == BATCH {
            // There may be more: come back after the event loop served others.
            if let Err(e) = self.queue_events[0].write(1) {
                log::error!("virtio-blk: cannot requeue work: {e}");
            }
        }
        queue.next_used() != start
    }
}

/// Reads a chain's descriptors into `descs` and finds its status byte: the
/// last byte of the last descriptor, which must be writable.
fn collect_chain(
    mem: &GuestMemoryMmap,
    chain: DescriptorChain<&GuestMemoryMmap>,
    descs: &mut Vec<Descriptor>,
) -> Result<GuestAddress, ChainError> {
    descs.clear();
    let mut more = false;
    for desc in chain {
        more = desc.has_next();
        descs.push(desc);
    }
    let last = match descs.last() {
        Some(last) if !more => last,
        _ => return Err(ChainError::Truncated),
    };
    if !last.is_write_only() || last.len() == 0 {
        return Err(ChainError::NoStatus);
    }
    let outside = || ChainError::StatusOutsideMemory {
        addr: last.addr().0,
        len: last.len(),
    };
    let status = last
        .addr()
        .checked_add(u64::from(last.len() - 1))
        .ok_or_else(outside)?;
    if !mem.check_range(status, 1, Permissions::Write) {
        return Err(outside());
    }
    Ok(status)
}

/// Serves the request in `descs` (header, data, status).
fn serve(
    mem: &GuestMemoryMmap,
    descs: &[Descriptor],
    backing: Option<&Backing>,
    serial: &[u8; SERIAL_LEN],
    metrics: &mut BlockMetrics,
) -> Result<Served, RequestError> {
    // The last descriptor is the status; a lone one leaves no header.
    let [header, data @ .., _status] = descs else {
        return Err(RequestError::BadHeader("missing"));
    };
    if header.is_write_only() {
        return Err(RequestError::BadHeader("write-only"));
    }
    if header.len() < REQUEST_HEADER_LEN {
        return Err(RequestError::BadHeader("shorter than 16 bytes"));
    }
    let mut raw = [0u8; REQUEST_HEADER_LEN as usize];
    mem.read_slice(&mut raw, header.addr())
        .map_err(|_| RequestError::BadHeader("outside guest memory"))?;
    let kind = u32::from_le_bytes(raw[..4].try_into().expect("4 bytes"));
    let sector = u64::from_le_bytes(raw[8..].try_into().expect("8 bytes"));
    match kind {
        VIRTIO_BLK_T_IN => {
            let len = read(mem, data, sector, backing)?;
            metrics.reads += 1;
            metrics.read_bytes += u64::from(len);
            Ok((VIRTIO_BLK_S_OK, len))
        }
        VIRTIO_BLK_T_OUT => {
            metrics.writes_refused += 1;
            Ok((VIRTIO_BLK_S_IOERR, 0))
        }
        VIRTIO_BLK_T_FLUSH => {
            metrics.flushes += 1;
            Ok((VIRTIO_BLK_S_OK, 0))
        }
        VIRTIO_BLK_T_GET_ID => {
            let len = write_to_guest(mem, data, serial)?;
            metrics.get_ids += 1;
            Ok((VIRTIO_BLK_S_OK, len))
        }
        _ => {
            metrics.unsupported += 1;
            Ok((VIRTIO_BLK_S_UNSUPP, 0))
        }
    }
}

/// Checks that `data` is writable guest memory; returns its length.
fn writable_len(mem: &GuestMemoryMmap, data: &[Descriptor]) -> Result<u64, RequestError> {
    let mut len = 0u64;
    for desc in data {
        if !desc.is_write_only() {
            return Err(RequestError::ReadOnlyData);
        }
        if !mem.check_range(desc.addr(), desc.len() as usize, Permissions::Write) {
            return Err(RequestError::OutsideMemory {
                addr: desc.addr().0,
                len: desc.len(),
            });
        }
        // At most a queue's worth of u32 lengths: no overflow.
        len += u64::from(desc.len());
    }
    Ok(len)
}

/// Reads the sectors from `sector` on into `data`; returns the bytes read.
fn read(
    mem: &GuestMemoryMmap,
    data: &[Descriptor],
    sector: u64,
    backing: Option<&Backing>,
) -> Result<u32, RequestError> {
    let len = writable_len(mem, data)?;
    if len > MAX_REQUEST_LEN {
        return Err(RequestError::TooLong(len));
    }
    if len % SECTOR_SIZE != 0 {
        return Err(RequestError::PartialSector(len));
    }
    let capacity = backing.map_or(0, Backing::sectors);
    let out_of_range = || RequestError::OutOfRange {
        sector,
        len,
        capacity,
    };
    let offset = sector.checked_mul(SECTOR_SIZE).ok_or_else(out_of_range)?;
    let end = offset.checked_add(len).ok_or_else(out_of_range)?;
    if end > capacity.saturating_mul(SECTOR_SIZE) {
        return Err(out_of_range());
    }
    let len = u32::try_from(len).expect("bounded by MAX_REQUEST_LEN");
    let Some(backing) = backing.filter(|_| len > 0) else {
        return Ok(0);
    };
    let mut file = &backing.file;
    file.seek(SeekFrom::Start(offset))
        .map_err(|e| RequestError::Read(e.to_string()))?;
    let mut pos = offset;
    for desc in data {
        let n = u64::from(desc.len());
        let from_file = n.min(backing.len.saturating_sub(pos));
        if from_file > 0 {
            read_into(mem, file, desc.addr(), from_file)?;
        }
        if from_file < n {
            // Past the image's end but inside its last sector: less than a
            // sector of zeros (the range check above bounds it).
            let zeros = usize::try_from(n - from_file)
                .ok()
                .and_then(|z| ZEROS.get(..z))
                .ok_or_else(out_of_range)?;
            let at = desc
                .addr()
                .checked_add(from_file)
                .ok_or(RequestError::OutsideMemory {
                    addr: desc.addr().0,
                    len: desc.len(),
                })?;
            mem.write_slice(zeros, at)
                .map_err(|e| RequestError::Read(e.to_string()))?;
        }
        pos += n;
    }
    Ok(len)
}

/// Reads `len` bytes from the file's position into guest memory at `addr`,
/// one host mapping at a time.
fn read_into(
    mem: &GuestMemoryMmap,
    mut file: &File,
    addr: GuestAddress,
    len: u64,
) -> Result<(), RequestError> {
    let err = |e: &dyn std::fmt::Display| RequestError::Read(e.to_string());
    let len = usize::try_from(len).map_err(|e| err(&e))?;
    let slices =
        GuestMemory::get_slices(mem, addr, len, Permissions::Write).map_err(|e| err(&e))?;
    for slice in slices {
        let mut slice = slice.map_err(|e| err(&e))?;
        // Loops over short reads; the end of the file is an error, since the
        // request lies within the size the image had when attached.
        file.read_exact_volatile(&mut slice).map_err(|e| err(&e))?;
    }
    Ok(())
}

/// Copies `bytes` into the writable `data`, as far as it reaches; returns
/// how many were written.
fn write_to_guest(
    mem: &GuestMemoryMmap,
    data: &[Descriptor],
    bytes: &[u8],
) -> Result<u32, RequestError> {
    writable_len(mem, data)?;
    let mut written = 0usize;
    for desc in data {
        let n = (desc.len() as usize).min(bytes.len() - written);
        if n == 0 {
            break;
        }
        mem.write_slice(&bytes[written..written + n], desc.addr())
            .map_err(|_| RequestError::OutsideMemory {
                addr: desc.addr().0,
                len: desc.len(),
            })?;
        written += n;
    }
    Ok(u32::try_from(written).expect("at most SERIAL_LEN"))
}

impl VirtioDevice for Block {
    fn device_type(&self) -> u32 {
        VIRTIO_ID_BLOCK
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &QUEUE_SIZES
    }

    fn features(&self) -> u64 {
        FEATURES
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        // le64 capacity; le32 size_max; le32 seg_max; geometry (4 bytes);
        // le32 blk_size.
        let mut config = [0u8; CONFIG_LEN];
        config[..8].copy_from_slice(&self.capacity().to_le_bytes());
        config[8..12].copy_from_slice(&SIZE_MAX.to_le_bytes());
        config[12..16].copy_from_slice(&SEG_MAX.to_le_bytes());
        let blk_size = u32::try_from(SECTOR_SIZE).expect("512");
        config[20..24].copy_from_slice(&blk_size.to_le_bytes());
        read_config_bytes(&config, offset, data);
    }

    fn queue_events(&self) -> &[EventFd] {
        &self.queue_events
    }

    fn activate(&mut self, mem: GuestMemoryMmap, queues: Vec<Queue>) -> Result<(), ActivateError> {
        let Ok([queue]) = <[Queue; 1]>::try_from(queues) else {
            return Err(ActivateError::BadQueue(QUEUE_SIZES.len()));
        };
        self.active = Some(Active { mem, queue });
        // Requests may be queued already (after a restore): kick our own
        // queue so the event loop looks.
        self.queue_events[0].write(1).map_err(ActivateError::Wake)
    }

    fn reset(&mut self) {
        // The image stays: a reset is the driver starting over, not a new disk.
        self.active = None;
    }

    fn active_queues(&self) -> Vec<QueueState> {
        self.active
            .iter()
            .map(|active| active.queue.state())
            .collect()
    }
}
