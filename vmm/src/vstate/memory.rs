//! Guest memory: anonymous private mappings, one per RAM range, or, for a
//! restored VM, private copy-on-write mappings of a snapshot's memory file.

use std::fs::File;
use std::os::unix::fs::FileExt;

use serde::{Deserialize, Serialize};
use vm_memory::mmap::MmapRegion;
use vm_memory::{
    Bytes, FileOffset, GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion,
    GuestRegionMmap, MemoryRegionAddress,
};

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
    /// Reading guest memory or writing the memory file failed.
    #[error("cannot save guest memory")]
    Save(#[source] std::io::Error),
    /// The memory file cannot be mapped.
    #[error("cannot map the snapshot's memory file")]
    Map(#[source] vm_memory::mmap::MmapRegionError),
    /// The saved regions overlap or are out of order.
    #[error("the snapshot's memory layout is invalid")]
    Layout,
}

/// Where one guest RAM range lives in the memory file.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegionState {
    /// Guest-physical start.
    pub guest_addr: u64,
    /// Length in bytes.
    pub len: u64,
    /// Offset in the memory file.
    pub file_offset: u64,
}

const PAGE: usize = 4096;
/// Guest memory is copied out in chunks of this size.
const CHUNK: usize = 1 << 20;

/// Writes guest memory to `file`, region after region, leaving all-zero
/// pages as holes so the file stays sparse. Returns the layout.
pub fn save(mem: &GuestMemoryMmap, file: &File) -> Result<Vec<RegionState>, MemoryError> {
    let mut regions = Vec::new();
    let mut file_offset = 0u64;
    let mut buf = vec![0u8; CHUNK];
    for region in mem.iter() {
        let len = region.len();
        let mut done = 0u64;
        while done < len {
            let n = usize::try_from((len - done).min(CHUNK as u64)).expect("at most CHUNK");
            let chunk = &mut buf[..n];
            region
                .read_slice(chunk, MemoryRegionAddress(done))
                .map_err(|e| MemoryError::Save(std::io::Error::other(e)))?;
            for (i, page) in chunk.chunks(PAGE).enumerate() {
                if page.iter().any(|&b| b != 0) {
                    let at = file_offset + done + (i * PAGE) as u64;
                    file.write_all_at(page, at).map_err(MemoryError::Save)?;
                }
            }
            done += n as u64;
        }
        regions.push(RegionState {
            guest_addr: region.start_addr().0,
            len,
            file_offset,
        });
        file_offset += len;
    }
    file.set_len(file_offset).map_err(MemoryError::Save)?;
    Ok(regions)
}

/// Maps the memory file as guest memory, private and copy-on-write: pages
/// load lazily, guest writes never reach the file, and every VM restored
/// from the same file shares the clean pages through the page cache.
pub fn restore(file: &File, regions: &[RegionState]) -> Result<GuestMemoryMmap, MemoryError> {
    let mut mapped = Vec::with_capacity(regions.len());
    for r in regions {
        let len = usize::try_from(r.len).map_err(|_| MemoryError::TooLarge(r.len))?;
        let file = file.try_clone().map_err(MemoryError::Save)?;
        let region = MmapRegion::build(
            Some(FileOffset::new(file, r.file_offset)),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_NORESERVE,
        )
        .map_err(MemoryError::Map)?;
        mapped.push(
            GuestRegionMmap::new(region, GuestAddress(r.guest_addr)).ok_or(MemoryError::Layout)?,
        );
    }
    GuestMemoryMmap::from_regions(mapped).map_err(|_| MemoryError::Layout)
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
    use vmm_sys_util::tempfile::TempFile;

    #[test]
    fn memory_has_the_requested_size() {
        let mem = create_guest_memory(64 << 20).expect("64 MiB");
        assert_eq!(mem.iter().map(|r| r.len()).sum::<u64>(), 64 << 20);
        assert_eq!(host_ranges(&mem).len(), 1);
    }

    #[test]
    fn saved_memory_is_sparse_and_restores_privately() {
        use vm_memory::Bytes;
        let mem = create_guest_memory(8 << 20).expect("8 MiB");
        mem.write_slice(b"hello", GuestAddress(0x1000)).unwrap();
        mem.write_slice(b"end", GuestAddress((8 << 20) - 3))
            .unwrap();
        let temp = TempFile::new_with_prefix(std::env::temp_dir().join("unipod-mem")).unwrap();
        let file = temp.as_file();
        let regions = save(&mem, file).expect("saved");
        assert_eq!(file.metadata().unwrap().len(), 8 << 20);
        // Two pages of data; the rest is holes (st_blocks counts 512 B units).
        use std::os::unix::fs::MetadataExt;
        assert!(
            file.metadata().unwrap().blocks() * 512 <= 64 * 1024,
            "file is not sparse"
        );

        let restored = restore(file, &regions).expect("restored");
        let mut buf = [0u8; 5];
        restored.read_slice(&mut buf, GuestAddress(0x1000)).unwrap();
        assert_eq!(&buf, b"hello");
        restored
            .write_slice(b"HELLO", GuestAddress(0x1000))
            .unwrap();
        let mut on_disk = [0u8; 5];
        file.read_exact_at(&mut on_disk, 0x1000).unwrap();
        assert_eq!(&on_disk, b"hello", "guest writes must not reach the file");
    }
}
