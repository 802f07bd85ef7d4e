//! The host link: the vsock listener, the connection and the outgoing queue.
//!
//! # Design
//!
//! All host I/O is nonblocking, so a host that stops reading can never stall
//! the reaper or the signal handling. Outgoing frames wait in an [`Outbox`]
//! that the main loop flushes when the socket is writable. The outbox is
//! bounded by backpressure, not by dropping: the main loop stops reading the
//! container's pipes (the container then blocks on write, as with any slow log
//! reader) and the host's requests while it is over its limits, and keeps at
//! most one unsent heartbeat.
//!
//! Events survive a dropped connection and go to the next host, after its
//! `Ready`; replies and heartbeats do not (they meant something only to the
//! old connection). A frame half-written to a dead connection is re-sent whole.

#![forbid(unsafe_code)]

use std::collections::VecDeque;
use std::io::{self, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};

use guest_agent::protocol::{encode_frame, AgentMessage, FrameDecoder, HostMessage, ProtocolError};
use nix::errno::Errno;
use nix::sys::socket::{
    accept4, bind, listen, recv, send, socket, AddressFamily, Backlog, MsgFlags, SockFlag,
    SockType, VsockAddr,
};

/// Bytes read from the host per `recv`.
const READ_CHUNK: usize = 16 * 1024;
/// `recv`s per readiness event, so one chatty host cannot starve the loop.
const READS_PER_WAKE: usize = 4;

/// Errors of the host link.
#[derive(Debug, thiserror::Error)]
pub enum HostError {
    /// The listening socket could not be set up (no virtio-vsock device?).
    #[error("cannot listen on vsock port {port}: is the VM's vsock device configured?")]
    Listen {
        /// The port.
        port: u32,
        /// The cause.
        #[source]
        source: Errno,
    },
    /// accept(2) failed.
    #[error("cannot accept a host connection")]
    Accept(#[source] Errno),
}

/// The vsock socket the host connects to.
#[derive(Debug)]
pub struct Listener(OwnedFd);

impl Listener {
    /// Listens on `(VMADDR_CID_ANY, port)`.
    pub fn bind(port: u32) -> Result<Self, HostError> {
        let err = |source| HostError::Listen { port, source };
        let fd = socket(
            AddressFamily::Vsock,
            SockType::Stream,
            SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC,
            None,
        )
        .map_err(err)?;
        bind(fd.as_raw_fd(), &VsockAddr::new(libc::VMADDR_CID_ANY, port)).map_err(err)?;
        listen(&fd, Backlog::new(4).map_err(err)?).map_err(err)?;
        Ok(Self(fd))
    }

    /// Accepts a pending connection, if any.
    pub fn accept(&self) -> Result<Option<HostConn>, HostError> {
        match accept4(&self.0, SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC) {
            Ok(fd) => Ok(Some(HostConn::new(fd))),
            // ECONNABORTED: the peer gave up while queued; nothing to serve.
            Err(Errno::EAGAIN | Errno::EINTR | Errno::ECONNABORTED) => Ok(None),
            Err(e) => Err(HostError::Accept(e)),
        }
    }
}

impl AsFd for Listener {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.0.as_fd()
    }
}

/// What the host sent, decoded.
#[derive(Debug)]
pub enum Incoming {
    /// A well-formed request.
    Request(Box<HostMessage>),
    /// A frame that is JSON but not a request this agent knows; `id` is set
    /// when it could be recovered, so the host can get an error reply.
    Unsupported {
        /// The request id, if the frame had one.
        id: Option<u64>,
        /// Why it was refused.
        error: String,
    },
}

/// One host connection (a stream socket), nonblocking.
#[derive(Debug)]
pub struct HostConn {
    fd: OwnedFd,
    decoder: FrameDecoder,
}

impl HostConn {
    /// Wraps a connected, nonblocking stream socket.
    pub fn new(fd: OwnedFd) -> Self {
        Self {
            fd,
            decoder: FrameDecoder::new(),
        }
    }

    /// Reads what the socket has into the decoder. Returns
    /// [`ProtocolError::Closed`] or [`ProtocolError::Truncated`] at EOF.
    pub fn read_available(&mut self) -> Result<(), ProtocolError> {
        let mut buf = vec![0; READ_CHUNK];
        for _ in 0..READS_PER_WAKE {
            match recv(self.fd.as_raw_fd(), &mut buf, MsgFlags::MSG_DONTWAIT) {
                Ok(0) => return Err(self.decoder.end_of_stream()),
                Ok(n) => self.decoder.push(&buf[..n]),
                Err(Errno::EAGAIN | Errno::EINTR) => return Ok(()),
                Err(e) => return Err(ProtocolError::Io(e.into())),
            }
        }
        Ok(())
    }

    /// The next buffered message. Framing errors are fatal for the
    /// connection; a frame that is not a known request is not.
    pub fn next_message(&mut self) -> Result<Option<Incoming>, ProtocolError> {
        let Some(value) = self.decoder.next_frame::<serde_json::Value>()? else {
            return Ok(None);
        };
        let id = value.get("id").and_then(serde_json::Value::as_u64);
        Ok(Some(match serde_json::from_value::<HostMessage>(value) {
            Ok(msg) => Incoming::Request(Box::new(msg)),
            Err(e) => Incoming::Unsupported {
                id,
                error: format!("unsupported request: {e}"),
            },
        }))
    }

    /// A `Write` for this socket that never blocks (nor raises SIGPIPE).
    pub fn writer(&self) -> SocketWriter<'_> {
        SocketWriter(self.fd.as_fd())
    }
}

impl AsFd for HostConn {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

/// Nonblocking `send` as [`Write`]; a full socket is `WouldBlock`.
#[derive(Debug)]
pub struct SocketWriter<'a>(BorrowedFd<'a>);

impl Write for SocketWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let flags = MsgFlags::MSG_DONTWAIT | MsgFlags::MSG_NOSIGNAL;
        send(self.0.as_raw_fd(), buf, flags).map_err(io::Error::from)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// What a queued frame is, which decides its fate on disconnect.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameKind {
    /// `Ready`: goes first on a connection; dropped on disconnect.
    Ready,
    /// A reply to the current connection's request; dropped on disconnect.
    Reply,
    /// A heartbeat; dropped on disconnect, at most one queued.
    Heartbeat,
    /// An event; kept for the next host.
    Event,
    /// `ContainerExited`: an event whose delivery the agent tracks.
    Exit,
}

#[derive(Debug)]
struct Queued {
    kind: FrameKind,
    bytes: Vec<u8>,
}

/// Frames waiting to be written to the host.
#[derive(Debug, Default)]
pub struct Outbox {
    frames: VecDeque<Queued>,
    /// Bytes of the front frame already written.
    head_written: usize,
    /// Unwritten bytes in total.
    pending: usize,
}

impl Outbox {
    /// Queues `msg`. `Ready` goes to the front (it must open a connection),
    /// everything else to the back. A second heartbeat is not queued while one
    /// is unsent: it would say nothing new.
    pub fn push(&mut self, kind: FrameKind, msg: &AgentMessage) -> Result<(), ProtocolError> {
        if kind == FrameKind::Heartbeat && self.frames.iter().any(|q| q.kind == kind) {
            return Ok(());
        }
        let bytes = encode_frame(msg)?;
        self.pending += bytes.len();
        let q = Queued { kind, bytes };
        if kind == FrameKind::Ready {
            debug_assert_eq!(
                self.head_written, 0,
                "Ready is queued on a fresh connection"
            );
            self.frames.push_front(q);
        } else {
            self.frames.push_back(q);
        }
        Ok(())
    }

    /// Unwritten bytes.
    pub fn pending_bytes(&self) -> usize {
        self.pending
    }

    /// True when everything was written.
    pub fn is_empty(&self) -> bool {
        self.frames.is_empty()
    }

    /// Writes as much as `w` takes without blocking. Returns how many
    /// [`FrameKind::Exit`] frames were completely written.
    pub fn write_to<W: Write>(&mut self, w: &mut W) -> io::Result<u64> {
        let mut exits_written = 0;
        while let Some(front) = self.frames.front() {
            match w.write(&front.bytes[self.head_written..]) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => {
                    self.head_written += n;
                    self.pending -= n;
                    if self.head_written == front.bytes.len() {
                        exits_written += u64::from(front.kind == FrameKind::Exit);
                        self.frames.pop_front();
                        self.head_written = 0;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => return Err(e),
            }
        }
        Ok(exits_written)
    }

    /// Forgets what only the lost connection cared about and rewinds a
    /// half-written frame, so the next host gets whole frames.
    pub fn on_disconnect(&mut self) {
        self.head_written = 0;
        self.frames
            .retain(|q| matches!(q.kind, FrameKind::Event | FrameKind::Exit));
        self.pending = self.frames.iter().map(|q| q.bytes.len()).sum();
    }
}

#[cfg(test)]
mod tests {
    use guest_agent::protocol::{read_frame, Event, Reply};

    use super::*;

    /// Accepts at most `room` bytes per call, then reports WouldBlock.
    struct Trickle {
        out: Vec<u8>,
        room: usize,
    }

    impl Write for Trickle {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            if self.room == 0 {
                return Err(io::ErrorKind::WouldBlock.into());
            }
            let n = buf.len().min(self.room);
            self.room -= n;
            self.out.extend_from_slice(&buf[..n]);
            Ok(n)
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    fn event(seq: u64) -> AgentMessage {
        AgentMessage::Event(Event::Heartbeat { seq })
    }

    fn exited() -> AgentMessage {
        AgentMessage::Event(Event::ContainerExited {
            name: "c".into(),
            exit_code: 0,
            reason: "Completed".into(),
            signal: None,
        })
    }

    fn ready() -> AgentMessage {
        AgentMessage::Event(Event::Ready {
            version: 1,
            agent: "t".into(),
        })
    }

    fn decode_all(mut bytes: &[u8]) -> Vec<AgentMessage> {
        let mut v = Vec::new();
        while !bytes.is_empty() {
            v.push(read_frame(&mut bytes).unwrap());
        }
        v
    }

    #[test]
    fn partial_writes_resume_where_they_stopped() {
        let mut ob = Outbox::default();
        ob.push(FrameKind::Event, &event(1)).unwrap();
        ob.push(FrameKind::Exit, &exited()).unwrap();
        let mut w = Trickle {
            out: Vec::new(),
            room: 7,
        };
        assert_eq!(ob.write_to(&mut w).unwrap(), 0);
        assert_eq!(
            ob.pending_bytes() + 7,
            encode_frame(&event(1)).unwrap().len() + encode_frame(&exited()).unwrap().len()
        );
        w.room = usize::MAX;
        assert_eq!(ob.write_to(&mut w).unwrap(), 1, "Exit frame completed");
        assert!(ob.is_empty());
        assert_eq!(ob.pending_bytes(), 0);
        assert_eq!(decode_all(&w.out), [event(1), exited()]);
    }

    #[test]
    fn ready_goes_first_and_only_events_survive_a_disconnect() {
        let mut ob = Outbox::default();
        ob.push(FrameKind::Event, &event(1)).unwrap();
        let reply = AgentMessage::Reply {
            id: 1,
            result: Ok(Reply::Pong),
        };
        ob.push(FrameKind::Reply, &reply).unwrap();
        ob.push(FrameKind::Heartbeat, &event(2)).unwrap();
        ob.push(FrameKind::Exit, &exited()).unwrap();
        // The old host read 3 bytes of the first frame, then went away.
        let mut w = Trickle {
            out: Vec::new(),
            room: 3,
        };
        ob.write_to(&mut w).unwrap();
        ob.on_disconnect();
        ob.push(FrameKind::Ready, &ready()).unwrap();
        let mut w = Trickle {
            out: Vec::new(),
            room: usize::MAX,
        };
        assert_eq!(ob.write_to(&mut w).unwrap(), 1);
        assert_eq!(decode_all(&w.out), [ready(), event(1), exited()]);
    }

    #[test]
    fn at_most_one_heartbeat_waits() {
        let mut ob = Outbox::default();
        ob.push(FrameKind::Heartbeat, &event(1)).unwrap();
        ob.push(FrameKind::Heartbeat, &event(2)).unwrap();
        let mut w = Trickle {
            out: Vec::new(),
            room: usize::MAX,
        };
        ob.write_to(&mut w).unwrap();
        assert_eq!(decode_all(&w.out), [event(1)]);
        ob.push(FrameKind::Heartbeat, &event(3)).unwrap();
        ob.write_to(&mut w).unwrap();
        assert_eq!(decode_all(&w.out), [event(1), event(3)]);
    }

    #[test]
    fn conn_decodes_requests_and_reports_unknown_ones_with_their_id() {
        use std::os::unix::net::UnixStream;
        let (a, mut b) = UnixStream::pair().unwrap();
        a.set_nonblocking(true).unwrap();
        let mut conn = HostConn::new(OwnedFd::from(a));
        let ping = HostMessage {
            id: 5,
            request: guest_agent::protocol::Request::Ping,
        };
        guest_agent::protocol::write_frame(&mut b, &ping).unwrap();
        let mut unknown = encode_frame(&serde_json::json!({"id": 6, "request": "fly"})).unwrap();
        b.write_all(&unknown).unwrap();
        conn.read_available().unwrap();
        assert!(matches!(conn.next_message().unwrap(), Some(Incoming::Request(m)) if *m == ping));
        assert!(matches!(
            conn.next_message().unwrap(),
            Some(Incoming::Unsupported { id: Some(6), .. })
        ));
        assert!(conn.next_message().unwrap().is_none());
        // Half a frame, then EOF: truncated.
        unknown.truncate(5);
        b.write_all(&unknown).unwrap();
        drop(b);
        let mut res = conn.read_available();
        while res.is_ok() {
            res = conn.read_available();
        }
        assert!(matches!(res, Err(ProtocolError::Truncated)), "{res:?}");
    }

    #[test]
    fn socket_writer_reports_a_full_socket_as_would_block() {
        use std::os::unix::net::UnixStream;
        let (a, _b) = UnixStream::pair().unwrap();
        let conn = HostConn::new(OwnedFd::from(a));
        let mut ob = Outbox::default();
        let big = AgentMessage::Event(Event::Output {
            name: "c".into(),
            stream: guest_agent::protocol::Stream::Stdout,
            data: vec![7; 64 * 1024],
            time: None,
        });
        for _ in 0..64 {
            ob.push(FrameKind::Event, &big).unwrap();
        }
        // Nobody reads `_b`: the write must stop instead of blocking.
        ob.write_to(&mut conn.writer()).unwrap();
        assert!(!ob.is_empty());
    }
}
