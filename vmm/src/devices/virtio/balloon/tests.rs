//! Device tests against real (anonymous or file-backed private) guest
//! memory, so that a discard can be seen in what the memory reads back.

use std::sync::Arc;

use virtio_bindings::virtio_ring::VRING_DESC_F_WRITE;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vmm_sys_util::eventfd::EventFd;
use vmm_sys_util::tempfile::TempFile;

use super::*;
use crate::devices::virtio::test_queue::MockQueue;
use crate::devices::virtio::{Interrupt, VirtioDevice, VIRTIO_F_VERSION_1};
use crate::vstate::memory;

const MEM_SIZE: usize = 0x100_0000;
const W: u32 = VRING_DESC_F_WRITE;
/// Where the test's pages start, past the three queues' rings.
const PAGES: u64 = 0x10_0000;
/// [`PAGE_SIZE`] as a descriptor length and as a buffer length.
const PAGE_LEN: u32 = 4096;
const PAGE_BYTES: usize = 4096;
const _: () = assert!(PAGE_LEN as u64 == PAGE_SIZE && PAGE_BYTES as u64 == PAGE_SIZE);

/// An active balloon on `mem`, its three queues and its interrupt line.
struct Harness {
    mem: &'static GuestMemoryMmap,
    queues: Vec<MockQueue>,
    balloon: Balloon,
    irq: Arc<Interrupt>,
}

fn anonymous_memory() -> &'static GuestMemoryMmap {
    Box::leak(Box::new(
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM_SIZE)]).unwrap(),
    ))
}

impl Harness {
    fn new(mem: &'static GuestMemoryMmap) -> Harness {
        let irq = Arc::new(Interrupt::new(EventFd::new(libc::EFD_NONBLOCK).unwrap()));
        let mut balloon = Balloon::new(irq.clone()).unwrap();
        let queues: Vec<MockQueue> = (0..3u64)
            .map(|i| MockQueue::new(mem, i * 0x1_0000, QUEUE_SIZE))
            .collect();
        balloon
            .activate(
                mem.clone(),
                queues.iter().map(MockQueue::create_queue).collect(),
            )
            .unwrap();
        Harness {
            mem,
            queues,
            balloon,
            irq,
        }
    }

    /// Fills page `n` (from [`PAGES`]) with `byte`; returns its address.
    fn fill_page(&self, n: u64, byte: u8) -> u64 {
        let addr = PAGES + n * PAGE_SIZE;
        self.mem
            .write_slice(&[byte; PAGE_BYTES], GuestAddress(addr))
            .unwrap();
        addr
    }

    /// The distinct bytes of page `n`.
    fn page_bytes(&self, n: u64) -> Vec<u8> {
        let mut page = vec![0u8; PAGE_BYTES];
        self.mem
            .read_slice(&mut page, GuestAddress(PAGES + n * PAGE_SIZE))
            .unwrap();
        page.dedup();
        page
    }
}

#[test]
fn it_offers_free_page_reporting_and_a_target_of_zero() {
    let h = Harness::new(anonymous_memory());
    assert_eq!(h.balloon.device_type(), VIRTIO_ID_BALLOON);
    assert_eq!(
        h.balloon.features(),
        VIRTIO_F_VERSION_1 | 1 << VIRTIO_BALLOON_F_REPORTING
    );
    assert_eq!(h.balloon.queue_max_sizes().len(), 3);
    for offset in [0, 4, 12, 200] {
        let mut data = [0xffu8; 4];
        h.balloon.read_config(offset, &mut data);
        assert_eq!(data, [0; 4], "num_pages, actual, ... at {offset}");
    }
}

#[test]
fn reported_pages_of_anonymous_memory_read_back_as_zeros() {
    let mut h = Harness::new(anonymous_memory());
    let first = h.fill_page(0, 0xab);
    h.fill_page(1, 0xab);
    h.fill_page(2, 0xcd);
    let head = h.queues[2].add_chain(&[(first, 2 * PAGE_LEN, W)]);
    assert!(h.balloon.process_queue(2));
    assert_eq!(h.queues[2].take_used(), [(head, 0)]);
    assert_eq!((h.page_bytes(0), h.page_bytes(1)), (vec![0], vec![0]));
    assert_eq!(h.page_bytes(2), [0xcd], "the page after the range stays");
    let m = h.balloon.metrics();
    assert_eq!((m.ranges, m.bytes, m.bad_ranges), (1, 2 * PAGE_SIZE, 0));
}

#[test]
fn reported_pages_of_a_restored_vm_fall_back_to_the_snapshot() {
    // The snapshot's page says 0x11; the restored guest wrote 0x22 over it.
    let template = anonymous_memory();
    template
        .write_slice(&[0x11; PAGE_BYTES], GuestAddress(PAGES))
        .unwrap();
    let file = TempFile::new_with_prefix(std::env::temp_dir().join("unipod-balloon")).unwrap();
    let regions = memory::save(template, file.as_file()).unwrap();
    let restored: &'static GuestMemoryMmap =
        Box::leak(Box::new(memory::restore(file.as_file(), &regions).unwrap()));
    let mut h = Harness::new(restored);
    let page = h.fill_page(0, 0x22);
    h.queues[2].add_chain(&[(page, PAGE_LEN, W)]);
    assert!(h.balloon.process_queue(2));
    assert_eq!(h.page_bytes(0), [0x11], "the pod's private copy is gone");
}

#[test]
fn hostile_ranges_are_skipped_and_the_good_ones_in_the_chain_served() {
    let mut h = Harness::new(anonymous_memory());
    for n in 0..4 {
        h.fill_page(n, 0x5a);
    }
    let page = |n: u64| PAGES + n * PAGE_SIZE;
    let p = PAGE_LEN;
    let end = MEM_SIZE as u64;
    let head = h.queues[2].add_chain(&[
        (page(0) + 8, p, W),         // unaligned address
        (page(0), p + 8, W),         // unaligned length
        (page(0), 0, W),             // empty
        (page(1), p, 0),             // device-readable
        (end, p, W),                 // past the end of memory
        (end - PAGE_SIZE, 2 * p, W), // runs off the end
        (u64::MAX - 4095, p, W),     // wraps around
        (page(3), p, W),             // the one good range
    ]);
    assert!(h.balloon.process_queue(2));
    assert_eq!(h.queues[2].take_used(), [(head, 0)]);
    for n in 0..3 {
        assert_eq!(h.page_bytes(n), [0x5a], "page {n} is untouched");
    }
    assert_eq!(h.page_bytes(3), [0]);
    let m = h.balloon.metrics();
    assert_eq!((m.ranges, m.bad_ranges), (1, 7));
}

#[test]
fn inflate_and_deflate_buffers_come_back_unused() {
    let mut h = Harness::new(anonymous_memory());
    let pfns = h.fill_page(0, 0x77);
    for q in 0..2 {
        let head = h.queues[q].add_chain(&[(pfns, 64, 0)]);
        assert!(h.balloon.process_queue(q));
        assert_eq!(h.queues[q].take_used(), [(head, 0)]);
    }
    assert_eq!(h.page_bytes(0), [0x77]);
    assert_eq!(h.balloon.metrics().ignored_chains, 2);
    assert!(!h.balloon.process_queue(3), "no such queue");
}

#[test]
fn process_interrupts_the_guest_only_when_a_buffer_was_used() {
    let mut h = Harness::new(anonymous_memory());
    h.balloon.process(2);
    assert_eq!(h.irq.status(), 0, "nothing queued, no interrupt");
    let page = h.fill_page(0, 1);
    h.queues[2].add_chain(&[(page, PAGE_LEN, W)]);
    h.balloon.process(2);
    assert_ne!(h.irq.status(), 0);
}

#[test]
fn an_inactive_or_reset_device_serves_nothing() {
    let mut h = Harness::new(anonymous_memory());
    h.balloon.reset();
    let page = h.fill_page(0, 9);
    h.queues[2].add_chain(&[(page, PAGE_LEN, W)]);
    assert!(!h.balloon.process_queue(2));
    assert!(h.balloon.active_queues().is_empty());
    assert_eq!(h.page_bytes(0), [9]);
}
