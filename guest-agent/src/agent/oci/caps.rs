//! A process's five capability sets, set between fork and exec as runc sets
//! them.
//!
//! # Design
//!
//! **Why raw `capset`/`prctl` and not the `caps` crate.** `caps` sets one
//! set per call, each a `capget` plus a `capset`; in this guest every
//! syscall runs through an emulated kernel entry (docs/NESTED-KVM.md), so
//! the three sets go in one `capset(2)` here. The bounding set is dropped
//! with `PR_CAPBSET_DROP` and the ambient set raised with `PR_CAP_AMBIENT`,
//! one `prctl` per capability either way. The two calls are the only unsafe
//! code, in [`capset`] and [`prctl`].
//!
//! Capability numbers are the kernel's (`linux/capability.h`); the guest
//! kernel (6.1) knows 0 to [`LAST_CAP`].

use oci_spec::runtime::{Capabilities, Capability, LinuxCapabilities};

/// The highest capability number of the guest kernel (`CAP_CHECKPOINT_RESTORE`).
pub const LAST_CAP: u32 = 40;

/// `_LINUX_CAPABILITY_VERSION_3`: two 32-bit words per set.
const VERSION_3: u32 = 0x2008_0522;

/// The kernel's number of `cap`.
pub fn number(cap: Capability) -> u32 {
    use Capability as C;
    match cap {
        C::Chown => 0,
        C::DacOverride => 1,
        C::DacReadSearch => 2,
        C::Fowner => 3,
        C::Fsetid => 4,
        C::Kill => 5,
        C::Setgid => 6,
        C::Setuid => 7,
        C::Setpcap => 8,
        C::LinuxImmutable => 9,
        C::NetBindService => 10,
        C::NetBroadcast => 11,
        C::NetAdmin => 12,
        C::NetRaw => 13,
        C::IpcLock => 14,
        C::IpcOwner => 15,
        C::SysModule => 16,
        C::SysRawio => 17,
        C::SysChroot => 18,
        C::SysPtrace => 19,
        C::SysPacct => 20,
        C::SysAdmin => 21,
        C::SysBoot => 22,
        C::SysNice => 23,
        C::SysResource => 24,
        C::SysTime => 25,
        C::SysTtyConfig => 26,
        C::Mknod => 27,
        C::Lease => 28,
        C::AuditWrite => 29,
        C::AuditControl => 30,
        C::Setfcap => 31,
        C::MacOverride => 32,
        C::MacAdmin => 33,
        C::Syslog => 34,
        C::WakeAlarm => 35,
        C::BlockSuspend => 36,
        C::AuditRead => 37,
        C::Perfmon => 38,
        C::Bpf => 39,
        C::CheckpointRestore => 40,
    }
}

/// The five sets as bit masks (bit N is capability N).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CapSets {
    /// Bounding.
    pub bounding: u64,
    /// Effective.
    pub effective: u64,
    /// Permitted.
    pub permitted: u64,
    /// Inheritable.
    pub inheritable: u64,
    /// Ambient.
    pub ambient: u64,
}

fn mask(set: &Option<Capabilities>) -> u64 {
    set.iter().flatten().fold(0, |m, c| m | 1u64 << number(*c))
}

impl CapSets {
    /// The sets of `process.capabilities`; a set the spec leaves out is empty.
    pub fn from_spec(c: &LinuxCapabilities) -> Self {
        Self {
            bounding: mask(c.bounding()),
            effective: mask(c.effective()),
            permitted: mask(c.permitted()),
            inheritable: mask(c.inheritable()),
            ambient: mask(c.ambient()),
        }
    }

    /// Drops every capability outside the bounding set (needs
    /// `CAP_SETPCAP`, so before the user switch).
    pub fn drop_bounding(&self) -> nix::Result<()> {
        for cap in 0..=LAST_CAP {
            if self.bounding & (1 << cap) == 0 {
                prctl(libc::PR_CAPBSET_DROP, u64::from(cap))?;
            }
        }
        Ok(())
    }

    /// Sets the effective, permitted and inheritable sets in one `capset`,
    /// then raises the ambient ones.
    pub fn apply(&self) -> nix::Result<()> {
        let word = |m: u64, i: u32| u32::try_from((m >> (32 * i)) & 0xffff_ffff).unwrap_or(0);
        let data = [0, 1].map(|i| CapData {
            effective: word(self.effective, i),
            permitted: word(self.permitted, i),
            inheritable: word(self.inheritable, i),
        });
        capset(&data)?;
        for cap in 0..=LAST_CAP {
            if self.ambient & (1 << cap) != 0 {
                prctl(
                    libc::PR_CAP_AMBIENT,
                    [libc::PR_CAP_AMBIENT_RAISE as u64, u64::from(cap)],
                )?;
            }
        }
        Ok(())
    }
}

/// `struct __user_cap_header_struct`.
#[repr(C)]
struct CapHeader {
    version: u32,
    pid: libc::c_int,
}

/// `struct __user_cap_data_struct`.
#[repr(C)]
#[derive(Clone, Copy)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

/// `capset(2)` of the calling thread, version 3.
fn capset(data: &[CapData; 2]) -> nix::Result<()> {
    let mut header = CapHeader {
        version: VERSION_3,
        pid: 0,
    };
    // SAFETY: version 3 takes a header and an array of exactly two data
    // structs, both `repr(C)` with the kernel's layout, valid for the call.
    let r = unsafe {
        libc::syscall(
            libc::SYS_capset,
            &mut header as *mut CapHeader,
            data.as_ptr(),
        )
    };
    nix::errno::Errno::result(r).map(drop)
}

/// `prctl(option, args...)` with integer arguments only.
fn prctl(option: libc::c_int, args: impl Into<PrctlArgs>) -> nix::Result<()> {
    let a = args.into().0;
    // SAFETY: the options used here (PR_CAPBSET_DROP, PR_CAP_AMBIENT) take
    // integers only and touch no memory of the caller.
    let r = unsafe { libc::prctl(option, a[0], a[1], 0u64, 0u64) };
    nix::errno::Errno::result(r).map(drop)
}

/// Up to two integer arguments of [`prctl`].
struct PrctlArgs([u64; 2]);

impl From<u64> for PrctlArgs {
    fn from(a: u64) -> Self {
        Self([a, 0])
    }
}

impl From<[u64; 2]> for PrctlArgs {
    fn from(a: [u64; 2]) -> Self {
        Self(a)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sets_become_masks_of_kernel_numbers() {
        let caps: LinuxCapabilities = serde_json::from_value(serde_json::json!({
            "bounding": ["CAP_CHOWN", "CAP_NET_RAW", "CAP_CHECKPOINT_RESTORE"],
            "effective": ["CAP_NET_RAW"]
        }))
        .unwrap();
        let s = CapSets::from_spec(&caps);
        assert_eq!(s.bounding, 1 | 1 << 13 | 1 << 40);
        assert_eq!(s.effective, 1 << 13);
        assert_eq!((s.permitted, s.inheritable, s.ambient), (0, 0, 0));
    }
}
