//! The Intel MultiProcessor table, which tells a guest without ACPI about its
//! CPUs, the IOAPIC and the IRQ routing.
//!
//! # Design
//! The table is built as plain little-endian bytes rather than `#[repr(C)]`
//! structs, so no `unsafe impl ByteValued` is needed; the layouts are the
//! MP specification 1.4's, and the tests check sizes and checksums.

#![forbid(unsafe_code)]

use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::layout::{APIC_START, EBDA_START, IOAPIC_START, IRQ_MAX};

/// Errors while writing the MP table.
#[derive(Debug, thiserror::Error)]
pub enum MptableError {
    /// The table does not fit below 640 KiB.
    #[error("MP table for {0} vCPUs does not fit in the EBDA")]
    TooLarge(u8),
    /// Writing guest memory failed.
    #[error("cannot write the MP table to guest memory")]
    GuestMemory(#[source] vm_memory::GuestMemoryError),
}

const APIC_VERSION: u8 = 0x14;
const IOAPIC_VERSION: u8 = 0x11;
const CPU_ENABLED: u8 = 1;
const CPU_BOOT_PROCESSOR: u8 = 2;
const ENTRY_PROCESSOR: u8 = 0;
const ENTRY_BUS: u8 = 1;
const ENTRY_IOAPIC: u8 = 2;
const ENTRY_IO_INTERRUPT: u8 = 3;
const ENTRY_LOCAL_INTERRUPT: u8 = 4;
const INT_TYPE_INT: u8 = 0;
const INT_TYPE_NMI: u8 = 1;
const INT_TYPE_EXTINT: u8 = 3;
const FLOATING_POINTER_LEN: usize = 16;
const HEADER_LEN: usize = 44;
/// The table must end before the legacy VGA hole at 640 KiB.
const EBDA_END: u64 = 0xa0000;

/// Writes the MP floating pointer and configuration table at the EBDA.
pub fn setup_mptable(mem: &GuestMemoryMmap, vcpus: u8) -> Result<(), MptableError> {
    let bytes = build(vcpus);
    if EBDA_START + bytes.len() as u64 > EBDA_END {
        return Err(MptableError::TooLarge(vcpus));
    }
    mem.write_slice(&bytes, GuestAddress(EBDA_START))
        .map_err(MptableError::GuestMemory)
}

fn checksum(bytes: &[u8]) -> u8 {
    0u8.wrapping_sub(bytes.iter().fold(0u8, |acc, b| acc.wrapping_add(*b)))
}

fn build(vcpus: u8) -> Vec<u8> {
    let ioapic_id = vcpus + 1;
    let mut entries = Vec::new();
    for cpu in 0..vcpus {
        let flags = CPU_ENABLED | if cpu == 0 { CPU_BOOT_PROCESSOR } else { 0 };
        entries.extend_from_slice(&[ENTRY_PROCESSOR, cpu, APIC_VERSION, flags]);
        entries.extend_from_slice(&0x600u32.to_le_bytes()); // signature: family 6
        entries.extend_from_slice(&0x201u32.to_le_bytes()); // features: FPU, APIC
        entries.extend_from_slice(&[0; 8]);
    }
    entries.extend_from_slice(&[ENTRY_BUS, 0]);
    entries.extend_from_slice(b"ISA   ");
    entries.extend_from_slice(&[ENTRY_IOAPIC, ioapic_id, IOAPIC_VERSION, 1]);
    entries.extend_from_slice(
        &u32::try_from(IOAPIC_START)
            .expect("below 4 GiB")
            .to_le_bytes(),
    );
    for irq in 0..=u8::try_from(IRQ_MAX).expect("IRQ_MAX fits a byte") {
        entries.extend_from_slice(&[
            ENTRY_IO_INTERRUPT,
            INT_TYPE_INT,
            0,
            0,
            0,
            irq,
            ioapic_id,
            irq,
        ]);
    }
    entries.extend_from_slice(&[ENTRY_LOCAL_INTERRUPT, INT_TYPE_EXTINT, 0, 0, 0, 0, 0xff, 0]);
    entries.extend_from_slice(&[ENTRY_LOCAL_INTERRUPT, INT_TYPE_NMI, 0, 0, 0, 0, 0xff, 1]);
    let entry_count = u16::from(vcpus) + 2 + u16::try_from(IRQ_MAX).expect("small") + 1 + 2;

    let table_addr = EBDA_START + FLOATING_POINTER_LEN as u64;
    let table_len = u16::try_from(HEADER_LEN + entries.len()).expect("bounded by vCPU count");
    let mut table = Vec::with_capacity(usize::from(table_len));
    table.extend_from_slice(b"PCMP");
    table.extend_from_slice(&table_len.to_le_bytes());
    table.extend_from_slice(&[4, 0]); // spec 1.4, checksum below
    table.extend_from_slice(b"UNIPOD  ");
    table.extend_from_slice(b"000000000000");
    table.extend_from_slice(&[0; 4]); // no OEM table
    table.extend_from_slice(&[0; 2]);
    table.extend_from_slice(&entry_count.to_le_bytes());
    table.extend_from_slice(
        &u32::try_from(APIC_START)
            .expect("below 4 GiB")
            .to_le_bytes(),
    );
    table.extend_from_slice(&[0; 4]);
    table.extend_from_slice(&entries);
    table[7] = checksum(&table);

    let mut fp = Vec::with_capacity(FLOATING_POINTER_LEN + table.len());
    fp.extend_from_slice(b"_MP_");
    fp.extend_from_slice(
        &u32::try_from(table_addr)
            .expect("below 1 MiB")
            .to_le_bytes(),
    );
    fp.extend_from_slice(&[1, 4, 0, 0, 0, 0, 0, 0]); // 16 bytes, spec 1.4
    fp[10] = checksum(&fp);
    fp.extend_from_slice(&table);
    fp
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sum(bytes: &[u8]) -> u8 {
        bytes.iter().fold(0u8, |a, b| a.wrapping_add(*b))
    }

    #[test]
    fn floating_pointer_and_table_checksum_to_zero() {
        for vcpus in [1, 2, 8] {
            let bytes = build(vcpus);
            assert_eq!(&bytes[0..4], b"_MP_");
            assert_eq!(sum(&bytes[..FLOATING_POINTER_LEN]), 0);
            let table = &bytes[FLOATING_POINTER_LEN..];
            assert_eq!(&table[0..4], b"PCMP");
            assert_eq!(
                usize::from(u16::from_le_bytes([table[4], table[5]])),
                table.len()
            );
            assert_eq!(sum(table), 0, "table checksum for {vcpus} vCPUs");
        }
    }

    #[test]
    fn one_processor_entry_per_vcpu_and_boot_cpu_first() {
        let bytes = build(2);
        let entries = &bytes[FLOATING_POINTER_LEN + HEADER_LEN..];
        assert_eq!(entries[0], ENTRY_PROCESSOR);
        assert_eq!(entries[3], CPU_ENABLED | CPU_BOOT_PROCESSOR);
        assert_eq!(entries[20], ENTRY_PROCESSOR);
        assert_eq!((entries[21], entries[23]), (1, CPU_ENABLED));
        assert_eq!(entries[40], ENTRY_BUS);
    }

    #[test]
    fn fits_in_memory_for_max_vcpus() {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 1 << 20)]).expect("test memory");
        setup_mptable(&mem, crate::config::MAX_VCPUS).expect("fits");
        let mut sig = [0u8; 4];
        mem.read_slice(&mut sig, GuestAddress(EBDA_START))
            .expect("read back");
        assert_eq!(&sig, b"_MP_");
    }
}
