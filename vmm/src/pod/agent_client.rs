//! The host end of the agent link: a hybrid-vsock `CONNECT` through the
//! VMM's Unix socket, then the framed protocol from `guest_agent::protocol`.
//!
//! # Design
//! The guest may not be listening yet when we first connect (it is still
//! booting), in which case the VMM closes our socket; we retry until a
//! deadline. Once connected, a reader thread turns frames into channel
//! messages so the caller can wait on the agent, its own timers and the
//! VMM process together.

use std::io::{ErrorKind, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::mpsc::{self, Receiver};
use std::time::{Duration, Instant};

use guest_agent::protocol::{
    read_frame, write_frame, AgentMessage, Event, HostMessage, ProtocolError, Request,
    PROTOCOL_VERSION,
};

/// Retry quickly at first (a restored guest answers within milliseconds),
/// then back off for a booting one.
const FAST_RETRY_INTERVAL: Duration = Duration::from_millis(5);
const FAST_RETRIES_FOR: Duration = Duration::from_secs(2);
const RETRY_INTERVAL: Duration = Duration::from_millis(250);
/// How long the guest has to answer CONNECT once its vsock driver is up.
const CONNECT_REPLY_TIMEOUT: Duration = Duration::from_secs(5);

/// Errors on the agent link.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// The agent did not answer in time.
    #[error("the guest agent did not answer within {0} s (raise --agent-timeout-secs on slow hosts; the guest console log has details)")]
    Timeout(u64),
    /// The caller gave up (the VMM died, or the user interrupted).
    #[error("{0}")]
    Aborted(String),
    /// The agent speaks another protocol version.
    #[error("the guest agent speaks protocol version {agent}, unipod speaks {PROTOCOL_VERSION}; rebuild the guest image ('make images')")]
    Version {
        /// The agent's version.
        agent: u16,
    },
    /// The first message was not Ready.
    #[error("the guest agent's first message was {0:?}, expected Ready")]
    NotReady(Box<AgentMessage>),
    /// A frame could not be read or written.
    #[error("agent link: {0}")]
    Protocol(#[from] ProtocolError),
    /// Socket I/O failed.
    #[error("agent link I/O")]
    Io(#[from] std::io::Error),
}

/// A connected agent.
pub struct AgentLink {
    stream: UnixStream,
    next_id: u64,
    /// The agent's crate version, from its Ready event.
    pub agent_version: String,
}

impl AgentLink {
    /// Connects to guest `port` through the VMM's socket at `uds`, retrying
    /// until `deadline`. `check` runs between attempts; an `Err` from it
    /// (e.g. "the VMM exited") aborts.
    pub fn connect(
        uds: &Path,
        port: u32,
        deadline: Instant,
        check: &mut dyn FnMut() -> Result<(), String>,
    ) -> Result<AgentLink, AgentError> {
        let total = deadline.saturating_duration_since(Instant::now()).as_secs();
        let started = Instant::now();
        loop {
            check().map_err(AgentError::Aborted)?;
            if Instant::now() >= deadline {
                return Err(AgentError::Timeout(total));
            }
            match try_connect(uds, port, deadline) {
                Ok(Some(stream)) => return AgentLink::handshake(stream, deadline, total),
                Ok(None) => {}
                Err(e) => log::debug!("agent connect attempt: {e}"),
            }
            std::thread::sleep(if started.elapsed() < FAST_RETRIES_FOR {
                FAST_RETRY_INTERVAL
            } else {
                RETRY_INTERVAL
            });
        }
    }

    fn handshake(
        mut stream: UnixStream,
        deadline: Instant,
        total: u64,
    ) -> Result<AgentLink, AgentError> {
        let wait = deadline
            .saturating_duration_since(Instant::now())
            .max(Duration::from_secs(1));
        stream.set_read_timeout(Some(wait))?;
        let first: AgentMessage = match read_frame(&mut stream) {
            Ok(m) => m,
            Err(ProtocolError::Io(e)) if is_timeout(&e) => return Err(AgentError::Timeout(total)),
            Err(e) => return Err(e.into()),
        };
        stream.set_read_timeout(None)?;
        match first {
            AgentMessage::Event(Event::Ready { version, agent }) => {
                if version != PROTOCOL_VERSION {
                    return Err(AgentError::Version { agent: version });
                }
                Ok(AgentLink {
                    stream,
                    next_id: 1,
                    agent_version: agent,
                })
            }
            other => Err(AgentError::NotReady(Box::new(other))),
        }
    }

    /// Sends a request; returns its id.
    pub fn send(&mut self, request: Request) -> Result<u64, AgentError> {
        let id = self.next_id;
        self.next_id += 1;
        write_frame(&mut self.stream, &HostMessage { id, request })?;
        Ok(id)
    }

    /// Starts a thread that forwards every agent message (then the error that
    /// ended the stream) to the returned channel.
    pub fn subscribe(&self) -> Result<Receiver<Result<AgentMessage, ProtocolError>>, AgentError> {
        let mut reader = self.stream.try_clone()?;
        let (tx, rx) = mpsc::channel();
        std::thread::Builder::new()
            .name("agent-reader".into())
            .spawn(move || loop {
                let msg = read_frame(&mut reader);
                let end = msg.is_err();
                if tx.send(msg).is_err() || end {
                    return;
                }
            })?;
        Ok(rx)
    }
}

/// One CONNECT attempt. `Ok(None)`: the guest is not listening yet.
pub(crate) fn try_connect(
    uds: &Path,
    port: u32,
    deadline: Instant,
) -> std::io::Result<Option<UnixStream>> {
    if !uds.exists() {
        return Ok(None);
    }
    let mut stream = UnixStream::connect(uds)?;
    stream.write_all(format!("CONNECT {port}\n").as_bytes())?;
    // While the guest boots, the request waits in the VMM until the guest's
    // vsock driver starts; after that an answer comes quickly.
    let wait = deadline
        .saturating_duration_since(Instant::now())
        .max(CONNECT_REPLY_TIMEOUT);
    match read_line(&mut stream, wait)? {
        None => Ok(None),
        Some(line) if line.starts_with("OK ") => Ok(Some(stream)),
        Some(line) => Err(std::io::Error::other(format!(
            "unexpected reply to CONNECT: {line:?}"
        ))),
    }
}

/// Reads one short answer line (up to 32 bytes), a byte at a time so that
/// nothing after it is taken. `Ok(None)`: the peer closed, reset or said
/// nothing within `wait`.
pub(crate) fn read_line(
    stream: &mut UnixStream,
    wait: Duration,
) -> std::io::Result<Option<String>> {
    stream.set_read_timeout(Some(wait))?;
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    while !line.ends_with(b"\n") {
        match stream.read(&mut byte) {
            Ok(0) => return Ok(None),
            Ok(_) => line.push(byte[0]),
            Err(e) if is_timeout(&e) => return Ok(None),
            Err(e) if e.kind() == ErrorKind::ConnectionReset => return Ok(None),
            Err(e) => return Err(e),
        }
        if line.len() > 32 {
            return Err(std::io::Error::other("overlong answer line"));
        }
    }
    Ok(Some(String::from_utf8_lossy(&line).into_owned()))
}

fn is_timeout(e: &std::io::Error) -> bool {
    matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut)
}
