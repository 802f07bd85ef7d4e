//! VM configuration: plain data from the CLI, validated without I/O.
//!
//! # Design
//! [`VmConfig::validate`] checks only what can be known without touching the
//! host (sizes, counts, lengths). Anything that needs I/O (does the kernel file
//! exist, is it an ELF) is checked when the [`crate::vmm::Vmm`] is built, so
//! that the error can name the file and the fix.

use std::fmt;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::Arc;

pub use crate::boot::BootProtocol;
pub use cmdline::{BASE_CMDLINE, MAX_CMDLINE_LEN};

pub mod cmdline;

/// Guest memory of a VM, in MiB, when nothing sizes it: `unipod boot`,
/// `unipod run -- CMD`, `unipod snapshot create` and the containerd shim's
/// pod VMs. A warm-start snapshot serves one memory size.
pub const DEFAULT_MEM_MIB: u32 = 128;
/// Smallest guest memory that boots our kernel with an initramfs.
pub const MIN_MEM_MIB: u32 = 32;
/// Largest guest memory accepted; a sanity bound, not a hard limit of KVM.
pub const MAX_MEM_MIB: u32 = 64 * 1024;
/// The guest kernel is built with `NR_CPUS=2`; we allow a little headroom for
/// other kernels.
pub const MAX_VCPUS: u8 = 8;
/// Most disks (images and empty slots) a VM may have; each takes an IRQ and
/// a `virtio_mmio.device=` announcement.
pub const MAX_DISKS: usize = 8;

/// Errors in a [`VmConfig`].
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    /// Memory size out of range.
    #[error("--mem-mib {0}: must be between {MIN_MEM_MIB} and {MAX_MEM_MIB}")]
    MemSize(u32),
    /// vCPU count out of range.
    #[error("--vcpus {0}: must be between 1 and {MAX_VCPUS}")]
    VcpuCount(u8),
    /// Command line too long once our defaults are added.
    #[error("--cmdline: {0} bytes with unipod's defaults; the guest kernel accepts at most {MAX_CMDLINE_LEN}")]
    CmdlineTooLong(usize),
    /// Text that is not a MAC address (clap names the flag).
    #[error(
        "{0:?} is not a MAC address; write six hex bytes separated by colons, e.g. {DEFAULT_MAC}"
    )]
    BadMac(String),
    /// A MAC address no network card can have.
    #[error("--net-mac {0}: a multicast or all-zero address cannot be a NIC's; use a unicast one such as {DEFAULT_MAC}")]
    NotUnicastMac(MacAddr),
    /// Too many disks.
    #[error("--disk/--disk-slots: {0} disks in all; at most {MAX_DISKS}")]
    TooManyDisks(usize),
    /// A disk that is not read-only.
    #[error("disk {0}: writable disks are not supported; every disk is read-only")]
    WritableDisk(usize),
}

/// Where the guest's serial console goes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ConsoleOutput {
    /// The VMM's standard output.
    Stdout,
    /// A file, created or truncated.
    File(PathBuf),
}

/// Which CPUID the guest sees.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum CpuTemplate {
    /// Pick [`CpuTemplate::NestedPvm`] on nested-PVM hosts, else [`CpuTemplate::Host`].
    #[default]
    Auto,
    /// KVM's full supported CPUID.
    Host,
    /// A baseline that hides what KVM's emulator cannot run on nested PVM hosts.
    NestedPvm,
}

/// Everything needed to boot one VM.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VmConfig {
    /// Guest kernel: an ELF `vmlinux` or a bzImage.
    pub kernel: PathBuf,
    /// Optional initramfs (cpio, optionally compressed if the kernel supports it).
    pub initrd: Option<PathBuf>,
    /// Extra kernel command line, appended to unipod's defaults.
    pub extra_cmdline: String,
    /// Guest memory in MiB.
    pub mem_mib: u32,
    /// Number of vCPUs.
    pub vcpus: u8,
    /// Serial console destination.
    pub console: ConsoleOutput,
    /// CPUID template.
    pub cpu_template: CpuTemplate,
    /// How to enter the kernel.
    pub boot_protocol: BootProtocol,
    /// The vsock device, if any.
    pub vsock: Option<VsockConfig>,
    /// The virtio-net device, if any.
    pub net: Option<NetConfig>,
    /// The virtio-blk devices, in the guest's order (/dev/vda, vdb, ...).
    pub disks: Vec<BlockConfig>,
    /// The runtime API's socket (see [`crate::api`]), if any.
    pub api_sock: Option<PathBuf>,
    /// A virtio-balloon device for free page reporting: memory the guest
    /// frees goes back to the host.
    pub free_page_reporting: bool,
}

/// A read-only virtio-blk device: an image, or an empty slot that a
/// restored VM fills (see `devices::virtio::block`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BlockConfig {
    /// The image file, or `None` for a detached slot (capacity 0).
    pub path: Option<PathBuf>,
    /// Always true for now: the device refuses writes.
    pub read_only: bool,
}

impl BlockConfig {
    /// A read-only disk backed by the image at `path`.
    pub fn image(path: PathBuf) -> BlockConfig {
        BlockConfig {
            path: Some(path),
            read_only: true,
        }
    }

    /// A read-only slot with no image yet.
    pub fn slot() -> BlockConfig {
        BlockConfig {
            path: None,
            read_only: true,
        }
    }
}

/// A hybrid vsock device: the guest's CID and the host's Unix socket.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VsockConfig {
    /// Guest CID, at least 3.
    pub cid: u64,
    /// Host clients connect here; guest connections to port P dial `<uds>_P`.
    pub uds: PathBuf,
}

/// A virtio-net device: the MAC address the guest reads and the tap behind
/// it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NetConfig {
    /// The address in the device's config space. After a restore the guest
    /// keeps the one it read at boot.
    pub mac: MacAddr,
    /// The tap, or `None` for a detached device, which drops what the guest
    /// sends and receives nothing (the warm-start template runs like this).
    pub tap: Option<TapFd>,
}

/// The MAC address `--net-mac` defaults to: locally administered ("02"),
/// then "unip" in ASCII and 1.
pub const DEFAULT_MAC: MacAddr = MacAddr([0x02, 0x75, 0x6e, 0x69, 0x70, 0x01]);

/// An Ethernet MAC address; parses from and prints as `aa:bb:cc:dd:ee:ff`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MacAddr(pub [u8; 6]);

impl MacAddr {
    /// Whether a network card may have this address: not multicast (the low
    /// bit of the first byte) and not all zeros.
    pub fn is_unicast(&self) -> bool {
        self.0[0] & 1 == 0 && self.0 != [0; 6]
    }
}

impl FromStr for MacAddr {
    type Err = ConfigError;

    fn from_str(s: &str) -> Result<MacAddr, ConfigError> {
        let bad = || ConfigError::BadMac(s.to_string());
        let mut mac = [0u8; 6];
        let mut parts = s.split(':');
        for byte in &mut mac {
            let part = parts.next().ok_or_else(bad)?;
            if part.len() != 2 || !part.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(bad());
            }
            *byte = u8::from_str_radix(part, 16).map_err(|_| bad())?;
        }
        match parts.next() {
            Some(_) => Err(bad()),
            None => Ok(MacAddr(mac)),
        }
    }
}

impl fmt::Display for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let [a, b, c, d, e, g] = self.0;
        write!(f, "{a:02x}:{b:02x}:{c:02x}:{d:02x}:{e:02x}:{g:02x}")
    }
}

/// An open tap fd. Copies of a [`VmConfig`] share it; the device manager
/// gives the device a duplicate ([`TapFd::try_clone_owned`]), so the config
/// stays plain, clonable data.
#[derive(Clone, Debug)]
pub struct TapFd(Arc<OwnedFd>);

impl TapFd {
    /// Wraps an fd this process owns.
    pub fn new(fd: OwnedFd) -> TapFd {
        TapFd(Arc::new(fd))
    }

    /// A new fd for the same tap.
    pub fn try_clone_owned(&self) -> std::io::Result<OwnedFd> {
        self.0.try_clone()
    }
}

impl AsFd for TapFd {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.0.as_fd()
    }
}

/// The same fd, not merely the same number.
impl PartialEq for TapFd {
    fn eq(&self, other: &TapFd) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

impl Eq for TapFd {}

impl Default for VmConfig {
    fn default() -> Self {
        VmConfig {
            kernel: PathBuf::new(),
            initrd: None,
            extra_cmdline: String::new(),
            mem_mib: DEFAULT_MEM_MIB,
            vcpus: 1,
            console: ConsoleOutput::Stdout,
            cpu_template: CpuTemplate::Auto,
            boot_protocol: BootProtocol::Auto,
            vsock: None,
            net: None,
            disks: Vec::new(),
            api_sock: None,
            free_page_reporting: false,
        }
    }
}

impl VmConfig {
    /// The full kernel command line: our defaults, then the user's extras.
    pub fn cmdline(&self) -> String {
        let extra = self.extra_cmdline.trim();
        if extra.is_empty() {
            BASE_CMDLINE.to_string()
        } else {
            format!("{BASE_CMDLINE} {extra}")
        }
    }

    /// Checks everything that can be checked without I/O.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if !(MIN_MEM_MIB..=MAX_MEM_MIB).contains(&self.mem_mib) {
            return Err(ConfigError::MemSize(self.mem_mib));
        }
        if !(1..=MAX_VCPUS).contains(&self.vcpus) {
            return Err(ConfigError::VcpuCount(self.vcpus));
        }
        if self.disks.len() > MAX_DISKS {
            return Err(ConfigError::TooManyDisks(self.disks.len()));
        }
        if let Some(i) = self.disks.iter().position(|d| !d.read_only) {
            return Err(ConfigError::WritableDisk(i));
        }
        // Device announcements are appended later; keep room for them.
        let len = self.cmdline().len()
            + cmdline::CMDLINE_RESERVE
            + self.disks.len() * cmdline::CMDLINE_PER_DEVICE;
        if len > MAX_CMDLINE_LEN {
            return Err(ConfigError::CmdlineTooLong(len));
        }
        if let Some(net) = self.net.as_ref().filter(|n| !n.mac.is_unicast()) {
            return Err(ConfigError::NotUnicastMac(net.mac));
        }
        Ok(())
    }

    /// Guest memory size in bytes.
    pub fn mem_bytes(&self) -> u64 {
        u64::from(self.mem_mib) << 20
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_config_is_valid() {
        assert_eq!(VmConfig::default().validate(), Ok(()));
    }

    #[test]
    fn memory_bounds_are_enforced() {
        let cfg = VmConfig {
            mem_mib: MIN_MEM_MIB - 1,
            ..Default::default()
        };
        assert_eq!(cfg.validate(), Err(ConfigError::MemSize(MIN_MEM_MIB - 1)));
        let cfg = VmConfig {
            mem_mib: MAX_MEM_MIB + 1,
            ..Default::default()
        };
        assert_eq!(cfg.validate(), Err(ConfigError::MemSize(MAX_MEM_MIB + 1)));
    }

    #[test]
    fn vcpu_bounds_are_enforced() {
        let cfg = VmConfig {
            vcpus: 0,
            ..Default::default()
        };
        assert_eq!(cfg.validate(), Err(ConfigError::VcpuCount(0)));
        let cfg = VmConfig {
            vcpus: MAX_VCPUS + 1,
            ..Default::default()
        };
        assert_eq!(cfg.validate(), Err(ConfigError::VcpuCount(MAX_VCPUS + 1)));
    }

    #[test]
    fn cmdline_appends_user_args_after_defaults() {
        let cfg = VmConfig {
            extra_cmdline: "  init=/bin/sh ".into(),
            ..Default::default()
        };
        assert_eq!(cfg.cmdline(), format!("{BASE_CMDLINE} init=/bin/sh"));
        assert_eq!(VmConfig::default().cmdline(), BASE_CMDLINE);
    }

    #[test]
    fn mac_addresses_parse_print_and_must_be_unicast() {
        let mac: MacAddr = "02:aB:00:10:ff:09".parse().expect("valid");
        assert_eq!(mac, MacAddr([0x02, 0xab, 0x00, 0x10, 0xff, 0x09]));
        assert_eq!(mac.to_string(), "02:ab:00:10:ff:09");
        assert_eq!(DEFAULT_MAC.to_string().parse::<MacAddr>(), Ok(DEFAULT_MAC));
        for bad in [
            "",
            "02:00:00:00:00",
            "02:00:00:00:00:00:00",
            "2:00:00:00:00:00",
            "02-00-00-00-00-01",
            "02:00:00:00:00:0g",
            "+2:00:00:00:00:01",
        ] {
            assert_eq!(
                bad.parse::<MacAddr>(),
                Err(ConfigError::BadMac(bad.into())),
                "{bad:?}"
            );
        }
        let net = |mac| VmConfig {
            net: Some(NetConfig { mac, tap: None }),
            ..Default::default()
        };
        assert_eq!(net(DEFAULT_MAC).validate(), Ok(()));
        let multicast = MacAddr([0x03, 0, 0, 0, 0, 1]);
        assert_eq!(
            net(multicast).validate(),
            Err(ConfigError::NotUnicastMac(multicast))
        );
        assert_eq!(
            net(MacAddr([0; 6])).validate(),
            Err(ConfigError::NotUnicastMac(MacAddr([0; 6])))
        );
    }

    #[test]
    fn config_copies_share_one_tap_fd() {
        let (a, _b) = std::os::unix::net::UnixStream::pair().unwrap();
        let tap = TapFd::new(a.into());
        let copy = tap.clone();
        assert_eq!(tap, copy);
        assert_ne!(
            tap,
            TapFd::new(copy.try_clone_owned().unwrap()),
            "a duplicate is another fd"
        );
    }

    #[test]
    fn disks_are_bounded_and_read_only() {
        let disks = |n| VmConfig {
            disks: vec![BlockConfig::slot(); n],
            ..Default::default()
        };
        assert_eq!(disks(MAX_DISKS).validate(), Ok(()));
        assert_eq!(
            disks(MAX_DISKS + 1).validate(),
            Err(ConfigError::TooManyDisks(MAX_DISKS + 1))
        );
        let mut cfg = disks(2);
        cfg.disks[1] = BlockConfig {
            read_only: false,
            ..BlockConfig::image("img".into())
        };
        assert_eq!(cfg.validate(), Err(ConfigError::WritableDisk(1)));
    }

    #[test]
    fn the_cmdline_keeps_room_for_every_disk() {
        let longest_fitting = |disks| {
            let base = VmConfig {
                disks: vec![BlockConfig::slot(); disks],
                ..Default::default()
            };
            let room = MAX_CMDLINE_LEN
                - base.cmdline().len()
                - cmdline::CMDLINE_RESERVE
                - disks * cmdline::CMDLINE_PER_DEVICE;
            VmConfig {
                extra_cmdline: "x".repeat(room - 1),
                ..base
            }
        };
        for disks in [0, MAX_DISKS] {
            let mut cfg = longest_fitting(disks);
            assert_eq!(cfg.validate(), Ok(()), "{disks} disks");
            cfg.extra_cmdline.push('x');
            assert!(
                matches!(cfg.validate(), Err(ConfigError::CmdlineTooLong(_))),
                "{disks} disks"
            );
        }
    }

    #[test]
    fn overlong_cmdline_is_rejected() {
        let cfg = VmConfig {
            extra_cmdline: "x".repeat(MAX_CMDLINE_LEN),
            ..Default::default()
        };
        assert!(matches!(
            cfg.validate(),
            Err(ConfigError::CmdlineTooLong(_))
        ));
    }
}
