//! Device tests against mock guest memory, with a seqpacket socketpair in
//! place of the tap (each read returns one frame, as a tap's does).

use std::collections::HashMap;
use std::os::fd::OwnedFd;
use std::sync::{Arc, Mutex};

use nix::fcntl::{fcntl, FcntlArg, OFlag};
use nix::sys::socket::{socketpair, AddressFamily, SockFlag, SockType};
use virtio_bindings::virtio_net::{
    VIRTIO_NET_F_CSUM, VIRTIO_NET_F_CTRL_VQ, VIRTIO_NET_F_GUEST_CSUM, VIRTIO_NET_F_GUEST_TSO4,
    VIRTIO_NET_F_GUEST_TSO6, VIRTIO_NET_F_GUEST_UFO, VIRTIO_NET_F_MAC, VIRTIO_NET_F_MQ,
    VIRTIO_NET_F_MRG_RXBUF, VIRTIO_NET_F_STATUS,
};
use virtio_bindings::virtio_ring::{
    VIRTIO_RING_F_EVENT_IDX, VRING_DESC_F_NEXT, VRING_DESC_F_WRITE,
};
use virtio_queue::Queue;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vmm_sys_util::eventfd::EventFd;

use super::device::tap_offloads;
use super::*;
use crate::devices::virtio::mmio::{MmioState, MmioTransport, SavedQueue};
use crate::devices::virtio::test_queue::MockQueue;
use crate::devices::virtio::{Interrupt, VirtioDevice, VIRTIO_F_VERSION_1};

const QSIZE: u16 = 64;
const MAC: [u8; 6] = [0x02, 0x00, 0x00, 0x00, 0x00, 0x2a];
const MEM_SIZE: usize = 0x100_0000;
/// Features a Linux driver accepts from this device.
const LINUX_FEATURES: u64 = VIRTIO_F_VERSION_1
    | 1 << VIRTIO_NET_F_MAC
    | 1 << VIRTIO_NET_F_STATUS
    | 1 << VIRTIO_NET_F_MRG_RXBUF
    | 1 << VIRTIO_NET_F_CSUM
    | 1 << VIRTIO_NET_F_GUEST_CSUM
    | 1 << VIRTIO_NET_F_GUEST_TSO4;

/// One queue, where its buffers go and each published chain's buffers.
struct NetQueue {
    q: MockQueue,
    next_buf: u64,
    /// Each published head's descriptors, for reading back what the device
    /// wrote.
    chains: HashMap<u16, Vec<(u64, u32)>>,
}

impl NetQueue {
    /// A queue whose rings start at `ring` and whose buffers start at `bufs`.
    fn new(mem: &'static GuestMemoryMmap, ring: u64, bufs: u64) -> NetQueue {
        NetQueue {
            q: MockQueue::new(mem, ring, QSIZE),
            next_buf: bufs,
            chains: HashMap::new(),
        }
    }

    /// The address of a fresh `len`-byte buffer.
    fn buffer(&mut self, len: usize) -> u64 {
        let addr = self.next_buf;
        self.next_buf += (len as u64).next_multiple_of(16);
        addr
    }

    /// Publishes a chain of (addr, len, flags) descriptors; returns its head.
    fn add_chain(&mut self, descs: &[(u64, u32, u32)]) -> u16 {
        let head = self.q.add_chain(descs);
        self.chains
            .insert(head, descs.iter().map(|&(a, l, _)| (a, l)).collect());
        head
    }

    /// Publishes descriptors (addr, len, flags, next) as given; returns the
    /// head.
    fn add_raw(&mut self, descs: &[(u64, u32, u32, u16)]) -> u16 {
        let head = self.q.add_raw(descs);
        self.chains
            .insert(head, descs.iter().map(|&(a, l, _, _)| (a, l)).collect());
        head
    }

    /// Used entries (head index, length) since the last call.
    fn take_used(&mut self) -> Vec<(u16, u32)> {
        self.q.take_used()
    }

    /// The first `len` bytes the device wrote into chain `head`.
    fn read_back(&self, mem: &GuestMemoryMmap, head: u16, len: u32) -> Vec<u8> {
        let mut out = Vec::new();
        let mut left = len as usize;
        for &(addr, n) in &self.chains[&head] {
            let n = left.min(n as usize);
            let mut buf = vec![0u8; n];
            mem.read_slice(&mut buf, GuestAddress(addr)).unwrap();
            out.extend(buf);
            left -= n;
        }
        assert_eq!(left, 0, "used length {len} exceeds chain {head}");
        out
    }
}

/// A frame the guest received and the used entries (head, length) it took.
type Received = (Vec<u8>, Vec<(u16, u32)>);

struct Harness {
    mem: &'static GuestMemoryMmap,
    rx: NetQueue,
    tx: NetQueue,
    net: Net,
    /// The host end of the fake tap.
    peer: OwnedFd,
    irq: Arc<Interrupt>,
}

fn memory() -> &'static GuestMemoryMmap {
    Box::leak(Box::new(
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM_SIZE)]).unwrap(),
    ))
}

/// A blocking fd for the device (it must make it nonblocking itself) and a
/// nonblocking host end.
fn fake_tap() -> (OwnedFd, OwnedFd) {
    let (ours, peer) = socketpair(
        AddressFamily::Unix,
        SockType::SeqPacket,
        None,
        SockFlag::empty(),
    )
    .unwrap();
    fcntl(&peer, FcntlArg::F_SETFL(OFlag::O_NONBLOCK)).unwrap();
    (ours, peer)
}

fn interrupt() -> Arc<Interrupt> {
    Arc::new(Interrupt::new(EventFd::new(libc::EFD_NONBLOCK).unwrap()))
}

impl Harness {
    fn new(acked: u64) -> Harness {
        let (ours, peer) = fake_tap();
        Harness::with_tap(acked, Some(ours), peer)
    }

    fn detached() -> Harness {
        let (_, peer) = fake_tap();
        Harness::with_tap(LINUX_FEATURES, None, peer)
    }

    fn with_tap(acked: u64, tap: Option<OwnedFd>, peer: OwnedFd) -> Harness {
        let mem = memory();
        let irq = interrupt();
        let mut net = Net::new(MAC, tap, irq.clone()).unwrap();
        let rx = NetQueue::new(mem, 0x0, 0x10_0000);
        let tx = NetQueue::new(mem, 0x1_0000, 0x50_0000);
        let queues: Vec<Queue> = [&rx, &tx].iter().map(|m| m.q.create_queue()).collect();
        net.set_acked_features(acked);
        net.activate((*mem).clone(), queues).unwrap();
        Harness {
            mem,
            rx,
            tx,
            net,
            peer,
            irq,
        }
    }

    /// The guest sends `frame` split into descriptors of the given sizes
    /// (the rest goes into a last one).
    fn guest_send(&mut self, frame: &[u8], split: &[usize]) -> bool {
        let mut descs = Vec::new();
        let mut rest = frame;
        for &n in split {
            let (part, tail) = rest.split_at(n);
            descs.push(part);
            rest = tail;
        }
        descs.push(rest);
        let descs: Vec<(u64, u32, u32)> = descs
            .into_iter()
            .filter(|d| !d.is_empty())
            .map(|d| {
                let addr = self.tx.buffer(d.len());
                self.mem.write_slice(d, GuestAddress(addr)).unwrap();
                (addr, u32::try_from(d.len()).unwrap(), 0)
            })
            .collect();
        self.tx.add_chain(&descs);
        self.net.process_tx()
    }

    /// What reached the host end of the tap.
    fn host_receive(&self) -> Vec<Vec<u8>> {
        let mut frames = Vec::new();
        let mut buf = vec![0u8; MAX_FRAME_LEN + 1];
        while let Ok(n) = nix::unistd::read(&self.peer, &mut buf) {
            frames.push(buf[..n].to_vec());
        }
        frames
    }

    fn host_send(&self, frame: &[u8]) {
        assert_eq!(nix::unistd::write(&self.peer, frame).unwrap(), frame.len());
    }

    /// Posts `n` rx chains of one `len`-byte buffer each.
    fn give_rx(&mut self, n: usize, len: usize) -> Vec<u16> {
        (0..n)
            .map(|_| {
                let addr = self.rx.buffer(len);
                self.rx
                    .add_chain(&[(addr, u32::try_from(len).unwrap(), VRING_DESC_F_WRITE)])
            })
            .collect()
    }

    /// Frames the device put in the rx queue, reassembled from their
    /// buffers with `num_buffers`; also the used entries of each.
    fn guest_receive(&mut self) -> Vec<Received> {
        self.net.process();
        let mut used = self.rx.take_used().into_iter();
        let mut frames = Vec::new();
        while let Some((head, len)) = used.next() {
            let mut frame = self.rx.read_back(self.mem, head, len);
            assert!(
                frame.len() >= VNET_HDR_LEN,
                "buffer {head} holds {len} bytes"
            );
            let num_buffers = u16::from_le_bytes([frame[10], frame[11]]);
            let mut entries = vec![(head, len)];
            for _ in 1..num_buffers {
                let (head, len) = used.next().expect("num_buffers entries are used");
                frame.extend(self.rx.read_back(self.mem, head, len));
                entries.push((head, len));
            }
            frames.push((frame, entries));
        }
        frames
    }
}

/// A frame as a tap hands it over: a vnet header (with `num_buffers` 0) and
/// `len` bytes of Ethernet frame.
fn frame(len: usize, seed: u8) -> Vec<u8> {
    let mut f = vec![0u8; VNET_HDR_LEN];
    f[0] = 1; // VIRTIO_NET_HDR_F_NEEDS_CSUM
    f[6..8].copy_from_slice(&34u16.to_le_bytes()); // csum_start
    f[8..10].copy_from_slice(&16u16.to_le_bytes()); // csum_offset
    f.extend((0..len).map(|i: usize| seed.wrapping_add(i.to_le_bytes()[0])));
    f
}

/// `f` as the guest sees it: with `num_buffers` set.
fn with_num_buffers(f: &[u8], n: u16) -> Vec<u8> {
    let mut f = f.to_vec();
    f[10..12].copy_from_slice(&n.to_le_bytes());
    f
}

#[test]
fn a_tx_frame_reaches_the_tap_byte_exact() {
    let mut h = Harness::new(LINUX_FEATURES);
    let f = frame(1500, 7);
    assert!(h.guest_send(&f, &[VNET_HDR_LEN, 100]), "buffer used");
    assert_eq!(h.host_receive(), vec![f]);
    let used = h.tx.take_used();
    assert_eq!(used.len(), 1);
    assert_eq!(used[0].1, 0, "nothing written into a tx buffer");
    let m = h.net.metrics();
    assert_eq!((m.tx_frames, m.tx_bytes, m.tx_dropped), (1, 1500, 0));
}

#[test]
fn a_maximal_tx_frame_passes_and_a_longer_one_is_dropped() {
    let mut h = Harness::new(LINUX_FEATURES);
    let f = frame(MAX_FRAME_LEN - VNET_HDR_LEN, 1);
    h.guest_send(&f, &[VNET_HDR_LEN, 30000]);
    assert_eq!(h.host_receive(), vec![f]);
    let f = frame(MAX_FRAME_LEN - VNET_HDR_LEN + 1, 1);
    h.guest_send(&f, &[VNET_HDR_LEN, 30000]);
    assert!(h.host_receive().is_empty());
    assert_eq!(h.tx.take_used().len(), 2, "both chains are returned");
    assert_eq!(h.net.metrics().bad_chains, 1);
}

#[test]
fn an_rx_frame_spreads_over_several_chains() {
    let mut h = Harness::new(LINUX_FEATURES);
    let heads = h.give_rx(4, 1000);
    let f = frame(2500 - VNET_HDR_LEN, 3);
    h.host_send(&f);
    let got = h.guest_receive();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].0, with_num_buffers(&f, 3));
    assert_eq!(
        got[0].1,
        vec![(heads[0], 1000), (heads[1], 1000), (heads[2], 500)]
    );
    assert_ne!(h.irq.status(), 0, "the guest is interrupted");
    // The fourth chain is still there for the next frame.
    let small = frame(100, 9);
    h.host_send(&small);
    let got = h.guest_receive();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].0, with_num_buffers(&small, 1));
    assert_eq!(got[0].1, vec![(heads[3], 112)]);
    let m = h.net.metrics();
    assert_eq!((m.rx_frames, m.rx_bytes), (2, 2500 - 12 + 100));
}

#[test]
fn without_mergeable_buffers_a_frame_must_fit_one_chain() {
    let mut h = Harness::new(LINUX_FEATURES & !(1 << VIRTIO_NET_F_MRG_RXBUF));
    let heads = h.give_rx(2, 1000);
    h.host_send(&frame(1500, 1));
    let small = frame(500, 2);
    h.host_send(&small);
    let got = h.guest_receive();
    assert_eq!(got.len(), 1, "the big frame is dropped");
    assert_eq!(got[0].0, with_num_buffers(&small, 1));
    assert_eq!(got[0].1, vec![(heads[0], 512)]);
    assert_eq!(h.net.metrics().rx_dropped, 1);
}

#[test]
fn a_frame_waits_for_rx_buffers_and_mutes_the_tap() {
    let mut h = Harness::new(LINUX_FEATURES);
    let (a, b) = (frame(3000, 1), frame(60, 2));
    h.host_send(&a);
    h.host_send(&b);
    assert!(h.guest_receive().is_empty());
    let (_, _, wants) = h.net.tap_watch().expect("a tap");
    assert!(!wants, "the tap is not read while a frame waits");
    // One buffer is not enough for the first frame: it keeps waiting.
    h.give_rx(1, 2048);
    assert!(h.guest_receive().is_empty());
    // The guest adds buffers and kicks: both frames arrive, in order.
    h.give_rx(3, 2048);
    let got = h.guest_receive();
    assert_eq!(got.len(), 2);
    assert_eq!(got[0].0, with_num_buffers(&a, 2));
    assert_eq!(got[1].0, with_num_buffers(&b, 1));
    let (_, _, wants) = h.net.tap_watch().expect("a tap");
    assert!(wants, "the tap is read again");
}

#[test]
fn hostile_tx_chains_are_returned_empty_and_the_device_keeps_working() {
    let mut h = Harness::new(LINUX_FEATURES);
    let good = h.tx.buffer(200);
    h.mem
        .write_slice(&frame(188, 0), GuestAddress(good))
        .unwrap();
    // Write-only.
    h.tx.add_chain(&[(good, 200, VRING_DESC_F_WRITE)]);
    // Readable header, then a write-only descriptor.
    h.tx.add_chain(&[(good, 12, 0), (good + 12, 188, VRING_DESC_F_WRITE)]);
    // Outside guest memory, and straddling its end.
    h.tx.add_chain(&[(good, 12, 0), (1 << 40, 188, 0)]);
    h.tx.add_chain(&[(MEM_SIZE as u64 - 100, 200, 0)]);
    // Lengths that overflow.
    h.tx.add_chain(&[(good, u32::MAX, 0), (good, u32::MAX, 0)]);
    // Zero-length, and shorter than the headers.
    h.tx.add_chain(&[(good, 0, 0)]);
    h.tx.add_chain(&[(good, 20, 0)]);
    // A descriptor that points at itself: longer than the queue.
    let me = h.tx.q.next_free();
    h.tx.add_raw(&[(good, 100, VRING_DESC_F_NEXT, me)]);
    // A next index outside the table.
    h.tx.add_raw(&[(good, 12, VRING_DESC_F_NEXT, QSIZE + 5)]);
    h.net.process_tx();
    let used = h.tx.take_used();
    assert_eq!(used.len(), 9, "every chain is returned: {used:?}");
    assert!(used.iter().all(|&(_, len)| len == 0));
    assert!(h.host_receive().is_empty(), "nothing reached the tap");
    assert_eq!(h.net.metrics().bad_chains, 9);

    let f = frame(188, 0);
    h.guest_send(&f, &[]);
    assert_eq!(h.host_receive(), vec![f], "a good frame still goes through");
}

#[test]
fn hostile_rx_chains_are_returned_empty_and_the_frame_takes_good_ones() {
    let mut h = Harness::new(LINUX_FEATURES);
    let buf = h.rx.buffer(4096);
    let bad = [
        h.rx.add_chain(&[(buf, 1000, 0)]),                      // read-only
        h.rx.add_chain(&[(1 << 40, 1000, VRING_DESC_F_WRITE)]), // outside memory
        h.rx.add_chain(&[(buf, 8, VRING_DESC_F_WRITE)]),        // no room for the header
        h.rx.add_chain(&[(buf, 0, VRING_DESC_F_WRITE)]),        // zero length
    ];
    let me = h.rx.q.next_free();
    let looped =
        h.rx.add_raw(&[(buf, 100, VRING_DESC_F_WRITE | VRING_DESC_F_NEXT, me)]);
    let good_a = h.give_rx(1, 1000)[0];
    // A bad chain between two good ones is held until the frame is placed.
    let writable_then_readable =
        h.rx.add_chain(&[(buf + 2048, 100, VRING_DESC_F_WRITE), (buf, 100, 0)]);
    let good_b = h.give_rx(1, 1000)[0];
    let f = frame(1500 - VNET_HDR_LEN, 5);
    h.host_send(&f);
    h.net.process_rx();
    let used = h.rx.take_used();
    let mut expected: Vec<(u16, u32)> = bad.iter().map(|&b| (b, 0)).collect();
    expected.extend([
        (looped, 0),
        (writable_then_readable, 0),
        (good_a, 1000),
        (good_b, 500),
    ]);
    assert_eq!(
        used, expected,
        "malformed chains first, the frame's adjacent"
    );
    let mut got = h.rx.read_back(h.mem, good_a, 1000);
    got.extend(h.rx.read_back(h.mem, good_b, 500));
    assert_eq!(got, with_num_buffers(&f, 2));
    assert_eq!(h.net.metrics().bad_chains, 6);
}

#[test]
fn a_detached_device_drops_tx_and_receives_nothing() {
    let mut h = Harness::detached();
    assert!(h.net.is_detached());
    assert!(h.guest_send(&frame(100, 0), &[]), "the chain is returned");
    assert_eq!(h.tx.take_used(), vec![(0, 0)]);
    h.give_rx(2, 2048);
    assert!(!h.net.process_rx());
    assert!(h.rx.take_used().is_empty());
    let m = h.net.metrics();
    assert_eq!((m.tx_frames, m.tx_dropped), (0, 1));
    assert!(h.net.tap_watch().is_none(), "no fd to watch");
}

#[test]
fn a_full_tap_drops_the_frame_without_blocking() {
    let mut h = Harness::new(LINUX_FEATURES);
    let f = frame(60000, 0);
    let mut sent = 0;
    // The socket buffer fills after a few frames; the rest are dropped.
    for _ in 0..40 {
        h.guest_send(&f, &[]);
        sent += 1;
    }
    let m = h.net.metrics();
    assert!(m.tx_dropped > 0, "{m:?}");
    assert_eq!(m.tx_frames + m.tx_dropped, sent);
    assert_eq!(h.host_receive().len() as u64, m.tx_frames);
}

#[test]
fn config_space_holds_the_mac_and_link_up_at_any_offset() {
    let h = Harness::new(LINUX_FEATURES);
    let mut config = [0xffu8; 10];
    h.net.read_config(0, &mut config);
    assert_eq!(&config[..6], &MAC);
    assert_eq!(
        u16::from_le_bytes([config[6], config[7]]),
        1,
        "VIRTIO_NET_S_LINK_UP"
    );
    assert_eq!(
        u16::from_le_bytes([config[8], config[9]]),
        1,
        "one queue pair"
    );
    let mut odd = [0xffu8; 3];
    h.net.read_config(5, &mut odd);
    assert_eq!(odd, [MAC[5], 1, 0]);
    let mut tail = [0xffu8; 4];
    h.net.read_config(8, &mut tail);
    assert_eq!(tail, [1, 0, 0, 0], "bytes past the end read as zero");
    for offset in [10, 4096, u64::MAX - 1, u64::MAX] {
        let mut past = [0xffu8; 4];
        h.net.read_config(offset, &mut past);
        assert_eq!(past, [0; 4], "offset {offset}");
    }
    h.net.read_config(3, &mut []);
}

#[test]
fn features_and_tap_offloads_follow_what_the_driver_accepts() {
    let h = Harness::new(LINUX_FEATURES);
    let offered = h.net.features();
    assert_eq!(offered & LINUX_FEATURES, LINUX_FEATURES);
    for absent in [
        1 << VIRTIO_NET_F_CTRL_VQ,
        1 << VIRTIO_NET_F_MQ,
        1 << VIRTIO_NET_F_GUEST_UFO,
        1 << VIRTIO_RING_F_EVENT_IDX,
    ] {
        assert_eq!(offered & absent, 0, "{absent:#x} is not offered");
    }
    assert_eq!(h.net.device_type(), VIRTIO_ID_NET);
    assert_eq!(h.net.queue_max_sizes(), &[256, 256]);
    assert_eq!(tap_offloads(0), 0);
    assert_eq!(
        tap_offloads(LINUX_FEATURES),
        libc::TUN_F_CSUM | libc::TUN_F_TSO4
    );
    assert_eq!(
        tap_offloads(1 << VIRTIO_NET_F_GUEST_CSUM | 1 << VIRTIO_NET_F_GUEST_TSO6),
        libc::TUN_F_CSUM | libc::TUN_F_TSO6
    );
    assert_eq!(
        tap_offloads(1 << VIRTIO_NET_F_GUEST_TSO4),
        0,
        "TSO needs checksum offload"
    );
}

#[test]
fn the_tap_is_made_nonblocking() {
    let (ours, _peer) = fake_tap();
    let same_file = ours.try_clone().unwrap();
    let nonblocking = || {
        let flags = fcntl(&same_file, FcntlArg::F_GETFL).unwrap();
        OFlag::from_bits_truncate(flags).contains(OFlag::O_NONBLOCK)
    };
    assert!(!nonblocking());
    let _net = Net::new(MAC, Some(ours), interrupt()).unwrap();
    assert!(nonblocking());
}

#[test]
fn only_taps_and_datagram_sockets_are_backends() {
    let (stream, _peer) = std::os::unix::net::UnixStream::pair().unwrap();
    assert!(matches!(
        Net::new(MAC, Some(stream.into()), interrupt()),
        Err(NetError::NotATap)
    ));
    let file = std::fs::File::open("/proc/self/stat").unwrap();
    assert!(matches!(
        Net::new(MAC, Some(file.into()), interrupt()),
        Err(NetError::NotATap)
    ));
}

#[test]
fn a_restored_device_resumes_on_another_tap() {
    let mut h = Harness::new(LINUX_FEATURES);
    let held = h.give_rx(2, 1000);
    h.host_send(&frame(4000, 1));
    assert!(h.guest_receive().is_empty(), "two buffers are too few");
    let queues = h.net.active_queues();
    assert_eq!(
        queues[RX].next_avail, 0,
        "the held chains go back to the guest's side"
    );
    let state = MmioState {
        status: 0xf,
        driver_features: LINUX_FEATURES,
        queue_select: 0,
        device_features_select: 0,
        driver_features_select: 0,
        activated: true,
        interrupt_status: 0,
        queues: queues.into_iter().map(SavedQueue).collect(),
        config_generation: 0,
    };

    // A new device on a new tap, as `unipod boot --restore` builds it.
    let (ours, peer) = fake_tap();
    let irq = interrupt();
    let net = Arc::new(Mutex::new(Net::new(MAC, Some(ours), irq.clone()).unwrap()));
    let _transport =
        MmioTransport::restore(net.clone(), irq.clone(), h.mem.clone(), &state).expect("restored");
    let f = frame(1500, 2);
    nix::unistd::write(&peer, &f).unwrap();
    net.lock().unwrap().process_rx();
    let used = h.rx.take_used();
    assert_eq!(
        used,
        vec![(held[0], 1000), (held[1], 512)],
        "the held chains are reused, mergeable buffers still negotiated"
    );
    let mut got = h.rx.read_back(h.mem, held[0], 1000);
    got.extend(h.rx.read_back(h.mem, held[1], 512));
    assert_eq!(got, with_num_buffers(&f, 2));

    // And the guest's frames reach the new tap.
    let t = frame(80, 3);
    let addr = h.tx.buffer(t.len());
    h.mem.write_slice(&t, GuestAddress(addr)).unwrap();
    h.tx.add_chain(&[(addr, u32::try_from(t.len()).unwrap(), 0)]);
    net.lock().unwrap().process_tx();
    let mut buf = vec![0u8; 200];
    let n = nix::unistd::read(&peer, &mut buf).unwrap();
    assert_eq!(&buf[..n], &t[..]);
    assert!(h.host_receive().is_empty(), "nothing goes to the old tap");
}

#[test]
fn a_reset_forgets_the_waiting_frame() {
    let mut h = Harness::new(LINUX_FEATURES);
    h.host_send(&frame(100, 1));
    assert!(h.guest_receive().is_empty());
    h.net.reset();
    assert!(h.net.active_queues().is_empty());
    assert!(!h.net.process_rx(), "an inactive device does nothing");
    let (_, _, wants) = h.net.tap_watch().expect("a tap");
    assert!(!wants);
}
