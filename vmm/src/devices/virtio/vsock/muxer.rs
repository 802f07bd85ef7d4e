//! The host half of hybrid vsock: Unix sockets on one side, vsock packet
//! headers on the other.
//!
//! # Design
//! Every host socket is nonblocking and registered edge-triggered in the
//! muxer's own epoll set, which the device's event loop watches as a single
//! fd (so the muxer can be driven without an event manager in unit tests).
//! Readiness is remembered per connection (`readable`) until a read says
//! `WouldBlock`. Guest data is only read from a host socket when the guest
//! has credit for it and an rx buffer is waiting, so nothing is buffered on
//! the host→guest path. On the guest→host path the guest's credit bounds what
//! can pile up per connection to [`CONN_BUF_SIZE`]; a guest that overruns it
//! is reset. The number of sockets is bounded by [`MAX_CONNECTIONS`] and the
//! control-packet queue by [`MAX_CONTROL_PACKETS`].

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::io::{ErrorKind, Read, Write};
use std::num::Wrapping;
use std::ops::Bound;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};

use nix::sys::socket::{connect, socket, AddressFamily, SockFlag, SockType, UnixAddr};
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};

use super::handshake::{self, parse_connect};
use super::packet::{
    Header, OP_CREDIT_REQUEST, OP_CREDIT_UPDATE, OP_REQUEST, OP_RESPONSE, OP_RST, OP_RW,
    OP_SHUTDOWN, SHUTDOWN_RECV, SHUTDOWN_SEND,
};
use crate::devices::log_limit::LogLimiter;
use crate::guest_warn;

/// Open host sockets (connections, handshakes, draining) at most.
pub const MAX_CONNECTIONS: usize = 64;
/// Guest→host bytes one connection may have in flight: our `buf_alloc`.
pub const CONN_BUF_SIZE: u32 = 256 * 1024;
/// Queued control packets (RESPONSE, RST, credit, shutdown) at most.
pub const MAX_CONTROL_PACKETS: usize = 4 * MAX_CONNECTIONS;
/// Host ports for host-initiated connections start here (as in Firecracker).
const FIRST_LOCAL_PORT: u32 = 1 << 30;
/// Send a credit update once the guest's view of our free space is this stale.
const CREDIT_UPDATE_THRESHOLD: u32 = CONN_BUF_SIZE / 2;
const EPOLL_BATCH: usize = 32;

/// A connection's ports: `local` on the host side, `peer` in the guest.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ConnKey {
    /// The host-side port.
    pub local: u32,
    /// The guest-side port.
    pub peer: u32,
}

#[derive(Debug, PartialEq, Eq)]
enum State {
    /// Host-initiated: REQUEST sent to the guest, no RESPONSE yet.
    Connecting,
    Established,
}

struct Connection {
    stream: UnixStream,
    key: ConnKey,
    state: State,
    peer_buf_alloc: u32,
    peer_fwd_cnt: Wrapping<u32>,
    /// Bytes sent to the guest.
    rx_cnt: Wrapping<u32>,
    /// Guest bytes the host socket has taken.
    fwd_cnt: Wrapping<u32>,
    last_fwd_cnt_sent: Wrapping<u32>,
    to_host: VecDeque<u8>,
    readable: bool,
    /// The guest will send no more: half-close once `to_host` drains.
    shut_write_pending: bool,
}

impl Connection {
    fn new(stream: UnixStream, key: ConnKey, state: State) -> Connection {
        Connection {
            stream,
            key,
            state,
            peer_buf_alloc: 0,
            peer_fwd_cnt: Wrapping(0),
            rx_cnt: Wrapping(0),
            fwd_cnt: Wrapping(0),
            last_fwd_cnt_sent: Wrapping(0),
            to_host: VecDeque::new(),
            readable: true,
            shut_write_pending: false,
        }
    }

    /// A host→guest header for this connection, carrying our credit.
    fn header(&mut self, op: u16, flags: u32) -> Header {
        self.last_fwd_cnt_sent = self.fwd_cnt;
        Header {
            src_port: self.key.local,
            dst_port: self.key.peer,
            op,
            flags,
            len: 0,
            buf_alloc: CONN_BUF_SIZE,
            fwd_cnt: self.fwd_cnt.0,
        }
    }

    /// Bytes the guest can still take from us.
    fn peer_free(&self) -> u32 {
        let in_flight = (self.rx_cnt - self.peer_fwd_cnt).0;
        self.peer_buf_alloc.saturating_sub(in_flight)
    }

    /// Queues guest data for the host socket and writes what it will take.
    fn send_to_host(&mut self, data: &[u8]) -> std::io::Result<()> {
        let pending = self.to_host.len() + data.len();
        if pending > CONN_BUF_SIZE as usize {
            return Err(std::io::Error::other("guest overran its credit"));
        }
        self.to_host.extend(data);
        self.flush()
    }

    /// Writes buffered guest data until the socket would block.
    fn flush(&mut self) -> std::io::Result<()> {
        while !self.to_host.is_empty() {
            let (front, _) = self.to_host.as_slices();
            match self.stream.write(front) {
                Ok(0) => return Err(ErrorKind::WriteZero.into()),
                Ok(n) => {
                    self.to_host.drain(..n);
                    self.fwd_cnt += u32::try_from(n).expect("bounded by CONN_BUF_SIZE");
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => return Ok(()),
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        if self.shut_write_pending {
            self.shut_write_pending = false;
            self.stream.shutdown(std::net::Shutdown::Write)?;
        }
        Ok(())
    }

    fn can_send_to_guest(&self) -> bool {
        self.state == State::Established && self.readable && self.peer_free() > 0
    }

    fn needs_credit_update(&self) -> bool {
        (self.fwd_cnt - self.last_fwd_cnt_sent).0 >= CREDIT_UPDATE_THRESHOLD
    }
}

/// A host client that has not finished its `CONNECT` line.
struct Handshake {
    stream: UnixStream,
    line: Vec<u8>,
}

/// Errors while creating the muxer.
#[derive(Debug, thiserror::Error)]
pub enum MuxerError {
    /// The socket path is taken.
    #[error("--vsock-uds {0}: the path already exists; remove it, or pick another path if a VM still uses it")]
    PathInUse(PathBuf),
    /// The Unix listener cannot be created.
    #[error("--vsock-uds {0}: cannot listen there")]
    Listen(PathBuf, #[source] std::io::Error),
    /// Epoll setup failed.
    #[error("cannot set up the vsock epoll set")]
    Epoll(#[source] std::io::Error),
}

/// The connections of one vsock device.
pub struct Muxer {
    uds_path: PathBuf,
    listener: UnixListener,
    epoll: Epoll,
    handshakes: HashMap<RawFd, Handshake>,
    conns: BTreeMap<ConnKey, Connection>,
    by_fd: HashMap<RawFd, ConnKey>,
    /// Closed by the guest, still writing its last bytes to the host.
    draining: HashMap<RawFd, Connection>,
    control: VecDeque<Header>,
    next_local_port: u32,
    last_served: Option<ConnKey>,
    log_limit: LogLimiter,
}

impl Muxer {
    /// Listens on `uds_path` for host clients.
    pub fn new(uds_path: &Path) -> Result<Muxer, MuxerError> {
        if uds_path.exists() {
            return Err(MuxerError::PathInUse(uds_path.to_path_buf()));
        }
        let listener =
            UnixListener::bind(uds_path).map_err(|e| MuxerError::Listen(uds_path.into(), e))?;
        let muxer = Muxer {
            uds_path: uds_path.to_path_buf(),
            epoll: Epoll::new().map_err(MuxerError::Epoll)?,
            handshakes: HashMap::new(),
            conns: BTreeMap::new(),
            by_fd: HashMap::new(),
            draining: HashMap::new(),
            control: VecDeque::new(),
            next_local_port: FIRST_LOCAL_PORT,
            last_served: None,
            log_limit: LogLimiter::default(),
            listener,
        };
        // From here on, Drop removes the socket file.
        muxer
            .listener
            .set_nonblocking(true)
            .map_err(|e| MuxerError::Listen(uds_path.into(), e))?;
        muxer
            .epoll
            .ctl(
                ControlOperation::Add,
                muxer.listener.as_raw_fd(),
                EpollEvent::new(EventSet::IN, fd_data(muxer.listener.as_raw_fd())),
            )
            .map_err(MuxerError::Epoll)?;
        Ok(muxer)
    }

    /// The fd that becomes readable when a host socket needs attention.
    pub fn epoll_fd(&self) -> RawFd {
        self.epoll.as_raw_fd()
    }

    /// Open host sockets.
    pub fn socket_count(&self) -> usize {
        self.handshakes.len() + self.conns.len() + self.draining.len()
    }

    /// Handles whatever the host sockets reported, without blocking.
    pub fn handle_host_events(&mut self) {
        let mut events = [EpollEvent::default(); EPOLL_BATCH];
        loop {
            let n = match self.epoll.wait(0, &mut events) {
                Ok(n) => n,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) => {
                    log::error!("vsock: epoll_wait failed: {e}");
                    return;
                }
            };
            for event in &events[..n] {
                let Ok(fd) = RawFd::try_from(event.data()) else {
                    continue;
                };
                self.handle_fd(fd, event.event_set());
            }
            if n < EPOLL_BATCH {
                return;
            }
        }
    }

    fn handle_fd(&mut self, fd: RawFd, events: EventSet) {
        if fd == self.listener.as_raw_fd() {
            self.accept_all();
        } else if self.handshakes.contains_key(&fd) {
            self.continue_handshake(fd);
        } else if let Some(&key) = self.by_fd.get(&fd) {
            self.host_socket_ready(key, events);
        } else if let Some(conn) = self.draining.get_mut(&fd) {
            let hung_up = events.intersects(EventSet::HANG_UP | EventSet::ERROR);
            if hung_up || conn.flush().is_err() || conn.to_host.is_empty() {
                self.draining.remove(&fd);
            }
        }
    }

    fn accept_all(&mut self) {
        loop {
            let stream = match self.listener.accept() {
                Ok((stream, _)) => stream,
                Err(e) if e.kind() == ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) => {
                    log::warn!("vsock: accept on {} failed: {e}", self.uds_path.display());
                    return;
                }
            };
            if self.socket_count() >= MAX_CONNECTIONS {
                log::warn!("vsock: {MAX_CONNECTIONS} connections open; refusing a host client");
                continue;
            }
            let fd = stream.as_raw_fd();
            if stream.set_nonblocking(true).is_err() || !self.watch(fd) {
                continue;
            }
            let handshake = Handshake {
                stream,
                line: Vec::with_capacity(handshake::MAX_LINE_LEN),
            };
            self.handshakes.insert(fd, handshake);
            // Edge-triggered: the line may already be waiting.
            self.continue_handshake(fd);
        }
    }

    fn watch(&self, fd: RawFd) -> bool {
        let events =
            EventSet::IN | EventSet::OUT | EventSet::READ_HANG_UP | EventSet::EDGE_TRIGGERED;
        match self.epoll.ctl(
            ControlOperation::Add,
            fd,
            EpollEvent::new(events, fd_data(fd)),
        ) {
            Ok(()) => true,
            Err(e) => {
                log::warn!("vsock: cannot watch a host socket: {e}");
                false
            }
        }
    }

    /// Reads the CONNECT line a byte at a time, so that bytes after the
    /// newline stay in the socket for the guest.
    fn continue_handshake(&mut self, fd: RawFd) {
        let Some(hs) = self.handshakes.get_mut(&fd) else {
            return;
        };
        let mut byte = [0u8; 1];
        let port = loop {
            match hs.stream.read(&mut byte) {
                Ok(0) => break Err("closed before CONNECT".to_string()),
                Ok(_) => {
                    hs.line.push(byte[0]);
                    match parse_connect(&hs.line) {
                        Ok(Some(port)) => break Ok(port),
                        Ok(None) => {}
                        Err(e) => break Err(e.to_string()),
                    }
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => break Err(e.to_string()),
            }
        };
        let Some(hs) = self.handshakes.remove(&fd) else {
            return;
        };
        match port {
            Ok(port) => {
                let key = ConnKey {
                    local: self.allocate_local_port(),
                    peer: port,
                };
                let mut conn = Connection::new(hs.stream, key, State::Connecting);
                let request = conn.header(OP_REQUEST, 0);
                self.push_control(request);
                self.by_fd.insert(fd, key);
                self.conns.insert(key, conn);
            }
            Err(why) => log::warn!("vsock: dropping a host client: {why}"),
        }
    }

    fn allocate_local_port(&mut self) -> u32 {
        loop {
            let port = self.next_local_port;
            self.next_local_port = self
                .next_local_port
                .checked_add(1)
                .unwrap_or(FIRST_LOCAL_PORT);
            if !self.conns.keys().any(|k| k.local == port) {
                return port;
            }
        }
    }

    fn host_socket_ready(&mut self, key: ConnKey, events: EventSet) {
        let Some(conn) = self.conns.get_mut(&key) else {
            return;
        };
        if events
            .intersects(EventSet::IN | EventSet::READ_HANG_UP | EventSet::HANG_UP | EventSet::ERROR)
        {
            conn.readable = true;
        }
        if conn.state == State::Connecting && events.intersects(EventSet::HANG_UP | EventSet::ERROR)
        {
            self.reset(key);
            return;
        }
        if events.contains(EventSet::OUT) {
            if let Err(e) = conn.flush() {
                log::debug!("vsock: host socket for {key:?} failed: {e}");
                self.reset(key);
                return;
            }
            if conn.needs_credit_update() {
                let update = conn.header(OP_CREDIT_UPDATE, 0);
                self.push_control(update);
            }
        }
    }

    /// A packet from the guest. `hdr.src_port` is the guest's port.
    pub fn on_guest_packet(&mut self, hdr: &Header, data: &[u8]) {
        let key = ConnKey {
            local: hdr.dst_port,
            peer: hdr.src_port,
        };
        let Some(conn) = self.conns.get_mut(&key) else {
            match hdr.op {
                OP_REQUEST => self.connect_to_host_listener(key, hdr),
                OP_RST => {}
                _ => self.push_control(rst_for(key)),
            }
            return;
        };
        conn.peer_buf_alloc = hdr.buf_alloc;
        conn.peer_fwd_cnt = Wrapping(hdr.fwd_cnt);
        match (hdr.op, &conn.state) {
            (OP_RESPONSE, State::Connecting) => {
                let ok = handshake::ok_line(key.local);
                match conn.stream.write(ok.as_bytes()) {
                    Ok(n) if n == ok.len() => {
                        conn.state = State::Established;
                        conn.readable = true;
                    }
                    _ => self.reset(key),
                }
            }
            (OP_RW, State::Established) => {
                if let Err(e) = conn.send_to_host(data) {
                    log::debug!("vsock: {key:?}: {e}");
                    self.reset(key);
                } else if conn.needs_credit_update() {
                    let update = conn.header(OP_CREDIT_UPDATE, 0);
                    self.push_control(update);
                }
            }
            (OP_CREDIT_UPDATE, _) => {}
            (OP_CREDIT_REQUEST, _) => {
                let update = conn.header(OP_CREDIT_UPDATE, 0);
                self.push_control(update);
            }
            (OP_SHUTDOWN, State::Established) => {
                if hdr.flags & (SHUTDOWN_SEND | SHUTDOWN_RECV) == SHUTDOWN_SEND | SHUTDOWN_RECV {
                    self.close_from_guest(key);
                } else if hdr.flags & SHUTDOWN_SEND != 0 {
                    conn.shut_write_pending = true;
                    if conn.flush().is_err() {
                        self.reset(key);
                    }
                }
            }
            (OP_RST, _) => {
                self.take(key);
            }
            _ => self.reset(key),
        }
    }

    /// Answers a guest packet with RST, without touching any connection.
    pub fn refuse(&mut self, hdr: &Header) {
        self.push_control(rst_for(ConnKey {
            local: hdr.dst_port,
            peer: hdr.src_port,
        }));
    }

    /// A guest `connect()` to host port `key.local`: dial `<uds>_<port>`.
    fn connect_to_host_listener(&mut self, key: ConnKey, hdr: &Header) {
        if self.socket_count() >= MAX_CONNECTIONS {
            guest_warn!(
                self.log_limit,
                "vsock: {MAX_CONNECTIONS} connections open; refusing guest port {}",
                key.peer
            );
            self.push_control(rst_for(key));
            return;
        }
        let path = PathBuf::from(format!("{}_{}", self.uds_path.display(), key.local));
        let stream = match connect_nonblocking(&path) {
            Ok(stream) => stream,
            Err(e) => {
                log::debug!("vsock: guest connect to {}: {e}", path.display());
                self.push_control(rst_for(key));
                return;
            }
        };
        let fd = stream.as_raw_fd();
        if !self.watch(fd) {
            self.push_control(rst_for(key));
            return;
        }
        let mut conn = Connection::new(stream, key, State::Established);
        conn.peer_buf_alloc = hdr.buf_alloc;
        conn.peer_fwd_cnt = Wrapping(hdr.fwd_cnt);
        let response = conn.header(OP_RESPONSE, 0);
        self.push_control(response);
        self.by_fd.insert(fd, key);
        self.conns.insert(key, conn);
    }

    /// The guest closed both directions: acknowledge with RST and let the
    /// host socket finish writing what the guest sent.
    fn close_from_guest(&mut self, key: ConnKey) {
        self.push_control(rst_for(key));
        if let Some(mut conn) = self.take(key) {
            if conn.flush().is_ok() && !conn.to_host.is_empty() {
                self.draining.insert(conn.stream.as_raw_fd(), conn);
            }
        }
    }

    /// Drops a connection and tells the guest.
    fn reset(&mut self, key: ConnKey) {
        self.take(key);
        self.push_control(rst_for(key));
    }

    fn take(&mut self, key: ConnKey) -> Option<Connection> {
        let conn = self.conns.remove(&key)?;
        self.by_fd.remove(&conn.stream.as_raw_fd());
        if self.last_served == Some(key) {
            self.last_served = None;
        }
        Some(conn)
    }

    fn push_control(&mut self, hdr: Header) {
        if self.control.len() >= MAX_CONTROL_PACKETS {
            guest_warn!(
                self.log_limit,
                "vsock: control queue full; dropping {hdr:?}"
            );
            return;
        }
        self.control.push_back(hdr);
    }

    /// Whether [`Muxer::next_rx`] may have something for the guest.
    pub fn has_rx(&self) -> bool {
        !self.control.is_empty() || self.conns.values().any(Connection::can_send_to_guest)
    }

    /// The first connection after the one served last that has data and
    /// credit for the guest (round-robin, without allocating).
    fn next_sender(&self) -> Option<ConnKey> {
        let after = self.last_served.map_or(Bound::Unbounded, Bound::Excluded);
        self.conns
            .range((after, Bound::Unbounded))
            .chain(self.conns.iter())
            .find(|(_, c)| c.can_send_to_guest())
            .map(|(k, _)| *k)
    }

    /// The next packet for the guest. Data goes into `buf` (whose length is
    /// the rx buffer's room); the header's `len` says how much.
    pub fn next_rx(&mut self, buf: &mut [u8]) -> Option<Header> {
        if let Some(hdr) = self.control.pop_front() {
            return Some(hdr);
        }
        if buf.is_empty() {
            return None;
        }
        // Each pass either returns or clears `readable`, so this ends.
        while let Some(key) = self.next_sender() {
            let conn = self.conns.get_mut(&key).expect("next_sender found it");
            let room = buf.len().min(conn.peer_free() as usize);
            match conn.stream.read(&mut buf[..room]) {
                Ok(0) => {
                    // The host closed: tell the guest; its RST finds nothing.
                    let shutdown = conn.header(OP_SHUTDOWN, SHUTDOWN_SEND | SHUTDOWN_RECV);
                    self.take(key);
                    return Some(shutdown);
                }
                Ok(n) => {
                    let len = u32::try_from(n).expect("bounded by the rx buffer");
                    conn.rx_cnt += len;
                    let mut hdr = conn.header(OP_RW, 0);
                    hdr.len = len;
                    self.last_served = Some(key);
                    return Some(hdr);
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => conn.readable = false,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => {
                    log::debug!("vsock: host socket for {key:?}: {e}");
                    self.take(key);
                    return Some(rst_for(key));
                }
            }
        }
        None
    }

    /// Removes the listening socket's path so no new client can find it.
    pub fn remove_socket_file(&self) {
        let _ = std::fs::remove_file(&self.uds_path);
    }

    /// Closes every connection (device reset).
    pub fn reset_all(&mut self) {
        self.handshakes.clear();
        self.conns.clear();
        self.by_fd.clear();
        self.draining.clear();
        self.control.clear();
        self.last_served = None;
    }
}

impl Drop for Muxer {
    fn drop(&mut self) {
        self.reset_all();
        let _ = std::fs::remove_file(&self.uds_path);
    }
}

fn rst_for(key: ConnKey) -> Header {
    Header {
        src_port: key.local,
        dst_port: key.peer,
        op: OP_RST,
        ..Header::default()
    }
}

fn fd_data(fd: RawFd) -> u64 {
    u64::try_from(fd).expect("fds are non-negative")
}

/// Connects without blocking the event loop: a Unix listener with a full
/// backlog fails with EAGAIN instead of making us wait.
fn connect_nonblocking(path: &Path) -> nix::Result<UnixStream> {
    let fd: OwnedFd = socket(
        AddressFamily::Unix,
        SockType::Stream,
        SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC,
        None,
    )?;
    connect(fd.as_raw_fd(), &UnixAddr::new(path)?)?;
    Ok(UnixStream::from(fd))
}
