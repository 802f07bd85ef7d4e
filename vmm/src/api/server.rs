//! The API socket on the event loop: accepts connections, reads each one's
//! request when it arrives, answers and closes.

use std::collections::HashMap;
use std::fs::File;
use std::io::{ErrorKind, IoSliceMut, Write};
use std::os::fd::{AsRawFd, FromRawFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};

use event_manager::{EventOps, Events, MutEventSubscriber};
use nix::errno::Errno;
use nix::sys::socket::{recvmsg, ControlMessageOwned, MsgFlags};
use vmm_sys_util::epoll::EventSet;

use super::{handle, reply_line, ApiError, MAX_REQUEST_LEN, MAX_WAITING};
use crate::device_manager::Disks;

/// The runtime API's listener and the connections waiting for a request.
pub struct ApiServer {
    listener: UnixListener,
    path: PathBuf,
    disks: Disks,
    waiting: HashMap<RawFd, UnixStream>,
}

impl ApiServer {
    /// Listens on `path`, which must not exist, for requests on `disks`.
    pub fn bind(path: &Path, disks: Disks) -> Result<ApiServer, ApiError> {
        let err = |e| ApiError::Listen(path.to_path_buf(), e);
        let listener = UnixListener::bind(path).map_err(err)?;
        let server = ApiServer {
            listener,
            path: path.to_path_buf(),
            disks,
            waiting: HashMap::new(),
        };
        // After the struct exists, so that a failure removes the socket file.
        server.listener.set_nonblocking(true).map_err(err)?;
        Ok(server)
    }

    fn accept(&mut self, ops: &mut EventOps) {
        loop {
            let stream = match self.listener.accept() {
                Ok((stream, _)) => stream,
                Err(e) if e.kind() == ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) => {
                    log::warn!("api: cannot accept a connection: {e}");
                    return;
                }
            };
            if self.waiting.len() >= MAX_WAITING {
                answer(
                    &stream,
                    &format!("ERR busy: {MAX_WAITING} connections wait already\n"),
                );
                continue;
            }
            if let Err(e) = stream.set_nonblocking(true) {
                log::warn!("api: cannot make a connection nonblocking: {e}");
                continue;
            }
            if let Err(e) = ops.add(Events::new(&stream, EventSet::IN)) {
                log::warn!("api: cannot watch a connection: {e}");
                continue;
            }
            self.waiting.insert(stream.as_raw_fd(), stream);
        }
    }

    /// Reads the request on `fd` once it is there, answers it and closes.
    fn serve(&mut self, fd: RawFd, ops: &mut EventOps) {
        let Some(stream) = self.waiting.get(&fd) else {
            return;
        };
        let mut buf = [0u8; MAX_REQUEST_LEN];
        let reply = match recv_request(stream, &mut buf) {
            Err(Errno::EAGAIN | Errno::EINTR) => return,
            // The client hung up without asking.
            Ok((0, fds)) if fds.is_empty() => None,
            Ok((n, fds)) => Some(handle(&buf[..n], fds, &self.disks)),
            Err(e) => {
                log::warn!("api: cannot read a request: {e}");
                None
            }
        };
        let stream = self.waiting.remove(&fd).expect("looked up above");
        let _ = ops.remove(Events::new(&stream, EventSet::IN));
        if let Some(reply) = reply {
            match &reply {
                Ok(index) => log::info!("api: attached an image as disk {index}"),
                Err(e) => log::warn!(
                    "api: refused a request: {}",
                    crate::error_chain::error_chain(e, ": ")
                ),
            }
            answer(&stream, &reply_line(&reply));
        }
    }
}

/// The most fds the kernel passes in one message (`SCM_MAX_FD`).
const SCM_MAX_FD: usize = 253;

/// Reads one request: its bytes, and every fd that came with it, owned (so
/// closed on drop).
fn recv_request(stream: &UnixStream, buf: &mut [u8]) -> nix::Result<(usize, Vec<File>)> {
    // Room for as many fds as a message can carry: none is ever cut off
    // (which would leave it open with no owner, and nix would not show it).
    let mut space = nix::cmsg_space!([RawFd; SCM_MAX_FD]);
    let mut iov = [IoSliceMut::new(buf)];
    let msg = recvmsg::<()>(
        stream.as_raw_fd(),
        &mut iov,
        Some(&mut space),
        MsgFlags::MSG_CMSG_CLOEXEC,
    )?;
    let mut files = Vec::new();
    for cmsg in msg.cmsgs()? {
        if let ControlMessageOwned::ScmRights(fds) = cmsg {
            // SAFETY: recvmsg has just installed these fds in this process
            // for this message; nothing else knows or owns them.
            files.extend(fds.into_iter().map(|fd| unsafe { File::from_raw_fd(fd) }));
        }
    }
    Ok((msg.bytes, files))
}

/// Sends `line` and lets the connection close; a client that went away
/// misses its answer.
fn answer(mut stream: &UnixStream, line: &str) {
    let _ = stream.write_all(line.as_bytes());
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

impl MutEventSubscriber for ApiServer {
    fn init(&mut self, ops: &mut EventOps) {
        if let Err(e) = ops.add(Events::new(&self.listener, EventSet::IN)) {
            log::error!("api: cannot watch {}: {e}", self.path.display());
        }
    }

    fn process(&mut self, events: Events, ops: &mut EventOps) {
        if events.fd() == self.listener.as_raw_fd() {
            self.accept(ops);
        } else {
            self.serve(events.fd(), ops);
        }
    }
}
