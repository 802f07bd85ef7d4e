//! Guest memory: anonymous private mappings, one per RAM range.

use vm_memory::{GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};

use crate::arch;

/// Errors while creating guest memory.
#[derive(Debug, thiserror::Error)]
pub enum MemoryError {
    /// mmap failed.
    #[error("cannot allocate {mib} MiB of guest memory")]
    Allocate {
        /// Requested size.
        mib: u64,
        /// Why.
        #[source]
        source: vm_memory::mmap::FromRangesError,
    },
    /// A range is larger than the host's address space.
    #[error("guest memory range of {0} bytes does not fit in host memory")]
    TooLarge(u64),
}

/// Creates guest memory of `mem_bytes`, laid out by the architecture.
pub fn create_guest_memory(mem_bytes: u64) -> Result<GuestMemoryMmap, MemoryError> {
    let ranges = arch::ram_ranges(mem_bytes)
        .into_iter()
        .map(|(addr, len)| {
            Ok((
                addr,
                usize::try_from(len).map_err(|_| MemoryError::TooLarge(len))?,
            ))
        })
        .collect::<Result<Vec<(GuestAddress, usize)>, MemoryError>>()?;
    GuestMemoryMmap::from_ranges(&ranges).map_err(|source| MemoryError::Allocate {
        mib: mem_bytes >> 20,
        source,
    })
}

/// Host address and length of each region, for `/proc/self/smaps` lookups.
pub fn host_ranges(mem: &GuestMemoryMmap) -> Vec<(u64, u64)> {
    mem.iter()
        .filter_map(|r| {
            let host = r.get_host_address(vm_memory::MemoryRegionAddress(0)).ok()?;
            Some((host as u64, r.len()))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_has_the_requested_size() {
        let mem = create_guest_memory(64 << 20).expect("64 MiB");
        assert_eq!(mem.iter().map(|r| r.len()).sum::<u64>(), 64 << 20);
        assert_eq!(host_ranges(&mem).len(), 1);
    }
}
