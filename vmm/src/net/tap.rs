//! A tap device: the host end of a pod's virtio-net device.
//!
//! # Design
//! The tap is created with `IFF_TAP | IFF_NO_PI | IFF_VNET_HDR` and a
//! 12-byte vnet header (`virtio_net_hdr_v1`, the layout virtio-net uses once
//! `VIRTIO_F_VERSION_1` is negotiated), so frames pass between the guest's
//! queues and the tap without reformatting. It is *not* persistent
//! (`TUNSETPERSIST` is never called): the kernel removes it when the last
//! file descriptor to it closes, so a VMM that is killed leaves no tap
//! behind. Attaching it to the bridge and bringing it up is netlink's job.
//!
//! This is the only file of [`crate::net`] with `unsafe`: two ioctls on the
//! tun file descriptor.
//!
//! # Limitations
//! Single queue; offloads (`TUNSETOFFLOAD`) are left to the virtio-net
//! device, which knows what the guest negotiated.

use std::fs::{File, OpenOptions};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::os::raw::{c_char, c_int, c_short, c_uint};
use std::os::unix::fs::OpenOptionsExt;

use vmm_sys_util::ioctl::{ioctl_with_mut_ref, ioctl_with_ref};

use super::{ifname_problem, NetError, IFNAMSIZ};

/// The tun/tap control device.
const TUN_DEVICE: &str = "/dev/net/tun";
/// The ioctl type of tun/tap (`'T'`).
const TUNTAP: c_uint = 0x54;
/// Size of `struct virtio_net_hdr_v1`.
pub const VNET_HDR_LEN: c_int = 12;

/// The tun ioctl numbers, from `<linux/if_tun.h>`; private, so the
/// functions the macro declares need no docs.
mod ioctls {
    use std::os::raw::c_int;

    use vmm_sys_util::ioctl_iow_nr;

    use super::TUNTAP;

    ioctl_iow_nr!(TUNSETIFF, TUNTAP, 202, c_int);
    ioctl_iow_nr!(TUNSETVNETHDRSZ, TUNTAP, 216, c_int);
}
use ioctls::{TUNSETIFF, TUNSETVNETHDRSZ};

/// `struct ifreq` as `TUNSETIFF` reads it: the name and the flags member of
/// the union, padded to the kernel's size.
#[repr(C)]
struct IfReqFlags {
    name: [c_char; IFNAMSIZ],
    flags: c_short,
    _pad: [u8; 22],
}

const _: () = assert!(std::mem::size_of::<IfReqFlags>() == std::mem::size_of::<libc::ifreq>());

/// An open, non-persistent tap. Closing the last descriptor to it removes
/// the interface.
#[derive(Debug)]
pub struct Tap {
    file: File,
    name: String,
}

impl Tap {
    /// Creates the tap `name`, or attaches to it if it exists as a tap with
    /// no other user and the same flags.
    pub fn create(name: &str) -> Result<Tap, NetError> {
        if let Some(reason) = ifname_problem(name) {
            return Err(NetError::InvalidTapName {
                name: name.to_owned(),
                reason,
            });
        }
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(TUN_DEVICE)
            .map_err(NetError::TunOpen)?;

        let mut req = IfReqFlags {
            name: [0; IFNAMSIZ],
            flags: c_short::try_from(libc::IFF_TAP | libc::IFF_NO_PI | libc::IFF_VNET_HDR)
                .expect("the tap flags fit the ifreq's short"),
            _pad: [0; 22],
        };
        for (dst, src) in req.name.iter_mut().zip(name.bytes()) {
            *dst = src as c_char;
        }
        let ioctl_error = |what, source: std::io::Error| match source.raw_os_error() {
            Some(libc::EBUSY) => NetError::TapBusy {
                name: name.to_owned(),
            },
            Some(libc::EPERM) => NetError::TapPermission {
                name: name.to_owned(),
            },
            _ => NetError::TapIoctl {
                name: name.to_owned(),
                what,
                source,
            },
        };
        // SAFETY: `file` is an open /dev/net/tun descriptor, and `req` is a
        // live, exclusively borrowed `struct ifreq` of the kernel's size
        // (asserted above) with a NUL-terminated name (at most 15 bytes were
        // copied into 16 zeroed ones); the kernel writes back at most
        // IFNAMSIZ bytes of name into it.
        let ret = unsafe { ioctl_with_mut_ref(&file, TUNSETIFF(), &mut req) };
        if ret < 0 {
            return Err(ioctl_error("TUNSETIFF", std::io::Error::last_os_error()));
        }
        // SAFETY: `file` is a tun descriptor now bound to a tap, and the
        // kernel reads one `int` through the valid reference.
        let ret = unsafe { ioctl_with_ref(&file, TUNSETVNETHDRSZ(), &VNET_HDR_LEN) };
        if ret < 0 {
            return Err(ioctl_error(
                "TUNSETVNETHDRSZ",
                std::io::Error::last_os_error(),
            ));
        }
        Ok(Tap {
            file,
            name: name.to_owned(),
        })
    }

    /// The interface name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The descriptor, for the virtio-net device to own; the tap lives as
    /// long as it (and any duplicate of it) is open.
    pub fn into_fd(self) -> OwnedFd {
        self.file.into()
    }
}

impl AsFd for Tap {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.file.as_fd()
    }
}

impl AsRawFd for Tap {
    fn as_raw_fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }
}

#[cfg(test)]
mod tests {
    use nix::sched::{unshare, CloneFlags};

    use super::*;

    /// The index of interface `name` in the calling thread's network
    /// namespace (`if_nametoindex` asks through a socket it opens, and a
    /// socket belongs to its creator thread's namespace), or `None`.
    fn ifindex(name: &str) -> Option<u32> {
        nix::net::if_::if_nametoindex(name).ok()
    }

    #[test]
    fn invalid_names_are_refused_before_any_syscall() {
        for name in ["", "a234567890123456", "a/b", "a b", "."] {
            let err = Tap::create(name).unwrap_err();
            assert!(
                matches!(err, NetError::InvalidTapName { .. }),
                "{name:?}: {err}"
            );
            assert!(err.to_string().starts_with("tap name "), "{err}");
        }
    }

    #[test]
    fn tap_exists_while_its_fd_is_open() {
        // Runs in its own thread so that the new network namespace is that
        // thread's alone.
        std::thread::spawn(|| {
            if let Err(e) = unshare(CloneFlags::CLONE_NEWNET) {
                eprintln!(
                    "SKIP tap_exists_while_its_fd_is_open: unshare(CLONE_NEWNET): {e}; needs root"
                );
                return;
            }
            let tap = match Tap::create("uptest0") {
                Ok(tap) => tap,
                Err(NetError::TapPermission { .. } | NetError::TunOpen(_)) => {
                    eprintln!("SKIP tap_exists_while_its_fd_is_open: cannot create taps here");
                    return;
                }
                Err(e) => panic!("{e}"),
            };
            assert_eq!(tap.name(), "uptest0");
            assert!(ifindex("uptest0").is_some(), "tap missing while open");

            // A second user of the same name is refused with its own error.
            let err = Tap::create("uptest0").unwrap_err();
            assert!(matches!(err, NetError::TapBusy { .. }), "{err}");
            assert!(err.to_string().contains("ip link del uptest0"), "{err}");

            let fd = tap.into_fd();
            assert!(ifindex("uptest0").is_some(), "into_fd keeps the tap");
            drop(fd);
            // Another test in this process may be between fork and exec,
            // holding a copy of the fd for a moment; give that a bounded
            // time to pass.
            let gone = (0..100).any(|_| {
                let gone = ifindex("uptest0").is_none();
                if !gone {
                    std::thread::sleep(std::time::Duration::from_millis(10));
                }
                gone
            });
            assert!(gone, "tap outlived its fd by more than 1 s");
        })
        .join()
        .unwrap();
    }
}
