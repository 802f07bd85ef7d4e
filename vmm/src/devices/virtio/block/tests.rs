//! Device tests against mock guest memory, with a temp file as the image.

use std::fs::File;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use virtio_bindings::virtio_blk::{
    VIRTIO_BLK_F_BLK_SIZE, VIRTIO_BLK_F_FLUSH, VIRTIO_BLK_F_RO, VIRTIO_BLK_F_SEG_MAX,
    VIRTIO_BLK_F_SIZE_MAX, VIRTIO_BLK_S_IOERR, VIRTIO_BLK_S_OK, VIRTIO_BLK_S_UNSUPP,
    VIRTIO_BLK_T_DISCARD, VIRTIO_BLK_T_FLUSH, VIRTIO_BLK_T_GET_ID, VIRTIO_BLK_T_IN,
    VIRTIO_BLK_T_OUT,
};
use virtio_bindings::virtio_mmio::{
    VIRTIO_MMIO_CONFIG, VIRTIO_MMIO_CONFIG_GENERATION, VIRTIO_MMIO_INTERRUPT_STATUS,
    VIRTIO_MMIO_INT_CONFIG,
};
use virtio_bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vmm_sys_util::eventfd::EventFd;

use super::*;
use crate::devices::virtio::mmio::{MmioState, MmioTransport, SavedQueue};
use crate::devices::virtio::test_queue::MockQueue;
use crate::devices::virtio::{Interrupt, VirtioDevice, VIRTIO_F_VERSION_1};
use crate::devices::BusDevice;

const QSIZE: u16 = 64;
const MEM_SIZE: usize = 0x100_0000;
/// The test image: 8 whole sectors and 100 bytes of a ninth.
const IMAGE_LEN: usize = 8 * 512 + 100;
const W: u32 = VRING_DESC_F_WRITE;
/// Where the test's buffers start, past the request queue's rings.
const BUFS: u64 = 0x10_0000;

/// A file with known contents, removed when dropped.
struct TempImage {
    path: PathBuf,
    bytes: Vec<u8>,
}

impl TempImage {
    fn new(len: usize) -> TempImage {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let path = std::env::temp_dir().join(format!(
            "unipod-blk-{}-{}.img",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::SeqCst)
        ));
        let bytes: Vec<u8> = (0..len)
            .map(|i| u8::try_from(i % 251).unwrap() ^ 0x5a)
            .collect();
        std::fs::write(&path, &bytes).unwrap();
        TempImage { path, bytes }
    }

    fn open(&self) -> File {
        open_image(&self.path).unwrap()
    }
}

impl Drop for TempImage {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// A request as the test published it.
struct Req {
    head: u16,
    /// Each data buffer's address and length.
    data: Vec<(u64, u32)>,
    status: u64,
}

/// An active device, its request queue and where the next buffer goes.
struct Harness {
    mem: &'static GuestMemoryMmap,
    q: MockQueue,
    next_buf: u64,
    block: Block,
    irq: Arc<Interrupt>,
}

fn memory() -> &'static GuestMemoryMmap {
    Box::leak(Box::new(
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM_SIZE)]).unwrap(),
    ))
}

fn interrupt() -> Arc<Interrupt> {
    Arc::new(Interrupt::new(EventFd::new(libc::EFD_NONBLOCK).unwrap()))
}

impl Harness {
    /// An active device on `image` (or detached).
    fn new(image: Option<File>) -> Harness {
        let mem = memory();
        let irq = interrupt();
        let mut block = Block::new("unipod-disk0", image, irq.clone()).unwrap();
        let q = MockQueue::new(mem, 0, QSIZE);
        block
            .activate((*mem).clone(), vec![q.create_queue()])
            .unwrap();
        Harness {
            mem,
            q,
            next_buf: BUFS,
            block,
            irq,
        }
    }

    /// A buffer of `len` bytes filled with `fill`.
    fn buffer(&mut self, len: u32, fill: u8) -> u64 {
        let addr = self.next_buf;
        self.next_buf += u64::from(len).next_multiple_of(16);
        self.mem
            .write_slice(&vec![fill; len as usize], GuestAddress(addr))
            .unwrap();
        addr
    }

    /// A 16-byte request header.
    fn header(&mut self, kind: u32, sector: u64) -> u64 {
        let addr = self.buffer(16, 0);
        let mut raw = [0u8; 16];
        raw[..4].copy_from_slice(&kind.to_le_bytes());
        raw[8..].copy_from_slice(&sector.to_le_bytes());
        self.mem.write_slice(&raw, GuestAddress(addr)).unwrap();
        addr
    }

    /// Publishes a well-formed request with data buffers of `lens` bytes
    /// (writable ones when `writable`, as for a read).
    fn request(&mut self, kind: u32, sector: u64, lens: &[u32], writable: bool) -> Req {
        let header = self.header(kind, sector);
        let data: Vec<(u64, u32)> = lens
            .iter()
            .map(|&len| (self.buffer(len, 0xee), len))
            .collect();
        let status = self.buffer(1, 0xff);
        let mut descs = vec![(header, 16, 0)];
        descs.extend(
            data.iter()
                .map(|&(addr, len)| (addr, len, if writable { W } else { 0 })),
        );
        descs.push((status, 1, W));
        let head = self.q.add_chain(&descs);
        Req { head, data, status }
    }

    fn read(&mut self, sector: u64, lens: &[u32]) -> Req {
        self.request(VIRTIO_BLK_T_IN, sector, lens, true)
    }

    /// Serves what is queued; returns the used entries.
    fn serve(&mut self) -> Vec<(u16, u32)> {
        self.block.process();
        self.q.take_used()
    }

    fn status(&self, req: &Req) -> u32 {
        let mut b = [0u8; 1];
        self.mem
            .read_slice(&mut b, GuestAddress(req.status))
            .unwrap();
        u32::from(b[0])
    }

    /// The bytes in the request's data buffers, concatenated.
    fn data(&self, req: &Req) -> Vec<u8> {
        let mut out = Vec::new();
        for &(addr, len) in &req.data {
            let mut buf = vec![0u8; len as usize];
            self.mem.read_slice(&mut buf, GuestAddress(addr)).unwrap();
            out.extend(buf);
        }
        out
    }
}

fn config(block: &Block) -> [u8; 24] {
    let mut c = [0u8; 24];
    block.read_config(0, &mut c);
    c
}

fn capacity_in_config(block: &Block) -> u64 {
    u64::from_le_bytes(config(block)[..8].try_into().unwrap())
}

#[test]
fn a_read_returns_the_image_bytes_across_descriptors() {
    let image = TempImage::new(IMAGE_LEN);
    let mut h = Harness::new(Some(image.open()));
    let req = h.read(2, &[512, 1024]);
    assert_eq!(h.serve(), vec![(req.head, 1536 + 1)], "data and status");
    assert_eq!(h.status(&req), VIRTIO_BLK_S_OK);
    assert_eq!(h.data(&req), image.bytes[1024..2560]);
    assert_ne!(h.irq.status(), 0, "the guest is interrupted");
    let m = h.block.metrics();
    assert_eq!((m.reads, m.read_bytes, m.io_errors), (1, 1536, 0));
}

#[test]
fn the_last_partial_sector_reads_as_the_image_tail_then_zeros() {
    let image = TempImage::new(IMAGE_LEN);
    let mut h = Harness::new(Some(image.open()));
    assert_eq!(h.block.capacity(), 9, "the size rounded up to sectors");
    // Split so that one descriptor straddles the image's end.
    let req = h.read(7, &[600, 424]);
    h.serve();
    assert_eq!(h.status(&req), VIRTIO_BLK_S_OK);
    let got = h.data(&req);
    assert_eq!(got[..612], image.bytes[7 * 512..]);
    assert!(got[612..].iter().all(|&b| b == 0), "zero-filled, not 0xee");
}

#[test]
fn reads_past_the_end_or_with_overflowing_sectors_fail() {
    let image = TempImage::new(IMAGE_LEN);
    let mut h = Harness::new(Some(image.open()));
    let reqs = [
        h.read(8, &[1024]),              // one sector past the end
        h.read(9, &[512]),               // wholly past it
        h.read(10, &[]),                 // an empty read past it
        h.read(u64::MAX, &[512]),        // the offset overflows
        h.read(u64::MAX / 512, &[1024]), // the end overflows
        h.read(0, &[100]),               // not whole sectors
    ];
    let used = h.serve();
    assert_eq!(used.len(), reqs.len());
    for (req, &(head, len)) in reqs.iter().zip(&used) {
        assert_eq!(head, req.head);
        assert_eq!(len, 1, "only the status is written");
        assert_eq!(h.status(req), VIRTIO_BLK_S_IOERR, "request {head}");
        assert!(
            h.data(req).iter().all(|&b| b == 0xee),
            "nothing read into request {head}"
        );
    }
    assert_eq!(h.block.metrics().io_errors, reqs.len() as u64);
    let ok = h.read(8, &[512]);
    h.serve();
    assert_eq!(
        h.status(&ok),
        VIRTIO_BLK_S_OK,
        "the last sector is readable"
    );
}

#[test]
fn a_write_fails_and_leaves_the_image_unchanged() {
    let image = TempImage::new(IMAGE_LEN);
    let mut h = Harness::new(Some(image.open()));
    let req = h.request(VIRTIO_BLK_T_OUT, 0, &[512], false);
    assert_eq!(h.serve(), vec![(req.head, 1)]);
    assert_eq!(h.status(&req), VIRTIO_BLK_S_IOERR);
    assert_eq!(std::fs::read(&image.path).unwrap(), image.bytes);
    assert_eq!(h.block.metrics().writes_refused, 1);
    assert_eq!(
        h.block.features() & (1 << VIRTIO_BLK_F_RO),
        1 << VIRTIO_BLK_F_RO
    );
}

#[test]
fn get_id_returns_the_serial_padded_with_zeros() {
    let mut h = Harness::new(None);
    let req = h.request(VIRTIO_BLK_T_GET_ID, 0, &[8, 12], true);
    assert_eq!(h.serve(), vec![(req.head, 21)]);
    assert_eq!(h.status(&req), VIRTIO_BLK_S_OK);
    let mut expected = b"unipod-disk0".to_vec();
    expected.resize(SERIAL_LEN, 0);
    assert_eq!(h.data(&req), expected);

    let mut long = Block::new("a-serial-longer-than-20-bytes", None, interrupt()).unwrap();
    long.attach(TempImage::new(512).open()).unwrap();
    let err = long.attach(TempImage::new(512).open()).unwrap_err();
    assert!(
        err.to_string()
            .starts_with("disk a-serial-longer-than already"),
        "cut to 20 bytes: {err}"
    );
}

#[test]
fn flush_succeeds_and_other_types_are_unsupported() {
    let image = TempImage::new(IMAGE_LEN);
    let mut h = Harness::new(Some(image.open()));
    let flush = h.request(VIRTIO_BLK_T_FLUSH, 0, &[], false);
    let discard = h.request(VIRTIO_BLK_T_DISCARD, 0, &[16], false);
    let odd = h.request(0xdead_beef, 0, &[], false);
    assert_eq!(h.serve().len(), 3);
    assert_eq!(h.status(&flush), VIRTIO_BLK_S_OK);
    assert_eq!(h.status(&discard), VIRTIO_BLK_S_UNSUPP);
    assert_eq!(h.status(&odd), VIRTIO_BLK_S_UNSUPP);
    let m = h.block.metrics();
    assert_eq!((m.flushes, m.unsupported), (1, 2));
}

#[test]
fn hostile_chains_fail_or_are_dropped_and_the_device_keeps_working() {
    let image = TempImage::new(IMAGE_LEN);
    let mut h = Harness::new(Some(image.open()));
    let hdr = h.header(VIRTIO_BLK_T_IN, 0);
    let data = h.buffer(512, 0xee);
    let status = h.buffer(1, 0xff);
    let big = 12 << 20;
    let big_buf = h.buffer(big, 0);

    // No place for a status: returned with length 0.
    let dropped = [
        // The last descriptor is readable.
        h.q.add_chain(&[(hdr, 16, 0), (data, 512, W), (status, 1, 0)]),
        // Only a header.
        h.q.add_chain(&[(hdr, 16, 0)]),
        // An empty status descriptor.
        h.q.add_chain(&[(hdr, 16, 0), (data, 512, W), (status, 0, W)]),
        // The status outside guest memory, and straddling its end.
        h.q.add_chain(&[(hdr, 16, 0), (1 << 40, 1, W)]),
        h.q.add_chain(&[(hdr, 16, 0), (u64::MAX - 1, 4, W)]),
        {
            // A descriptor that points at itself: longer than the queue.
            let me = h.q.next_free();
            h.q.add_raw(&[(status, 1, W | VRING_DESC_F_NEXT, me)])
        },
        // A next index outside the table.
        h.q.add_raw(&[(hdr, 16, VRING_DESC_F_NEXT, QSIZE + 5)]),
    ];
    let used = h.serve();
    assert_eq!(used, dropped.iter().map(|&d| (d, 0)).collect::<Vec<_>>());
    assert_eq!(h.block.metrics().bad_chains, dropped.len() as u64);

    // A status has a place: the request fails with IOERR.
    let short_hdr = h.header(VIRTIO_BLK_T_IN, 0);
    let mut failing = Vec::new();
    for descs in [
        // Only a status: no header.
        vec![(status, 1, W)],
        // The header is too short, write-only, or outside memory.
        vec![(short_hdr, 8, 0), (data, 512, W), (status, 1, W)],
        vec![(hdr, 16, W), (data, 512, W), (status, 1, W)],
        vec![(1 << 40, 16, 0), (data, 512, W), (status, 1, W)],
        // Read data in a readable buffer, or outside guest memory.
        vec![(hdr, 16, 0), (data, 512, 0), (status, 1, W)],
        vec![
            (hdr, 16, 0),
            (MEM_SIZE as u64 - 256, 512, W),
            (status, 1, W),
        ],
        // More than MAX_REQUEST_LEN in whole sectors.
        vec![
            (hdr, 16, 0),
            (big_buf, big, W),
            (big_buf, big, W),
            (big_buf, big, W),
            (status, 1, W),
        ],
    ] {
        h.mem.write_obj(0xffu8, GuestAddress(status)).unwrap();
        let head = h.q.add_chain(&descs);
        assert_eq!(h.serve(), vec![(head, 1)], "{descs:x?}");
        let got: u8 = h.mem.read_obj(GuestAddress(status)).unwrap();
        assert_eq!(u32::from(got), VIRTIO_BLK_S_IOERR, "{descs:x?}");
        failing.push(head);
    }
    assert_eq!(h.block.metrics().io_errors, failing.len() as u64);
    assert_eq!(h.block.metrics().reads, 0);

    let ok = h.read(1, &[512]);
    h.serve();
    assert_eq!(h.status(&ok), VIRTIO_BLK_S_OK, "a good request still works");
    assert_eq!(h.data(&ok), image.bytes[512..1024]);
}

#[test]
fn a_detached_slot_has_capacity_0_and_fails_reads() {
    let mut h = Harness::new(None);
    assert!(h.block.is_detached());
    assert_eq!(capacity_in_config(&h.block), 0);
    let req = h.read(0, &[512]);
    assert_eq!(h.serve(), vec![(req.head, 1)]);
    assert_eq!(h.status(&req), VIRTIO_BLK_S_IOERR);
    let flush = h.request(VIRTIO_BLK_T_FLUSH, 0, &[], false);
    h.serve();
    assert_eq!(h.status(&flush), VIRTIO_BLK_S_OK);
}

#[test]
fn attach_sets_the_capacity_and_raises_the_config_interrupt() {
    let image = TempImage::new(IMAGE_LEN);
    let mut h = Harness::new(None);
    h.irq.ack(u32::MAX);
    assert_eq!(h.irq.config_generation(), 0);
    assert_eq!(h.block.attach(image.open()).unwrap(), 9);
    assert!(!h.block.is_detached());
    assert_eq!(capacity_in_config(&h.block), 9);
    assert_eq!(h.irq.status(), VIRTIO_MMIO_INT_CONFIG, "config change only");
    assert_eq!(h.irq.config_generation(), 1);
    let req = h.read(0, &[4096]);
    h.serve();
    assert_eq!(h.status(&req), VIRTIO_BLK_S_OK);
    assert_eq!(h.data(&req), image.bytes[..4096]);

    let err = h.block.attach(image.open()).unwrap_err();
    assert!(matches!(err, BlockError::AlreadyAttached(_)), "{err}");
    assert_eq!(capacity_in_config(&h.block), 9);
    assert_eq!(
        h.irq.config_generation(),
        1,
        "a refused attach changes nothing"
    );
}

#[test]
fn a_restored_slot_takes_an_image_and_serves_requests_queued_before() {
    // The template: a detached slot, activated by the guest, with a request
    // the guest queued just before the snapshot.
    let mut h = Harness::new(None);
    let early = h.read(0, &[512]);
    let state = MmioState {
        status: 0xf,
        driver_features: VIRTIO_F_VERSION_1 | 1 << VIRTIO_BLK_F_RO,
        queue_select: 0,
        device_features_select: 0,
        driver_features_select: 0,
        activated: true,
        interrupt_status: 0,
        queues: h
            .block
            .active_queues()
            .into_iter()
            .map(SavedQueue)
            .collect(),
        config_generation: 3,
    };
    let json = serde_json::to_string(&state).unwrap();
    let state: MmioState = serde_json::from_str(&json).unwrap();

    // A pod restores it and attaches its image, as the device manager does.
    let image = TempImage::new(IMAGE_LEN);
    let irq = interrupt();
    let block = Arc::new(Mutex::new(
        Block::new("unipod-disk0", None, irq.clone()).unwrap(),
    ));
    let mut transport =
        MmioTransport::restore(block.clone(), irq.clone(), h.mem.clone(), &state).unwrap();
    assert_eq!(
        block.lock().unwrap().queue_events[0].read().unwrap(),
        1,
        "activation kicks the queue"
    );
    block.lock().unwrap().attach(image.open()).unwrap();
    let reg = |t: &mut MmioTransport, offset: u32| {
        let mut b = [0u8; 4];
        t.read(u64::from(offset), &mut b);
        u32::from_le_bytes(b)
    };
    assert_eq!(
        reg(&mut transport, VIRTIO_MMIO_INTERRUPT_STATUS),
        VIRTIO_MMIO_INT_CONFIG
    );
    assert_eq!(reg(&mut transport, VIRTIO_MMIO_CONFIG_GENERATION), 4);
    let mut capacity = [0u8; 8];
    transport.read(u64::from(VIRTIO_MMIO_CONFIG), &mut capacity);
    assert_eq!(u64::from_le_bytes(capacity), 9, "the driver rereads this");

    block.lock().unwrap().process();
    assert_eq!(h.q.take_used(), vec![(early.head, 513)]);
    assert_eq!(h.status(&early), VIRTIO_BLK_S_OK);
    assert_eq!(h.data(&early), image.bytes[..512]);
}

#[test]
fn a_reset_device_is_idle_until_activated_again() {
    let image = TempImage::new(IMAGE_LEN);
    let mut h = Harness::new(Some(image.open()));
    h.read(0, &[512]);
    h.block.reset();
    assert!(h.block.active_queues().is_empty());
    assert!(!h.block.process_queue(), "an inactive device does nothing");
    assert!(h.q.take_used().is_empty());
    assert_eq!(h.block.capacity(), 9, "the image stays");

    // The driver sets up fresh rings and starts again.
    let q = MockQueue::new(h.mem, 0x8_0000, QSIZE);
    h.block
        .activate(h.mem.clone(), vec![q.create_queue()])
        .unwrap();
    h.q = q;
    h.next_buf = BUFS;
    let req = h.read(3, &[512]);
    assert_eq!(h.serve(), vec![(req.head, 513)]);
    assert_eq!(h.data(&req), image.bytes[1536..2048]);
}

#[test]
fn config_space_and_features_describe_a_read_only_disk() {
    let image = TempImage::new(IMAGE_LEN);
    let h = Harness::new(Some(image.open()));
    let c = config(&h.block);
    let le32 = |at: usize| u32::from_le_bytes(c[at..at + 4].try_into().unwrap());
    assert_eq!(capacity_in_config(&h.block), 9);
    assert_eq!(le32(8), SIZE_MAX, "size_max");
    assert_eq!(le32(12), SEG_MAX, "seg_max");
    assert_eq!(le32(16), 0, "no geometry");
    assert_eq!(le32(20), 512, "blk_size");
    assert_eq!(u64::from(SEG_MAX) * u64::from(SIZE_MAX), MAX_REQUEST_LEN);
    let mut odd = [0xffu8; 3];
    h.block.read_config(7, &mut odd);
    assert_eq!(
        odd,
        [0, 0, 0],
        "capacity's top byte, then size_max's low bytes"
    );
    h.block.read_config(9, &mut odd);
    assert_eq!(odd, [0, 2, 0], "size_max is 128 KiB");
    let mut past = [0xffu8; 4];
    h.block.read_config(u64::MAX, &mut past);
    assert_eq!(past, [0; 4]);

    let f = h.block.features();
    for wanted in [
        VIRTIO_BLK_F_RO,
        VIRTIO_BLK_F_BLK_SIZE,
        VIRTIO_BLK_F_SEG_MAX,
        VIRTIO_BLK_F_SIZE_MAX,
    ] {
        assert_ne!(f & (1 << wanted), 0, "feature {wanted}");
    }
    assert_eq!(f & (1 << VIRTIO_BLK_F_FLUSH), 0, "nothing to flush");
    assert_ne!(f & VIRTIO_F_VERSION_1, 0);
    assert_eq!(h.block.device_type(), VIRTIO_ID_BLOCK);
    assert_eq!(h.block.queue_max_sizes(), &[256]);
}

#[test]
fn opening_an_image_names_the_path_when_it_fails() {
    let err = open_image(std::path::Path::new("/no/such/image.erofs")).unwrap_err();
    assert_eq!(
        crate::error_chain::error_chain(&err, ": "),
        "--disk /no/such/image.erofs: cannot open: No such file or directory (os error 2)"
    );
    let err = open_image(&std::env::temp_dir()).unwrap_err();
    assert!(matches!(err, BlockError::Directory(_)), "{err}");
}
