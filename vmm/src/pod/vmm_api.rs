//! The host's client of a running VMM's runtime API (see [`crate::api`]
//! for the protocol): hot-attaching an image to a pod VM.

use std::fs::File;
use std::io::Read;
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use vmm_sys_util::sock_ctrl_msg::ScmSocket;

use crate::api::{parse_reply, ATTACH_DISK, MAX_REPLY_LEN};

/// How long the VMM has to answer; its event loop answers at once unless
/// it hangs.
const REPLY_TIMEOUT: Duration = Duration::from_secs(10);

/// Errors attaching an image through the API.
#[derive(Debug, thiserror::Error)]
pub enum VmmApiError {
    /// The socket cannot be reached or the exchange failed.
    #[error("cannot talk to the VMM's API socket {}; is the pod VM running?", .0.display())]
    Io(PathBuf, #[source] std::io::Error),
    /// The VMM refused.
    #[error("the VMM did not attach {}: {reason}", image.display())]
    Refused {
        /// The image.
        image: PathBuf,
        /// The VMM's message.
        reason: String,
    },
}

/// Hot-attaches the image at `image` to the next empty disk slot of the VM
/// whose API socket is `sock`; returns the disk's index (0 is `/dev/vda`).
/// The VMM keeps its own fd of the image, so the file may go once this
/// returns.
pub fn attach_disk(sock: &Path, image: &Path) -> Result<usize, VmmApiError> {
    let io = |e| VmmApiError::Io(sock.to_path_buf(), e);
    let file = File::open(image).map_err(|e| VmmApiError::Refused {
        image: image.to_path_buf(),
        reason: format!("cannot open it: {e}"),
    })?;
    let mut stream = UnixStream::connect(sock).map_err(io)?;
    stream.set_read_timeout(Some(REPLY_TIMEOUT)).map_err(io)?;
    stream.set_write_timeout(Some(REPLY_TIMEOUT)).map_err(io)?;
    stream
        .send_with_fd(ATTACH_DISK.as_bytes(), file.as_raw_fd())
        .map_err(|e| io(e.into()))?;
    let mut reply = Vec::new();
    (&mut stream)
        .take(MAX_REPLY_LEN as u64)
        .read_to_end(&mut reply)
        .map_err(io)?;
    parse_reply(&String::from_utf8_lossy(&reply)).map_err(|reason| VmmApiError::Refused {
        image: image.to_path_buf(),
        reason,
    })
}
