//! Device tests against mock guest memory and real Unix sockets.

use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use virtio_bindings::virtio_ring::VRING_DESC_F_WRITE;
use virtio_queue::Queue;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vmm_sys_util::eventfd::EventFd;

use super::muxer::{CONN_BUF_SIZE, MAX_CONNECTIONS};
use super::packet::*;
use super::*;
use crate::devices::virtio::test_queue::MockQueue;
use crate::devices::virtio::{Interrupt, VirtioDevice};
use virtio_vsock::packet::PKT_HEADER_SIZE;

const GUEST_CID: u64 = 3;
const QSIZE: u16 = 64;
const HDR: usize = PKT_HEADER_SIZE;

/// One queue and where its next buffers go, in a region reused from its
/// start once full.
struct VsockQueue {
    q: MockQueue,
    next_buf: u64,
    buf_end: u64,
}

impl VsockQueue {
    /// A queue whose rings start at `ring` and whose buffers start at `bufs`.
    fn new(mem: &'static GuestMemoryMmap, ring: u64, bufs: u64) -> VsockQueue {
        VsockQueue {
            q: MockQueue::new(mem, ring, QSIZE),
            next_buf: bufs,
            buf_end: bufs + 0x40_0000,
        }
    }

    /// The address of a fresh `len`-byte buffer.
    fn buffer(&mut self, len: u32) -> u64 {
        if self.next_buf + u64::from(len) > self.buf_end {
            self.next_buf = self.buf_end - 0x40_0000;
        }
        let addr = self.next_buf;
        self.next_buf += u64::from(len).next_multiple_of(16);
        addr
    }

    /// Publishes a chain of (addr, len, flags) descriptors.
    fn add_chain(&mut self, descs: &[(u64, u32, u32)]) {
        self.q.add_chain(descs);
    }

    /// Used entries (head index, length) since the last call.
    fn take_used(&mut self) -> Vec<(u16, u32)> {
        self.q.take_used()
    }

    /// The buffer address of descriptor `index`.
    fn desc_addr(&self, index: u16) -> u64 {
        self.q.desc(index).addr().0
    }
}

/// A guest-side view of a packet.
#[derive(Debug, PartialEq, Eq)]
struct Pkt {
    src_port: u32,
    dst_port: u32,
    op: u16,
    flags: u32,
    buf_alloc: u32,
    fwd_cnt: u32,
    data: Vec<u8>,
}

struct Harness {
    mem: &'static GuestMemoryMmap,
    rx: VsockQueue,
    tx: VsockQueue,
    ev: VsockQueue,
    vsock: Vsock,
    uds: PathBuf,
    irq: Arc<Interrupt>,
    _dir: TempDir,
}

struct TempDir(PathBuf);
impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

impl Harness {
    fn new() -> Harness {
        let mem: &'static GuestMemoryMmap = Box::leak(Box::new(
            GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x100_0000)]).unwrap(),
        ));
        let dir = std::env::temp_dir().join(format!(
            "unipod-vsock-test-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let uds = dir.join("v.sock");
        let irq = Arc::new(Interrupt::new(EventFd::new(libc::EFD_NONBLOCK).unwrap()));
        let mut vsock = Vsock::new(GUEST_CID, &uds, irq.clone()).unwrap();
        let rx = VsockQueue::new(mem, 0x0, 0x10_0000);
        let tx = VsockQueue::new(mem, 0x1_0000, 0x50_0000);
        let ev = VsockQueue::new(mem, 0x2_0000, 0x90_0000);
        let queues: Vec<Queue> = [&rx, &tx, &ev].iter().map(|m| m.q.create_queue()).collect();
        vsock.activate((*mem).clone(), queues).unwrap();
        Harness {
            mem,
            rx,
            tx,
            ev,
            vsock,
            uds,
            irq,
            _dir: TempDir(dir),
        }
    }

    fn give_rx_buffers(&mut self, n: usize, data_len: u32) {
        for _ in 0..n {
            let addr = self.rx.buffer(u32::try_from(HDR).unwrap() + data_len);
            self.rx.add_chain(&[(
                addr,
                u32::try_from(HDR).unwrap() + data_len,
                VRING_DESC_F_WRITE,
            )]);
        }
    }

    fn header_bytes(h: &Header) -> Vec<u8> {
        let Header {
            src_port,
            dst_port,
            op,
            flags,
            len,
            buf_alloc,
            fwd_cnt,
        } = *h;
        let mut b = Vec::with_capacity(HDR);
        b.extend(GUEST_CID.to_le_bytes());
        b.extend(HOST_CID.to_le_bytes());
        b.extend(src_port.to_le_bytes());
        b.extend(dst_port.to_le_bytes());
        b.extend(len.to_le_bytes());
        b.extend(TYPE_STREAM.to_le_bytes());
        b.extend(op.to_le_bytes());
        b.extend(flags.to_le_bytes());
        b.extend(buf_alloc.to_le_bytes());
        b.extend(fwd_cnt.to_le_bytes());
        b
    }

    /// The guest sends one packet (header and data in separate descriptors).
    fn guest_send(&mut self, hdr: Header, data: &[u8]) {
        let len = u32::try_from(data.len()).unwrap();
        let hdr = Self::header_bytes(&Header { len, ..hdr });
        let hdr_addr = self.tx.buffer(u32::try_from(HDR).unwrap());
        self.mem.write_slice(&hdr, GuestAddress(hdr_addr)).unwrap();
        if data.is_empty() {
            self.tx
                .add_chain(&[(hdr_addr, u32::try_from(HDR).unwrap(), 0)]);
        } else {
            let data_addr = self.tx.buffer(len);
            self.mem.write_slice(data, GuestAddress(data_addr)).unwrap();
            self.tx.add_chain(&[
                (hdr_addr, u32::try_from(HDR).unwrap(), 0),
                (data_addr, len, 0),
            ]);
        }
        self.vsock.process();
    }

    /// Packets the device put in the rx queue since the last call.
    fn guest_receive(&mut self) -> Vec<Pkt> {
        self.vsock.process();
        let used = self.rx.take_used();
        used.into_iter()
            .map(|(head, len)| {
                let addr = self.rx.desc_addr(head);
                let mut raw = vec![0u8; len as usize];
                self.mem.read_slice(&mut raw, GuestAddress(addr)).unwrap();
                assert!(raw.len() >= HDR, "used length {len} shorter than a header");
                let u32_at = |o: usize| u32::from_le_bytes(raw[o..o + 4].try_into().unwrap());
                let u16_at = |o: usize| u16::from_le_bytes(raw[o..o + 2].try_into().unwrap());
                assert_eq!(u64::from_le_bytes(raw[0..8].try_into().unwrap()), HOST_CID);
                assert_eq!(
                    u64::from_le_bytes(raw[8..16].try_into().unwrap()),
                    GUEST_CID
                );
                let data_len = u32_at(24) as usize;
                assert_eq!(
                    HDR + data_len,
                    raw.len(),
                    "used length covers header and data"
                );
                Pkt {
                    src_port: u32_at(16),
                    dst_port: u32_at(20),
                    op: u16_at(30),
                    flags: u32_at(32),
                    buf_alloc: u32_at(36),
                    fwd_cnt: u32_at(40),
                    data: raw[HDR..].to_vec(),
                }
            })
            .collect()
    }

    fn host_connect(&mut self, line: &[u8]) -> UnixStream {
        let mut s = UnixStream::connect(&self.uds).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        s.write_all(line).unwrap();
        s
    }

    /// Host client connects to guest `port`; the guest accepts. Returns the
    /// stream and the host-side port.
    fn established(&mut self, port: u32, guest_buf_alloc: u32) -> (UnixStream, u32) {
        let mut s = self.host_connect(format!("CONNECT {port}\n").as_bytes());
        self.give_rx_buffers(1, 4096);
        let req = self.guest_receive();
        assert_eq!(req.len(), 1, "{req:?}");
        assert_eq!((req[0].op, req[0].dst_port), (OP_REQUEST, port));
        let local = req[0].src_port;
        self.guest_send(
            Header {
                buf_alloc: guest_buf_alloc,
                ..from_guest(port, local, OP_RESPONSE)
            },
            &[],
        );
        let mut ok = vec![0u8; format!("OK {local}\n").len()];
        s.read_exact(&mut ok).unwrap();
        assert_eq!(ok, format!("OK {local}\n").as_bytes());
        (s, local)
    }
}

/// A guest packet header with a 64 KiB receive buffer and nothing consumed.
fn from_guest(src_port: u32, dst_port: u32, op: u16) -> Header {
    Header {
        src_port,
        dst_port,
        op,
        buf_alloc: 65536,
        ..Header::default()
    }
}

fn is_closed(s: &mut UnixStream) -> bool {
    let mut b = [0u8; 16];
    match s.read(&mut b) {
        Ok(n) => n == 0,
        Err(e) => e.kind() == std::io::ErrorKind::ConnectionReset,
    }
}

#[test]
fn host_connect_handshake_then_data_both_ways() {
    let mut h = Harness::new();
    let (mut s, local) = h.established(1024, 65536);
    assert!(local >= 1 << 30, "host-initiated ports start at 2^30");

    s.write_all(b"ping").unwrap();
    h.give_rx_buffers(1, 4096);
    let pkts = h.guest_receive();
    assert_eq!(pkts.len(), 1, "{pkts:?}");
    assert_eq!(
        (pkts[0].op, pkts[0].src_port, pkts[0].dst_port),
        (OP_RW, local, 1024)
    );
    assert_eq!(pkts[0].data, b"ping");
    assert_eq!(pkts[0].buf_alloc, CONN_BUF_SIZE);

    h.guest_send(
        Header {
            fwd_cnt: 4,
            ..from_guest(1024, local, OP_RW)
        },
        b"pong",
    );
    let mut buf = [0u8; 4];
    s.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"pong");
    assert!(h.irq.status() & 1 != 0, "used-ring interrupt raised");
}

#[test]
fn host_connect_to_a_port_without_guest_listener_is_closed() {
    let mut h = Harness::new();
    let mut s = h.host_connect(b"CONNECT 77\n");
    h.give_rx_buffers(1, 4096);
    let req = h.guest_receive();
    assert_eq!(req[0].op, OP_REQUEST);
    // The guest kernel answers a REQUEST to a closed port with RST.
    h.guest_send(
        Header {
            buf_alloc: 0,
            ..from_guest(77, req[0].src_port, OP_RST)
        },
        &[],
    );
    assert!(is_closed(&mut s));
    assert_eq!(h.vsock.muxer.socket_count(), 0);
}

#[test]
fn bad_connect_lines_close_the_host_client() {
    let mut h = Harness::new();
    let too_long = vec![b'x'; 40];
    for line in [&b"CONNECT abc\n"[..], b"HELLO 5\n", &too_long] {
        let mut s = h.host_connect(line);
        h.give_rx_buffers(1, 4096);
        assert!(h.guest_receive().is_empty(), "no REQUEST for {line:?}");
        assert!(is_closed(&mut s), "closed after {line:?}");
    }
    // No newline, then EOF.
    let s = h.host_connect(b"CONNECT 5");
    s.shutdown(std::net::Shutdown::Write).unwrap();
    h.vsock.process();
    assert_eq!(h.vsock.muxer.socket_count(), 0);
}

#[test]
fn guest_connect_without_host_listener_gets_rst() {
    let mut h = Harness::new();
    h.give_rx_buffers(1, 4096);
    h.guest_send(from_guest(5555, 9000, OP_REQUEST), &[]);
    let pkts = h.guest_receive();
    assert_eq!(pkts.len(), 1);
    assert_eq!(
        (pkts[0].op, pkts[0].src_port, pkts[0].dst_port),
        (OP_RST, 9000, 5555)
    );
}

#[test]
fn guest_connect_reaches_the_host_listener_at_uds_port() {
    let mut h = Harness::new();
    let listener = UnixListener::bind(format!("{}_9000", h.uds.display())).unwrap();
    h.give_rx_buffers(2, 4096);
    h.guest_send(from_guest(5555, 9000, OP_REQUEST), &[]);
    let pkts = h.guest_receive();
    assert_eq!(pkts[0].op, OP_RESPONSE);
    let (mut s, _) = listener.accept().unwrap();
    s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    h.guest_send(from_guest(5555, 9000, OP_RW), b"hello host");
    let mut buf = [0u8; 10];
    s.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"hello host");
    // The guest closes: the device acknowledges with RST.
    h.guest_send(
        Header {
            flags: SHUTDOWN_SEND | SHUTDOWN_RECV,
            ..from_guest(5555, 9000, OP_SHUTDOWN)
        },
        &[],
    );
    let pkts = h.guest_receive();
    assert_eq!(pkts.last().map(|p| p.op), Some(OP_RST));
    assert!(is_closed(&mut s));
}

#[test]
fn host_to_guest_data_respects_guest_credit() {
    let mut h = Harness::new();
    let (mut s, local) = h.established(1024, 8);
    s.write_all(&[7u8; 20]).unwrap();
    h.give_rx_buffers(4, 4096);
    let pkts = h.guest_receive();
    let sent: usize = pkts.iter().map(|p| p.data.len()).sum();
    assert_eq!(sent, 8, "only the guest's 8-byte credit is used: {pkts:?}");
    // The guest consumed 8 bytes: 8 more may come.
    h.guest_send(
        Header {
            buf_alloc: 8,
            fwd_cnt: 8,
            ..from_guest(1024, local, OP_CREDIT_UPDATE)
        },
        &[],
    );
    let pkts = h.guest_receive();
    assert_eq!(pkts.iter().map(|p| p.data.len()).sum::<usize>(), 8);
    // A credit request gets our credit back.
    h.guest_send(
        Header {
            buf_alloc: 8,
            fwd_cnt: 16,
            ..from_guest(1024, local, OP_CREDIT_REQUEST)
        },
        &[],
    );
    let pkts = h.guest_receive();
    assert!(
        pkts.iter()
            .any(|p| p.op == OP_CREDIT_UPDATE && p.buf_alloc == CONN_BUF_SIZE),
        "{pkts:?}"
    );
}

#[test]
fn data_waits_for_rx_buffers() {
    let mut h = Harness::new();
    let (mut s, _) = h.established(1024, 65536);
    s.write_all(b"queued").unwrap();
    assert!(h.guest_receive().is_empty(), "no rx buffer, no packet");
    h.give_rx_buffers(1, 4096);
    let pkts = h.guest_receive();
    assert_eq!(pkts[0].data, b"queued");
}

#[test]
fn a_guest_overrunning_its_credit_is_reset() {
    let mut h = Harness::new();
    let listener = UnixListener::bind(format!("{}_9000", h.uds.display())).unwrap();
    h.give_rx_buffers(8, 4096);
    h.guest_send(from_guest(5555, 9000, OP_REQUEST), &[]);
    assert_eq!(h.guest_receive()[0].op, OP_RESPONSE);
    let (_host_never_reads, _) = listener.accept().unwrap();
    let chunk = vec![1u8; 64 * 1024];
    let mut reset = false;
    // Far more than CONN_BUF_SIZE plus any socket buffer, bounded in count.
    for _ in 0..64 {
        h.guest_send(from_guest(5555, 9000, OP_RW), &chunk);
        if h.guest_receive().iter().any(|p| p.op == OP_RST) {
            reset = true;
            break;
        }
    }
    assert!(
        reset,
        "the device resets instead of buffering without bound"
    );
    assert_eq!(h.vsock.muxer.socket_count(), 0);
}

#[test]
fn malformed_descriptors_are_returned_unused() {
    let mut h = Harness::new();
    let hdr_len = u32::try_from(HDR).unwrap();
    // A write-only tx head.
    let a = h.tx.buffer(hdr_len);
    h.tx.add_chain(&[(a, hdr_len, VRING_DESC_F_WRITE)]);
    // A header shorter than 44 bytes.
    let b = h.tx.buffer(16);
    h.tx.add_chain(&[(b, 16, 0)]);
    // A header claiming more data than its data descriptor holds.
    let hdr = Harness::header_bytes(&Header {
        len: 100,
        ..from_guest(1, 2, OP_RW)
    });
    let c = h.tx.buffer(hdr_len);
    h.mem.write_slice(&hdr, GuestAddress(c)).unwrap();
    let d = h.tx.buffer(10);
    h.tx.add_chain(&[(c, hdr_len, 0), (d, 10, 0)]);
    // A header pointing outside guest memory.
    h.tx.add_chain(&[(0xffff_0000_0000, hdr_len, 0)]);
    h.vsock.process();
    let used = h.tx.take_used();
    assert_eq!(used.len(), 4, "every chain is returned");
    assert!(used.iter().all(|&(_, len)| len == 0));
    // A read-only rx buffer is returned unused too, and the device still works.
    let e = h.rx.buffer(hdr_len + 64);
    h.rx.add_chain(&[(e, hdr_len + 64, 0)]);
    h.give_rx_buffers(1, 4096);
    h.guest_send(from_guest(5555, 9000, OP_REQUEST), &[]);
    let used = h.rx.take_used();
    assert_eq!(used.len(), 2, "{used:?}");
    assert_eq!(
        used[0].1, 0,
        "the read-only buffer is returned with nothing written"
    );
    assert_eq!(used[1].1, hdr_len, "the RST went into the good buffer");
}

#[test]
fn host_clients_beyond_the_limit_are_refused() {
    let mut h = Harness::new();
    let mut clients: Vec<UnixStream> = (0..MAX_CONNECTIONS)
        .map(|_| UnixStream::connect(&h.uds).unwrap())
        .collect();
    h.vsock.process();
    assert_eq!(h.vsock.muxer.socket_count(), MAX_CONNECTIONS);
    let mut extra = UnixStream::connect(&h.uds).unwrap();
    extra
        .set_read_timeout(Some(Duration::from_secs(2)))
        .unwrap();
    h.vsock.process();
    assert!(is_closed(&mut extra));
    assert_eq!(h.vsock.muxer.socket_count(), MAX_CONNECTIONS);
    clients.clear();
}

#[test]
fn the_socket_file_is_removed_with_the_device() {
    let h = Harness::new();
    let path = h.uds.clone();
    assert!(path.exists());
    drop(h);
    assert!(!path.exists());
}

#[test]
fn config_space_holds_the_guest_cid() {
    let h = Harness::new();
    let mut cid = [0u8; 8];
    h.vsock.read_config(0, &mut cid);
    assert_eq!(u64::from_le_bytes(cid), GUEST_CID);
    let mut past_end = [0xffu8; 4];
    h.vsock.read_config(6, &mut past_end);
    assert_eq!(past_end, [0, 0, 0, 0]);
}

#[test]
fn reserved_cids_and_taken_paths_are_refused() {
    let h = Harness::new();
    let irq = Arc::new(Interrupt::new(EventFd::new(0).unwrap()));
    let dir = h.uds.parent().unwrap();
    assert!(matches!(
        Vsock::new(2, &dir.join("other.sock"), irq.clone()),
        Err(VsockError::ReservedCid(2))
    ));
    let err = Vsock::new(3, &h.uds, irq).err().expect("path in use");
    assert!(err.to_string().contains("already exists"), "{err}");
}

#[test]
fn connections_with_data_take_turns() {
    let mut h = Harness::new();
    let (mut a, port_a) = h.established(1024, 65536);
    let (mut b, port_b) = h.established(1025, 65536);
    a.write_all(b"aaaa").unwrap();
    b.write_all(b"bbbb").unwrap();
    // Two-byte rx buffers: each connection needs two packets.
    h.give_rx_buffers(4, 2);
    let order: Vec<u32> = h.guest_receive().iter().map(|p| p.src_port).collect();
    assert_eq!(order.len(), 4, "{order:?}");
    assert_ne!(
        order[0], order[1],
        "round-robin, not one connection first: {order:?}"
    );
    assert_eq!((order[2], order[3]), (order[0], order[1]), "{order:?}");
    assert!(order.contains(&port_a) && order.contains(&port_b));
}

#[test]
fn a_transport_reset_holds_host_packets_until_the_guest_handled_it() {
    let mut h = Harness::new();
    let addr = h.ev.buffer(4);
    h.mem.write_slice(&[0xff; 4], GuestAddress(addr)).unwrap();
    h.ev.add_chain(&[(addr, 4, VRING_DESC_F_WRITE)]);
    assert!(h.vsock.reset_transport());
    assert_eq!(h.ev.take_used(), vec![(0, 4)]);
    let mut id = [0u8; 4];
    h.mem.read_slice(&mut id, GuestAddress(addr)).unwrap();
    assert_eq!(
        u32::from_le_bytes(id),
        0,
        "VIRTIO_VSOCK_EVENT_TRANSPORT_RESET"
    );
    assert_ne!(h.irq.status(), 0, "the guest is interrupted");

    let _client = h.host_connect(b"CONNECT 1024\n");
    h.give_rx_buffers(1, 4096);
    assert!(
        h.guest_receive().is_empty(),
        "nothing reaches the guest before it handled the reset"
    );
    h.vsock.event_queue_kicked();
    let req = h.rx.take_used();
    assert_eq!(req.len(), 1, "the held CONNECT is delivered on the kick");
}

#[test]
fn without_an_event_buffer_the_reset_holds_nothing() {
    let mut h = Harness::new();
    assert!(!h.vsock.reset_transport());
    let _client = h.host_connect(b"CONNECT 1024\n");
    h.give_rx_buffers(1, 4096);
    let req = h.guest_receive();
    assert_eq!(req.len(), 1, "{req:?}");
    assert_eq!(req[0].op, OP_REQUEST);
}
