//! Initial vCPU state for the two boot protocols we support:
//! - Linux's 64-bit boot protocol: long mode, identity-mapped first GiB,
//!   `RSI` = zero page;
//! - PVH: 32-bit protected mode, paging off, `EBX` = `hvm_start_info`.
//!
//! Application processors only get CPUID, MSRs, FPU and LAPIC; the boot CPU
//! wakes them with INIT/SIPI through the in-kernel LAPIC.

use kvm_bindings::{kvm_fpu, kvm_msr_entry, kvm_regs, kvm_segment, kvm_sregs, Msrs};
use kvm_ioctls::VcpuFd;
use vm_memory::{Address, Bytes, GuestAddress, GuestMemoryMmap};

use super::layout::*;

/// Errors while setting up a vCPU's registers.
#[derive(Debug, thiserror::Error)]
pub enum RegsError {
    /// A KVM vCPU ioctl failed.
    #[error("cannot set vCPU {what}")]
    Kvm {
        /// Which state.
        what: &'static str,
        /// The ioctl's error.
        #[source]
        source: kvm_ioctls::Error,
    },
    /// KVM accepted only part of the MSR list.
    #[error("KVM refused MSR {0:#x}")]
    Msr(u32),
    /// Writing the GDT or page tables to guest memory failed.
    #[error("cannot write boot tables to guest memory")]
    GuestMemory(#[source] vm_memory::GuestMemoryError),
}

/// Where and how the boot vCPU starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BootEntry {
    /// Linux 64-bit boot protocol at this address.
    Linux64(GuestAddress),
    /// PVH (32-bit, paging off) at this address.
    Pvh(GuestAddress),
}

const X86_CR0_PE: u64 = 0x1;
const X86_CR0_ET: u64 = 0x10;
const X86_CR0_PG: u64 = 0x8000_0000;
const X86_CR4_PAE: u64 = 0x20;
const EFER_LME: u64 = 0x100;
const EFER_LMA: u64 = 0x400;

const MSR_IA32_SYSENTER_CS: u32 = 0x174;
const MSR_IA32_SYSENTER_ESP: u32 = 0x175;
const MSR_IA32_SYSENTER_EIP: u32 = 0x176;
const MSR_STAR: u32 = 0xc000_0081;
const MSR_LSTAR: u32 = 0xc000_0082;
const MSR_CSTAR: u32 = 0xc000_0083;
const MSR_SYSCALL_MASK: u32 = 0xc000_0084;
const MSR_KERNEL_GS_BASE: u32 = 0xc000_0102;
const MSR_IA32_TSC: u32 = 0x10;
const MSR_IA32_MISC_ENABLE: u32 = 0x1a0;
const MISC_ENABLE_FAST_STRING: u64 = 1;
const MSR_MTRR_DEF_TYPE: u32 = 0x2ff;
const MTRR_ENABLE_WRITEBACK: u64 = (1 << 11) | 6;

const APIC_LVT0: usize = 0x350;
const APIC_LVT1: usize = 0x360;
const APIC_MODE_NMI: u32 = 0x4;
const APIC_MODE_EXTINT: u32 = 0x7;

/// Sets up vCPU `index` (0 is the boot CPU) for `entry`.
pub fn configure_vcpu(
    vcpu: &VcpuFd,
    index: u8,
    entry: BootEntry,
    mem: &GuestMemoryMmap,
) -> Result<(), RegsError> {
    let kvm = |what| move |source| RegsError::Kvm { what, source };
    set_msrs(vcpu)?;
    let fpu = kvm_fpu {
        fcw: 0x37f,
        mxcsr: 0x1f80,
        ..Default::default()
    };
    vcpu.set_fpu(&fpu).map_err(kvm("FPU"))?;
    set_lint(vcpu)?;
    if index != 0 {
        return Ok(());
    }
    let mut sregs = vcpu.get_sregs().map_err(kvm("special registers"))?;
    let regs = match entry {
        BootEntry::Linux64(addr) => {
            write_gdt(mem, &GDT_64)?;
            write_identity_page_tables(mem)?;
            long_mode_sregs(&mut sregs);
            kvm_regs {
                rflags: 0x2,
                rip: addr.raw_value(),
                rsp: BOOT_STACK_POINTER,
                rbp: BOOT_STACK_POINTER,
                rsi: ZERO_PAGE_START,
                ..Default::default()
            }
        }
        BootEntry::Pvh(addr) => {
            write_gdt(mem, &GDT_32)?;
            protected_mode_sregs(&mut sregs);
            kvm_regs {
                rflags: 0x2,
                rip: addr.raw_value(),
                rbx: PVH_INFO_START,
                ..Default::default()
            }
        }
    };
    vcpu.set_sregs(&sregs).map_err(kvm("special registers"))?;
    vcpu.set_regs(&regs).map_err(kvm("registers"))?;
    Ok(())
}

fn set_msrs(vcpu: &VcpuFd) -> Result<(), RegsError> {
    let entries: Vec<kvm_msr_entry> = [
        (MSR_IA32_SYSENTER_CS, 0),
        (MSR_IA32_SYSENTER_ESP, 0),
        (MSR_IA32_SYSENTER_EIP, 0),
        (MSR_STAR, 0),
        (MSR_CSTAR, 0),
        (MSR_KERNEL_GS_BASE, 0),
        (MSR_SYSCALL_MASK, 0),
        (MSR_LSTAR, 0),
        (MSR_IA32_TSC, 0),
        (MSR_IA32_MISC_ENABLE, MISC_ENABLE_FAST_STRING),
        (MSR_MTRR_DEF_TYPE, MTRR_ENABLE_WRITEBACK),
    ]
    .iter()
    .map(|&(index, data)| kvm_msr_entry {
        index,
        data,
        ..Default::default()
    })
    .collect();
    let msrs = Msrs::from_entries(&entries).expect("11 entries fit in a kvm_msrs");
    let set = vcpu.set_msrs(&msrs).map_err(|source| RegsError::Kvm {
        what: "MSRs",
        source,
    })?;
    match entries.get(set) {
        Some(refused) => Err(RegsError::Msr(refused.index)),
        None => Ok(()),
    }
}

/// Routes LINT0 to the PIC (ExtINT) and LINT1 to NMI, as a BIOS would.
fn set_lint(vcpu: &VcpuFd) -> Result<(), RegsError> {
    let kvm = |source| RegsError::Kvm {
        what: "LAPIC",
        source,
    };
    let mut lapic = vcpu.get_lapic().map_err(kvm)?;
    for (offset, mode) in [(APIC_LVT0, APIC_MODE_EXTINT), (APIC_LVT1, APIC_MODE_NMI)] {
        let reg = read_apic_reg(&lapic.regs, offset);
        write_apic_reg(&mut lapic.regs, offset, (reg & !0x700) | (mode << 8));
    }
    vcpu.set_lapic(&lapic).map_err(kvm)
}

fn read_apic_reg(regs: &[std::os::raw::c_char; 1024], offset: usize) -> u32 {
    let bytes: [u8; 4] = std::array::from_fn(|i| regs[offset + i].to_ne_bytes()[0]);
    u32::from_le_bytes(bytes)
}

fn write_apic_reg(regs: &mut [std::os::raw::c_char; 1024], offset: usize, value: u32) {
    for (i, b) in value.to_le_bytes().into_iter().enumerate() {
        regs[offset + i] = std::os::raw::c_char::from_ne_bytes([b]);
    }
}

/// A GDT entry: flags (access byte and granularity nibble), base, limit.
#[derive(Clone, Copy)]
struct GdtEntry {
    flags: u16,
    base: u32,
    limit: u32,
}

impl GdtEntry {
    const fn new(flags: u16, base: u32, limit: u32) -> Self {
        GdtEntry { flags, base, limit }
    }

    fn encode(self) -> u64 {
        let (flags, base, limit) = (
            u64::from(self.flags),
            u64::from(self.base),
            u64::from(self.limit),
        );
        ((base & 0xff00_0000) << 32)
            | ((base & 0x00ff_ffff) << 16)
            | (limit & 0x0000_ffff)
            | ((limit & 0x000f_0000) << 32)
            | ((flags & 0xf0ff) << 40)
    }

    fn segment(self, selector_index: u16) -> kvm_segment {
        let flags = self.flags;
        let bit = |n: u16| u8::from(flags & (1 << n) != 0);
        let granular = bit(15) == 1;
        kvm_segment {
            base: u64::from(self.base),
            limit: if granular {
                (self.limit << 12) | 0xfff
            } else {
                self.limit
            },
            selector: selector_index * 8,
            type_: u8::try_from(flags & 0xf).expect("masked to 4 bits"),
            present: bit(7),
            dpl: u8::try_from((flags >> 5) & 0x3).expect("masked to 2 bits"),
            db: bit(14),
            s: bit(4),
            l: bit(13),
            g: bit(15),
            avl: bit(12),
            unusable: 0,
            padding: 0,
        }
    }
}

// Indexes: 0 null, 1 code, 2 data, 3 TSS.
const GDT_64: [GdtEntry; 4] = [
    GdtEntry::new(0, 0, 0),
    GdtEntry::new(0xa09b, 0, 0xfffff),
    GdtEntry::new(0xc093, 0, 0xfffff),
    GdtEntry::new(0x808b, 0, 0xfffff),
];
const GDT_32: [GdtEntry; 4] = [
    GdtEntry::new(0, 0, 0),
    GdtEntry::new(0xc09b, 0, 0xfffff),
    GdtEntry::new(0xc093, 0, 0xfffff),
    GdtEntry::new(0x008b, 0, 0x67),
];

fn write_gdt(mem: &GuestMemoryMmap, gdt: &[GdtEntry; 4]) -> Result<(), RegsError> {
    for (i, entry) in gdt.iter().enumerate() {
        let addr = GuestAddress(BOOT_GDT_START + 8 * i as u64);
        mem.write_obj(entry.encode(), addr)
            .map_err(RegsError::GuestMemory)?;
    }
    // An empty IDT: any exception before the kernel installs its own is a
    // triple fault, which the VMM reports.
    mem.write_obj(0u64, GuestAddress(BOOT_IDT_START))
        .map_err(RegsError::GuestMemory)
}

fn set_table_segments(sregs: &mut kvm_sregs, gdt: &[GdtEntry; 4]) {
    sregs.gdt.base = BOOT_GDT_START;
    sregs.gdt.limit = u16::try_from(std::mem::size_of_val(gdt) - 1).expect("4 entries");
    sregs.idt.base = BOOT_IDT_START;
    sregs.idt.limit = 7;
    let data = gdt[2].segment(2);
    sregs.cs = gdt[1].segment(1);
    sregs.ds = data;
    sregs.es = data;
    sregs.fs = data;
    sregs.gs = data;
    sregs.ss = data;
    sregs.tr = gdt[3].segment(3);
}

fn long_mode_sregs(sregs: &mut kvm_sregs) {
    set_table_segments(sregs, &GDT_64);
    sregs.cr3 = PML4_START;
    sregs.cr4 |= X86_CR4_PAE;
    sregs.cr0 |= X86_CR0_PE | X86_CR0_PG;
    sregs.efer |= EFER_LME | EFER_LMA;
}

fn protected_mode_sregs(sregs: &mut kvm_sregs) {
    set_table_segments(sregs, &GDT_32);
    sregs.cr0 = X86_CR0_PE | X86_CR0_ET;
    sregs.cr4 = 0;
    sregs.efer = 0;
}

/// Identity-maps the first GiB with 2 MiB pages, enough for the kernel, the
/// zero page and the command line during the kernel's first instructions.
fn write_identity_page_tables(mem: &GuestMemoryMmap) -> Result<(), RegsError> {
    let w = |val: u64, addr: u64| {
        mem.write_obj(val, GuestAddress(addr))
            .map_err(RegsError::GuestMemory)
    };
    w(PDPTE_START | 0x03, PML4_START)?;
    w(PDE_START | 0x03, PDPTE_START)?;
    for i in 0..512u64 {
        // Present, writable, 2 MiB page.
        w((i << 21) | 0x83, PDE_START + i * 8)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mem() -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 16 << 20)]).expect("test memory")
    }

    #[test]
    fn gdt_entries_encode_like_the_kernel_expects() {
        // Reference values from the Linux boot GDT (GDT_ENTRY macro).
        assert_eq!(GDT_64[1].encode(), 0x00af_9b00_0000_ffff);
        assert_eq!(GDT_64[2].encode(), 0x00cf_9300_0000_ffff);
        assert_eq!(GDT_32[1].encode(), 0x00cf_9b00_0000_ffff);
    }

    #[test]
    fn code64_segment_is_long_mode() {
        let cs = GDT_64[1].segment(1);
        assert_eq!(
            (cs.selector, cs.l, cs.db, cs.present, cs.type_),
            (8, 1, 0, 1, 0xb)
        );
        assert_eq!(cs.limit, 0xffff_ffff);
        let cs32 = GDT_32[1].segment(1);
        assert_eq!((cs32.l, cs32.db), (0, 1));
    }

    #[test]
    fn identity_map_covers_first_gib() {
        let m = mem();
        write_identity_page_tables(&m).expect("tables fit");
        assert_eq!(
            m.read_obj::<u64>(GuestAddress(PML4_START)).expect("read"),
            PDPTE_START | 3
        );
        assert_eq!(
            m.read_obj::<u64>(GuestAddress(PDE_START)).expect("read"),
            0x83
        );
        let last: u64 = m.read_obj(GuestAddress(PDE_START + 511 * 8)).expect("read");
        assert_eq!(last, (511 << 21) | 0x83);
    }

    #[test]
    fn long_mode_sregs_enable_paging() {
        let mut sregs = kvm_sregs::default();
        long_mode_sregs(&mut sregs);
        assert_eq!(
            sregs.cr0 & (X86_CR0_PE | X86_CR0_PG),
            X86_CR0_PE | X86_CR0_PG
        );
        assert_eq!(sregs.efer & (EFER_LME | EFER_LMA), EFER_LME | EFER_LMA);
        assert_eq!(sregs.cr3, PML4_START);
    }

    #[test]
    fn apic_register_roundtrip() {
        let mut regs = [0 as std::os::raw::c_char; 1024];
        write_apic_reg(&mut regs, APIC_LVT0, 0x0001_0700);
        assert_eq!(read_apic_reg(&regs, APIC_LVT0), 0x0001_0700);
        assert_eq!(read_apic_reg(&regs, APIC_LVT1), 0);
    }
}
