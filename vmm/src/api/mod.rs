//! The VMM's runtime API: a Unix socket (`unipod boot --api-sock PATH`)
//! over which the host changes a running VM. Its one request hot-attaches a
//! disk image to the next empty disk slot, so that a container joining a
//! running pod VM can bring another image.
//!
//! # Protocol
//! One request per connection, one line each way:
//! - The client connects and sends `ATTACH-DISK\n` in one `sendmsg`, with
//!   exactly one file descriptor (`SCM_RIGHTS`): the image, a regular,
//!   non-empty file open for reading.
//! - The VMM gives it to the first empty disk slot and answers
//!   `OK <index>\n`, the disk's index (0 is `/dev/vda`, 1 `/dev/vdb`, ...),
//!   or `ERR <message>\n` when nothing was attached; then it closes the
//!   connection.
//!
//! The guest learns the new capacity from a config-change interrupt, which
//! its driver handles a little later: a guest must wait for the disk's size
//! to become non-zero before it mounts it (the guest agent does).
//!
//! # Design
//! - The image comes as an open fd, so the VMM needs no access to its path,
//!   and the host decides what the VMM may read.
//! - Served on the event-loop thread, with no thread of its own: the
//!   listener and each connection waiting for its request are event-manager
//!   events. Only `recvmsg` had to join the event loop's seccomp allowlist.
//! - The client is untrusted-ish (root on the host, but possibly buggy):
//!   a request is one bounded read of at most [`MAX_REQUEST_LEN`] bytes and
//!   one fd (more fds are all closed and the request fails), at most
//!   [`MAX_WAITING`] connections wait at once, and a bad request fails only
//!   itself.
//! - `SCM_RIGHTS` goes through nix's `recvmsg`, not hand-written `cmsg`
//!   code. Not vmm-sys-util's `ScmSocket::recv_with_fd`: given two fds, it
//!   keeps the first and leaves the second open with no owner (its buffer
//!   rounds up to room for two, then it reads only one).
//!
//! # Limitations
//! - No detach: a slot keeps its image for the VM's life, so a VM holds at
//!   most as many images as it has disks.
//! - The request must arrive in one segment; a client that splits it gets
//!   an error. [`attach_disk`](crate::pod::vmm_api::attach_disk) never does.
//! - The attached disk is not in a snapshot: a snapshot's disks come back
//!   as empty slots.

mod server;

use std::fs::File;
use std::os::fd::AsFd;

pub use server::ApiServer;

use crate::device_manager::{DeviceError, Disks};

/// The attach request, as sent.
pub const ATTACH_DISK: &str = "ATTACH-DISK\n";
/// The longest request the VMM reads.
pub const MAX_REQUEST_LEN: usize = 64;
/// The longest reply a client should accept.
pub const MAX_REPLY_LEN: usize = 1024;
/// Connections that may wait for their request at once; more are refused.
pub const MAX_WAITING: usize = 8;

/// Errors of the API socket itself.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The socket cannot be created.
    #[error("--api-sock {}: cannot listen (the path must not exist)", .0.display())]
    Listen(std::path::PathBuf, #[source] std::io::Error),
}

/// Why a request attached nothing; the client gets the message.
#[derive(Debug, thiserror::Error)]
pub enum RequestError {
    /// Not a request we know.
    #[error("unknown request {0:?}; the only request is {ATTACH_DISK:?}")]
    Unknown(String),
    /// The request came without its fd, or with more than one.
    #[error(
        "ATTACH-DISK needs exactly one file descriptor (SCM_RIGHTS): the image, open for reading"
    )]
    FdCount,
    /// The fd is not a regular file.
    #[error("the image is not a regular file")]
    NotRegular,
    /// The file is empty; the guest would wait for a size forever.
    #[error("the image is empty")]
    Empty,
    /// The fd is write-only.
    #[error("the image is not open for reading")]
    NotReadable,
    /// fstat or fcntl failed.
    #[error("cannot inspect the image fd")]
    Inspect(#[source] std::io::Error),
    /// The disks refused it (no free slot, ...).
    #[error(transparent)]
    Attach(#[from] DeviceError),
}

/// Serves one request: `request` is what the client sent, `fds` the files
/// that came with it (closed unless attached). Returns the disk's index.
pub fn handle(request: &[u8], fds: Vec<File>, disks: &Disks) -> Result<usize, RequestError> {
    if request != ATTACH_DISK.as_bytes() {
        let shown = String::from_utf8_lossy(&request[..request.len().min(MAX_REQUEST_LEN)]);
        return Err(RequestError::Unknown(shown.into_owned()));
    }
    let [image]: [File; 1] = fds.try_into().map_err(|_| RequestError::FdCount)?;
    check_image(&image)?;
    let (index, _sectors) = disks.attach_to_free_slot(image)?;
    Ok(index)
}

/// An image must be a non-empty regular file open for reading.
fn check_image(image: &File) -> Result<(), RequestError> {
    let meta = image.metadata().map_err(RequestError::Inspect)?;
    if !meta.is_file() {
        return Err(RequestError::NotRegular);
    }
    if meta.len() == 0 {
        return Err(RequestError::Empty);
    }
    let flags = nix::fcntl::fcntl(image.as_fd(), nix::fcntl::FcntlArg::F_GETFL)
        .map_err(|e| RequestError::Inspect(e.into()))?;
    if flags & libc::O_ACCMODE == libc::O_WRONLY {
        return Err(RequestError::NotReadable);
    }
    Ok(())
}

/// The reply line for `result`.
pub fn reply_line(result: &Result<usize, RequestError>) -> String {
    match result {
        Ok(index) => format!("OK {index}\n"),
        Err(e) => format!(
            "ERR {}\n",
            crate::error_chain::error_chain(e, ": ").replace('\n', " ")
        ),
    }
}

/// Reads a reply line: the disk index, or the VMM's message.
pub fn parse_reply(reply: &str) -> Result<usize, String> {
    let line = reply.strip_suffix('\n').unwrap_or(reply);
    if let Some(index) = line.strip_prefix("OK ") {
        return index
            .parse()
            .map_err(|_| format!("malformed reply {line:?}"));
    }
    match line.strip_prefix("ERR ") {
        Some(message) => Err(message.to_string()),
        None => Err(format!("malformed reply {line:?}")),
    }
}

#[cfg(test)]
mod tests;
