//! x86_64 support: the guest physical memory layout, CPUID, vCPU registers,
//! the MP table, and extended state saved for the guest kernel.

pub mod cpuid;
pub mod layout;
pub mod mptable;
pub mod regs;
pub mod xstate;

pub use cpuid::{detect_host, filter_cpuid, CpuidError, HostKind};
pub use mptable::{setup_mptable, MptableError};
pub use regs::{configure_vcpu, BootEntry, RegsError};

use vm_memory::GuestAddress;

/// Guest RAM ranges for `mem_bytes` of memory: low memory below the MMIO gap,
/// and the rest above 4 GiB.
pub fn ram_ranges(mem_bytes: u64) -> Vec<(GuestAddress, u64)> {
    let gap = layout::MMIO_GAP_START;
    if mem_bytes <= gap {
        vec![(GuestAddress(0), mem_bytes)]
    } else {
        vec![
            (GuestAddress(0), gap),
            (GuestAddress(layout::MMIO_GAP_END), mem_bytes - gap),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_memory_is_one_low_range() {
        assert_eq!(ram_ranges(128 << 20), vec![(GuestAddress(0), 128 << 20)]);
    }

    #[test]
    fn large_memory_skips_the_mmio_gap() {
        let total = layout::MMIO_GAP_START + (1 << 30);
        let ranges = ram_ranges(total);
        assert_eq!(ranges.len(), 2);
        assert_eq!(ranges[0], (GuestAddress(0), layout::MMIO_GAP_START));
        assert_eq!(ranges[1], (GuestAddress(layout::MMIO_GAP_END), 1 << 30));
    }
}
