//! The tap backend: the few raw ioctls the device needs, behind safe calls.
//!
//! # Design
//! The fd arrives open and attached to an interface; this file only checks
//! its flags, fixes the vnet header size, makes it nonblocking and later
//! sets the receive offloads. A datagram or seqpacket socket is accepted in
//! place of a tap (each read is one frame, as with a tap): the unit tests use
//! a socketpair, and the tap-only ioctls are skipped for it.

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::raw::{c_int, c_short, c_uint, c_ulong};

use nix::fcntl::{fcntl, FcntlArg, FdFlag, OFlag};
use nix::sys::socket::{getsockopt, sockopt, SockType};
use vmm_sys_util::ioctl::{ioctl_with_mut_ref, ioctl_with_ref, ioctl_with_val};
use vmm_sys_util::{ioctl_ior_nr, ioctl_iow_nr};

use super::{NetError, VNET_HDR_LEN};

const TUNTAP: c_uint = 0x54; // 'T'
ioctl_iow_nr!(TUNSETOFFLOAD, TUNTAP, 208, c_uint);
ioctl_ior_nr!(TUNGETIFF, TUNTAP, 210, c_uint);
ioctl_iow_nr!(TUNSETVNETHDRSZ, TUNTAP, 216, c_int);

/// `struct ifreq` as TUNGETIFF fills it: the name, then the flags.
#[repr(C)]
#[derive(Default)]
struct IfReqFlags {
    name: [u8; 16],
    flags: c_short,
    _rest: [u8; 22],
}

const _: () = assert!(std::mem::size_of::<IfReqFlags>() == std::mem::size_of::<libc::ifreq>());

/// Takes ownership of `fd`, inherited open from the parent process (e.g.
/// `unipod boot --net-tap-fd 3`), and marks it close-on-exec.
///
/// # Safety
/// Nothing else in this process may own `fd` or use it afterwards: call this
/// once per fd number, before the process opens files of its own.
pub unsafe fn take_inherited_fd(fd: RawFd) -> Result<OwnedFd, NetError> {
    if (0..=2).contains(&fd) {
        return Err(NetError::StdioFd(fd));
    }
    // SAFETY: F_GETFD only reads the fd's flags and touches no memory; on a
    // closed or negative fd it fails with EBADF.
    if unsafe { libc::fcntl(fd, libc::F_GETFD) } < 0 {
        return Err(NetError::FdNotOpen(fd, io::Error::last_os_error()));
    }
    // SAFETY: `fd` is open (F_GETFD succeeded) and, per this function's
    // contract, owned by nothing else.
    let owned = unsafe { OwnedFd::from_raw_fd(fd) };
    fcntl(&owned, FcntlArg::F_SETFD(FdFlag::FD_CLOEXEC))
        .map_err(|e| NetError::FdNotOpen(fd, e.into()))?;
    Ok(owned)
}

/// The device's backend fd.
#[derive(Debug)]
pub(super) struct Tap {
    fd: OwnedFd,
    /// A real tap (not a socket): offloads can be set.
    is_tap: bool,
}

impl Tap {
    /// Checks `fd` and makes it nonblocking. A tap must carry `IFF_TAP`,
    /// `IFF_NO_PI` and `IFF_VNET_HDR`; its vnet header size is set to 12.
    pub(super) fn new(fd: OwnedFd) -> Result<Tap, NetError> {
        let is_tap = match tun_flags(fd.as_fd()) {
            Ok(flags) => {
                for (flag, name) in [
                    (libc::IFF_TAP, "IFF_TAP"),
                    (libc::IFF_NO_PI, "IFF_NO_PI"),
                    (libc::IFF_VNET_HDR, "IFF_VNET_HDR"),
                ] {
                    if c_int::from(flags) & flag == 0 {
                        return Err(NetError::TapFlags(name));
                    }
                }
                set_vnet_hdr_len(fd.as_fd())
                    .map_err(|e| NetError::TapIoctl("TUNSETVNETHDRSZ", e))?;
                true
            }
            Err(e) if e.raw_os_error() == Some(libc::EBADFD) => {
                return Err(NetError::NotAttached);
            }
            Err(e) if matches!(e.raw_os_error(), Some(libc::ENOTTY | libc::EINVAL)) => {
                match getsockopt(&fd, sockopt::SockType) {
                    Ok(SockType::Datagram | SockType::SeqPacket) => {}
                    _ => return Err(NetError::NotATap),
                }
                log::debug!("net: the backend is a socket, not a tap; offloads are not set");
                false
            }
            Err(e) => return Err(NetError::TapIoctl("TUNGETIFF", e)),
        };
        let flags = fcntl(&fd, FcntlArg::F_GETFL).map_err(NetError::Nonblocking)?;
        let flags = OFlag::from_bits_truncate(flags) | OFlag::O_NONBLOCK;
        fcntl(&fd, FcntlArg::F_SETFL(flags)).map_err(NetError::Nonblocking)?;
        Ok(Tap { fd, is_tap })
    }

    /// Tells a tap which offloads (`TUN_F_*`) the guest accepts in the
    /// frames it receives; a socket backend ignores this.
    pub(super) fn set_offload(&self, flags: c_uint) -> io::Result<()> {
        if !self.is_tap {
            return Ok(());
        }
        // SAFETY: TUNSETOFFLOAD takes its argument by value and writes no
        // memory; `self.fd` is an open tap.
        let ret = unsafe { ioctl_with_val(&self.fd, TUNSETOFFLOAD(), c_ulong::from(flags)) };
        if ret < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Reads one frame; `WouldBlock` when none is waiting.
    pub(super) fn read(&self, buf: &mut [u8]) -> io::Result<usize> {
        nix::unistd::read(&self.fd, buf).map_err(io::Error::from)
    }

    /// Writes one frame.
    pub(super) fn write(&self, buf: &[u8]) -> io::Result<usize> {
        nix::unistd::write(&self.fd, buf).map_err(io::Error::from)
    }
}

impl AsRawFd for Tap {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

/// The interface flags of a tun/tap fd.
fn tun_flags(fd: BorrowedFd<'_>) -> io::Result<c_short> {
    let mut ifr = IfReqFlags::default();
    // SAFETY: TUNGETIFF writes one `struct ifreq`, and `ifr` is exactly that
    // size (asserted above); it stays borrowed for the call only.
    let ret = unsafe { ioctl_with_mut_ref(&fd, TUNGETIFF(), &mut ifr) };
    if ret < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(ifr.flags)
}

fn set_vnet_hdr_len(fd: BorrowedFd<'_>) -> io::Result<()> {
    let len = c_int::try_from(VNET_HDR_LEN).expect("12 fits");
    // SAFETY: TUNSETVNETHDRSZ reads one int through the pointer, which
    // points at `len` for the duration of the call.
    let ret = unsafe { ioctl_with_ref(&fd, TUNSETVNETHDRSZ(), &len) };
    if ret < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}
