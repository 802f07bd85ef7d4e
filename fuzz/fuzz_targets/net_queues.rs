//! The net device's rx and tx queue handling over guest memory the fuzzer
//! fills, with a seqpacket socket pair as its tap: tx frames go to the peer,
//! and one frame taken from the input's tail (byte 1 × 64 bytes long)
//! waits on the peer for rx.
#![no_main]

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use libfuzzer_sys::fuzz_target;
use unipod_fuzz::{guest, interrupt};
use vmm::devices::virtio::net::Net;
use vmm::devices::virtio::VirtioDevice;

fuzz_target!(|data: &[u8]| {
    let Some(g) = guest(data, 2) else { return };
    let (ours, peer) = seqpacket_pair();
    // A frame for rx: the tail of the input, at most a jumbo frame's size.
    let frame_len = usize::from(g.choice) * 64;
    let frame = &data[data.len().saturating_sub(frame_len)..];
    // SAFETY: `frame` is a valid buffer of its length; `peer` is open.
    unsafe {
        libc::send(
            peer.as_raw_fd(),
            frame.as_ptr().cast(),
            frame.len(),
            libc::MSG_DONTWAIT,
        )
    };
    let mut net = Net::new([2, 0, 0, 0, 0, 1], Some(ours), interrupt()).expect("net device");
    // Features (offloads, merged rx buffers) from bytes 2 and 3, which the
    // rings overlap; VERSION_1 always.
    let wanted = u64::from(data.get(2).copied().unwrap_or(0)) << 5
        | u64::from(data.get(3).copied().unwrap_or(0)) << 13
        | 1 << 32;
    net.set_acked_features(net.features() & wanted);
    if net.activate(g.mem, g.queues).is_err() {
        return;
    }
    net.process();
    net.process();
});

/// A seqpacket socket pair, like the net unit tests' fake tap: one frame
/// per message.
fn seqpacket_pair() -> (OwnedFd, OwnedFd) {
    let mut fds = [0; 2];
    // SAFETY: `fds` has room for the two descriptors socketpair writes.
    let rc = unsafe { libc::socketpair(libc::AF_UNIX, libc::SOCK_SEQPACKET, 0, fds.as_mut_ptr()) };
    assert_eq!(rc, 0, "socketpair");
    // SAFETY: socketpair succeeded, so both fds are open and ours alone.
    unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) }
}
