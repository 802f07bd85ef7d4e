//! The guest kernel's command line: what unipod always passes, what it adds
//! for the host, and the room it keeps for device announcements.
//!
//! # Design
//! Below everything that builds or checks a command line: [`super`]'s
//! validation, the device manager's `virtio_mmio.device=` announcements,
//! the VMM's boot, and the snapshot key (which must change when the host's
//! switches do).

use super::CpuTemplate;

/// x86 Linux accepts a command line of at most 2048 bytes with its NUL.
pub const MAX_CMDLINE_LEN: usize = 2047;

/// Kernel arguments unipod always passes.
///
/// `reboot=k` makes a guest reboot write the i8042 reset command, which ends
/// the VM. `panic=-1` turns a panic into an immediate reboot; the VMM has seen
/// the panic message on the console by then and reports it.
pub const BASE_CMDLINE: &str = "console=ttyS0 reboot=k panic=-1 quiet";

/// Command-line bytes kept free for device announcements and the
/// host-specific switches appended at boot.
pub const CMDLINE_RESERVE: usize = 512;
/// Command-line bytes one more virtio device needs, on top of
/// [`CMDLINE_RESERVE`]: `virtio_mmio.device=4K@0xd000a000:14` and a space.
pub const CMDLINE_PER_DEVICE: usize = 40;

/// Kernel switches for nested PVM hosts. The CPUID template alone is not
/// enough there: some of the kernel's early `cpuid` reads see the host CPU, so
/// the features are also turned off by name (see docs/NESTED-KVM.md).
/// `erms` and `fsrm` go too: with them the kernel clears and copies memory
/// with `rep stosb`/`rep movsb`, which KVM's emulator runs one byte per
/// step; without, with 8-byte moves. `clocksource=kvm-clock`: a restored
/// TSC does not take effect under PVM, so after a restore the TSC
/// clocksource jumps by the snapshot's age and the guest pays a timekeeping
/// catch-up per second of it; kvm-clock resumes from the saved KVM clock.
/// `vmm_xstate=` (kernel patch 0005): the VMM saves the AVX state a
/// `noxsave` kernel cannot, for guest user mode, which runs on the real CPU
/// (`arch::xstate`).
pub const NESTED_PVM_CMDLINE: &str = "noxsave vmm_xstate=0xc0000000 nosmap nosmep \
     clearcpuid=smap,smep,umip,fsgsbase,popcnt,cx16,erms,fsrm clocksource=kvm-clock";

/// The kernel switches unipod adds for `template`'s host.
pub fn host_cmdline(template: CpuTemplate) -> &'static str {
    match template {
        CpuTemplate::NestedPvm => NESTED_PVM_CMDLINE,
        _ => "",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nested_pvm_guests_get_the_extended_state_switch() {
        assert!(NESTED_PVM_CMDLINE
            .split_whitespace()
            .any(|w| w == crate::arch::xstate::CMDLINE_SWITCH));
    }
}
