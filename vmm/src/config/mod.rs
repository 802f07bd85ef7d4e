//! VM configuration: plain data from the CLI, validated without I/O.
//!
//! # Design
//! [`VmConfig::validate`] checks only what can be known without touching the
//! host (sizes, counts, lengths). Anything that needs I/O (does the kernel file
//! exist, is it an ELF) is checked when the [`crate::vmm::Vmm`] is built, so
//! that the error can name the file and the fix.

use std::path::PathBuf;

pub use crate::boot::BootProtocol;

/// Smallest guest memory that boots our kernel with an initramfs.
pub const MIN_MEM_MIB: u32 = 32;
/// Largest guest memory accepted; a sanity bound, not a hard limit of KVM.
pub const MAX_MEM_MIB: u32 = 64 * 1024;
/// The guest kernel is built with `NR_CPUS=2`; we allow a little headroom for
/// other kernels.
pub const MAX_VCPUS: u8 = 8;
/// x86 Linux accepts a command line of at most 2048 bytes with its NUL.
pub const MAX_CMDLINE_LEN: usize = 2047;

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
}

/// A hybrid vsock device: the guest's CID and the host's Unix socket.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VsockConfig {
    /// Guest CID, at least 3.
    pub cid: u64,
    /// Host clients connect here; guest connections to port P dial `<uds>_P`.
    pub uds: PathBuf,
}

impl Default for VmConfig {
    fn default() -> Self {
        VmConfig {
            kernel: PathBuf::new(),
            initrd: None,
            extra_cmdline: String::new(),
            mem_mib: 128,
            vcpus: 1,
            console: ConsoleOutput::Stdout,
            cpu_template: CpuTemplate::Auto,
            boot_protocol: BootProtocol::Auto,
            vsock: None,
        }
    }
}

/// Kernel arguments unipod always passes.
///
/// `reboot=k` makes a guest reboot write the i8042 reset command, which ends
/// the VM. `panic=-1` turns a panic into an immediate reboot; the VMM has seen
/// the panic message on the console by then and reports it.
pub const BASE_CMDLINE: &str = "console=ttyS0 reboot=k panic=-1 quiet";

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
        // Device announcements are appended later; keep room for them.
        let len = self.cmdline().len() + crate::device_manager::CMDLINE_RESERVE;
        if len > MAX_CMDLINE_LEN {
            return Err(ConfigError::CmdlineTooLong(len));
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
