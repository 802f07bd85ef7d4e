//! The guest physical memory map. Low addresses follow Firecracker's layout,
//! which Linux's 64-bit and PVH boot paths both accept.

/// The boot GDT.
pub const BOOT_GDT_START: u64 = 0x500;
/// The boot IDT (empty; the kernel installs its own).
pub const BOOT_IDT_START: u64 = 0x520;
/// PVH `hvm_start_info`.
pub const PVH_INFO_START: u64 = 0x6000;
/// PVH module list (the initrd), right after the start info.
pub const PVH_MODLIST_START: u64 = 0x6040;
/// PVH memory map. PVH does not use the zero page, so it may share it.
pub const PVH_MEMMAP_START: u64 = 0x7000;
/// Linux zero page (`boot_params`).
pub const ZERO_PAGE_START: u64 = 0x7000;
/// Initial stack pointer for the 64-bit entry.
pub const BOOT_STACK_POINTER: u64 = 0x8ff0;
/// Identity-mapping page tables: PML4, PDPT, PD.
pub const PML4_START: u64 = 0x9000;
/// See [`PML4_START`].
pub const PDPTE_START: u64 = 0xa000;
/// See [`PML4_START`].
pub const PDE_START: u64 = 0xb000;
/// Kernel command line.
pub const CMDLINE_START: u64 = 0x20000;
/// Room for the command line, with its NUL.
pub const CMDLINE_MAX_SIZE: usize = 2048;
/// Start of the EBDA, where the MP table goes; RAM in the e820 map ends here.
pub const EBDA_START: u64 = 0x9fc00;
/// Where the kernel expects to be loaded and where high RAM starts.
pub const HIMEM_START: u64 = 0x10_0000;
/// The MMIO gap below 4 GiB: no RAM here.
pub const MMIO_GAP_START: u64 = 0xc000_0000;
/// End of the MMIO gap.
pub const MMIO_GAP_END: u64 = 0x1_0000_0000;
/// Our devices' MMIO window, inside the gap and clear of the IOAPIC/LAPIC.
pub const DEVICE_MMIO_START: u64 = 0xd000_0000;
/// The in-kernel IOAPIC's address.
pub const IOAPIC_START: u64 = 0xfec0_0000;
/// The local APIC's address.
pub const APIC_START: u64 = 0xfee0_0000;
/// First IRQ line handed to devices (0-4 are timer, keyboard, cascade, serial).
pub const IRQ_BASE: u32 = 5;
/// Last IRQ line of the IOAPIC.
pub const IRQ_MAX: u32 = 23;
