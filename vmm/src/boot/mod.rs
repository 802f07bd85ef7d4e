//! Loads the guest kernel and initrd and writes what the kernel reads at
//! boot: the command line, and either the Linux zero page (with the e820 map)
//! or the PVH start info (with its memory map).
//!
//! # Design
//! An ELF `vmlinux` with a PVH note boots through PVH, else through Linux's
//! 64-bit boot protocol, as does a bzImage. [`BootProtocol`] can force one.

use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};

use linux_loader::configurator::{linux::LinuxBootConfigurator, pvh::PvhBootConfigurator};
use linux_loader::configurator::{BootConfigurator, BootParams};
use linux_loader::loader::bootparam::boot_params;
use linux_loader::loader::elf::start_info::{
    hvm_memmap_table_entry, hvm_modlist_entry, hvm_start_info,
};
use linux_loader::loader::{load_cmdline, BzImage, Cmdline, Elf, KernelLoader, PvhBootCapability};
use vm_memory::{
    Address, Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion,
};

use crate::arch::layout::*;
use crate::arch::BootEntry;

/// Errors while loading the kernel or initrd.
#[derive(Debug, thiserror::Error)]
pub enum BootError {
    /// The kernel file cannot be opened or read.
    #[error("--kernel {}: cannot read the file; check the path (build it with 'make kernel')", .path.display())]
    KernelFile {
        /// The path given.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The kernel file is neither ELF nor bzImage.
    #[error("--kernel {}: not a Linux kernel: expected an ELF vmlinux or a bzImage", .path.display())]
    KernelFormat {
        /// The path given.
        path: PathBuf,
        /// What linux-loader said.
        #[source]
        source: Option<linux_loader::loader::Error>,
    },
    /// The kernel starts like an ELF vmlinux but does not load: truncated,
    /// damaged, or built for another machine.
    #[error("--kernel {}: a damaged or truncated ELF kernel (rebuild it with 'make kernel')", .path.display())]
    KernelElf {
        /// The path given.
        path: PathBuf,
        /// What linux-loader said.
        #[source]
        source: linux_loader::loader::Error,
    },
    /// The initrd cannot be read.
    #[error("--initrd {}: cannot read the file; check the path (build it with 'make images')", .path.display())]
    InitrdFile {
        /// The path given.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The initrd is a directory or a device, or empty.
    #[error("--initrd {}: {what}; expected a cpio archive (build it with 'make images')", .path.display())]
    InitrdNotAFile {
        /// The path given.
        path: PathBuf,
        /// "not a regular file" or "the file is empty".
        what: &'static str,
    },
    /// The initrd changed or failed while being read.
    #[error("--initrd {}: cannot read the file into guest memory", .path.display())]
    InitrdRead {
        /// The path given.
        path: PathBuf,
        /// Why.
        #[source]
        source: vm_memory::GuestMemoryError,
    },
    /// The initrd does not fit in guest memory above the kernel.
    #[error("--initrd {}: {size} bytes do not fit in guest memory above the kernel; raise --mem-mib", .path.display())]
    InitrdTooLarge {
        /// The path given.
        path: PathBuf,
        /// Its size.
        size: u64,
    },
    /// PVH was forced but the kernel has no PVH note.
    #[error("--boot-protocol pvh: the kernel has no PVH entry note (build it with CONFIG_PVH=y)")]
    NoPvhNote,
    /// The command line is invalid.
    #[error("invalid kernel command line: {0}")]
    Cmdline(linux_loader::cmdline::Error),
    /// Writing boot structures failed.
    #[error("cannot write the boot parameters to guest memory")]
    BootParams(#[source] linux_loader::configurator::Error),
    /// Writing the initrd or command line failed.
    #[error("cannot write {0} to guest memory")]
    GuestMemory(&'static str),
}

/// How to enter the kernel.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum BootProtocol {
    /// PVH when the kernel has the note, else Linux 64-bit.
    #[default]
    Auto,
    /// PVH only.
    Pvh,
    /// Linux 64-bit boot protocol.
    Linux64,
}

/// The kernel as loaded into guest memory.
pub struct LoadedKernel {
    /// Where the boot vCPU starts.
    pub entry: BootEntry,
    /// First byte after the kernel image.
    pub end: u64,
    /// The bzImage setup header, copied into the zero page.
    setup_header: Option<linux_loader::loader::bootparam::setup_header>,
}

/// Where the initrd sits in guest memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct InitrdRange {
    /// Guest physical address.
    pub addr: GuestAddress,
    /// Size in bytes.
    pub size: u64,
}

const ELF_MAGIC: &[u8; 4] = b"\x7fELF";
const BZIMAGE_ENTRY_OFFSET: u64 = 0x200;
const E820_RAM: u32 = 1;
const KERNEL_BOOT_FLAG_MAGIC: u16 = 0xaa55;
const KERNEL_HDR_MAGIC: u32 = 0x5372_6448;
const KERNEL_LOADER_OTHER: u8 = 0xff;
const KERNEL_MIN_ALIGNMENT_BYTES: u32 = 0x100_0000;
const XEN_HVM_START_MAGIC_VALUE: u32 = 0x336e_c578;

/// Loads `path` into `mem`, choosing the entry per `protocol`.
pub fn load_kernel(
    mem: &GuestMemoryMmap,
    path: &Path,
    protocol: BootProtocol,
) -> Result<LoadedKernel, BootError> {
    let file_err = |source| BootError::KernelFile {
        path: path.to_owned(),
        source,
    };
    let mut file = File::open(path).map_err(file_err)?;
    let mut magic = [0u8; 4];
    let is_elf = match file.read_exact(&mut magic) {
        Ok(()) => &magic == ELF_MAGIC,
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
            return Err(BootError::KernelFormat {
                path: path.to_owned(),
                source: None,
            })
        }
        Err(e) => return Err(file_err(e)),
    };
    let himem = Some(GuestAddress(HIMEM_START));
    let format_err = |source| BootError::KernelFormat {
        path: path.to_owned(),
        source: Some(source),
    };
    if is_elf {
        let res =
            Elf::load(mem, None, &mut file, himem).map_err(|source| BootError::KernelElf {
                path: path.to_owned(),
                source,
            })?;
        let entry = match (protocol, res.pvh_boot_cap) {
            (BootProtocol::Linux64, _) => BootEntry::Linux64(res.kernel_load),
            (_, PvhBootCapability::PvhEntryPresent(addr)) => BootEntry::Pvh(addr),
            (BootProtocol::Pvh, _) => return Err(BootError::NoPvhNote),
            (BootProtocol::Auto, _) => BootEntry::Linux64(res.kernel_load),
        };
        Ok(LoadedKernel {
            entry,
            end: res.kernel_end,
            setup_header: None,
        })
    } else {
        if protocol == BootProtocol::Pvh {
            return Err(BootError::NoPvhNote);
        }
        let res = BzImage::load(mem, None, &mut file, himem).map_err(format_err)?;
        let entry = BootEntry::Linux64(res.kernel_load.unchecked_add(BZIMAGE_ENTRY_OFFSET));
        Ok(LoadedKernel {
            entry,
            end: res.kernel_end,
            setup_header: res.setup_header,
        })
    }
}

/// Loads the initrd at the top of low memory, page-aligned.
pub fn load_initrd(
    mem: &GuestMemoryMmap,
    path: &Path,
    kernel_end: u64,
) -> Result<InitrdRange, BootError> {
    let file_err = |source| BootError::InitrdFile {
        path: path.to_owned(),
        source,
    };
    let mut file = File::open(path).map_err(file_err)?;
    let meta = file.metadata().map_err(file_err)?;
    let not_a_file = |what| BootError::InitrdNotAFile {
        path: path.to_owned(),
        what,
    };
    // A directory opens fine and fails only at the read; an empty initrd
    // would boot to a kernel panic a minute later.
    if !meta.is_file() {
        return Err(not_a_file("not a regular file"));
    }
    let size = meta.len();
    if size == 0 {
        return Err(not_a_file("the file is empty"));
    }
    let low_end = mem
        .iter()
        .next()
        .map(|r| r.start_addr().raw_value() + r.len())
        .expect("guest memory has a low region");
    let too_large = || BootError::InitrdTooLarge {
        path: path.to_owned(),
        size,
    };
    let addr = low_end.checked_sub(size).ok_or_else(too_large)? & !0xfff;
    if addr < kernel_end {
        return Err(too_large());
    }
    // Reads exactly the size checked above, straight into guest memory.
    mem.read_exact_volatile_from(
        GuestAddress(addr),
        &mut file,
        usize::try_from(size).map_err(|_| too_large())?,
    )
    .map_err(|source| BootError::InitrdRead {
        path: path.to_owned(),
        source,
    })?;
    Ok(InitrdRange {
        addr: GuestAddress(addr),
        size,
    })
}

/// Builds a [`Cmdline`] from a string.
pub fn cmdline_from(s: &str) -> Result<Cmdline, BootError> {
    let mut cmdline = Cmdline::new(CMDLINE_MAX_SIZE).map_err(BootError::Cmdline)?;
    cmdline.insert_str(s).map_err(BootError::Cmdline)?;
    Ok(cmdline)
}

/// Guest RAM as e820/PVH entries: below the EBDA, then from 1 MiB up.
fn ram_map(mem: &GuestMemoryMmap) -> Vec<(u64, u64)> {
    let mut map = vec![(0, EBDA_START)];
    for region in mem.iter() {
        let start = region.start_addr().raw_value().max(HIMEM_START);
        let end = region.start_addr().raw_value() + region.len();
        if end > start {
            map.push((start, end - start));
        }
    }
    map
}

/// Writes the command line and the boot parameters for `kernel`'s protocol.
pub fn write_boot_info(
    mem: &GuestMemoryMmap,
    kernel: &LoadedKernel,
    cmdline: &Cmdline,
    initrd: Option<InitrdRange>,
) -> Result<(), BootError> {
    load_cmdline(mem, GuestAddress(CMDLINE_START), cmdline)
        .map_err(|_| BootError::GuestMemory("the command line"))?;
    let cmdline_len = cmdline
        .as_cstring()
        .map_err(BootError::Cmdline)?
        .as_bytes_with_nul()
        .len();
    match kernel.entry {
        BootEntry::Linux64(_) => write_zero_page(mem, kernel, cmdline_len, initrd),
        BootEntry::Pvh(_) => write_pvh_info(mem, initrd),
    }
}

fn write_zero_page(
    mem: &GuestMemoryMmap,
    kernel: &LoadedKernel,
    cmdline_len: usize,
    initrd: Option<InitrdRange>,
) -> Result<(), BootError> {
    let mut params = boot_params::default();
    if let Some(hdr) = kernel.setup_header {
        params.hdr = hdr;
    }
    params.hdr.type_of_loader = KERNEL_LOADER_OTHER;
    params.hdr.boot_flag = KERNEL_BOOT_FLAG_MAGIC;
    params.hdr.header = KERNEL_HDR_MAGIC;
    params.hdr.kernel_alignment = KERNEL_MIN_ALIGNMENT_BYTES;
    params.hdr.cmd_line_ptr = u32::try_from(CMDLINE_START).expect("below 4 GiB");
    params.hdr.cmdline_size = u32::try_from(cmdline_len).expect("bounded by CMDLINE_MAX_SIZE");
    if let Some(initrd) = initrd {
        params.hdr.ramdisk_image =
            u32::try_from(initrd.addr.raw_value()).expect("initrd is in low memory");
        params.hdr.ramdisk_size = u32::try_from(initrd.size).expect("initrd is in low memory");
    }
    let map = ram_map(mem);
    for (slot, &(addr, size)) in params.e820_table.iter_mut().zip(&map) {
        slot.addr = addr;
        slot.size = size;
        slot.r#type = E820_RAM;
    }
    params.e820_entries = u8::try_from(map.len()).expect("at most 3 RAM ranges");
    LinuxBootConfigurator::write_bootparams::<GuestMemoryMmap>(
        &BootParams::new(&params, GuestAddress(ZERO_PAGE_START)),
        mem,
    )
    .map_err(BootError::BootParams)
}

fn write_pvh_info(mem: &GuestMemoryMmap, initrd: Option<InitrdRange>) -> Result<(), BootError> {
    let memmap: Vec<hvm_memmap_table_entry> = ram_map(mem)
        .into_iter()
        .map(|(addr, size)| hvm_memmap_table_entry {
            addr,
            size,
            type_: E820_RAM,
            reserved: 0,
        })
        .collect();
    let modules: Vec<hvm_modlist_entry> = initrd
        .map(|r| hvm_modlist_entry {
            paddr: r.addr.raw_value(),
            size: r.size,
            ..Default::default()
        })
        .into_iter()
        .collect();
    let start_info = hvm_start_info {
        magic: XEN_HVM_START_MAGIC_VALUE,
        version: 1,
        cmdline_paddr: CMDLINE_START,
        memmap_paddr: PVH_MEMMAP_START,
        memmap_entries: u32::try_from(memmap.len()).expect("at most 3 RAM ranges"),
        nr_modules: u32::try_from(modules.len()).expect("0 or 1"),
        modlist_paddr: if modules.is_empty() {
            0
        } else {
            PVH_MODLIST_START
        },
        ..Default::default()
    };
    let mut params = BootParams::new(&start_info, GuestAddress(PVH_INFO_START));
    params.set_sections(&memmap, GuestAddress(PVH_MEMMAP_START));
    if !modules.is_empty() {
        params.set_modules(&modules, GuestAddress(PVH_MODLIST_START));
    }
    PvhBootConfigurator::write_bootparams::<GuestMemoryMmap>(&params, mem)
        .map_err(BootError::BootParams)
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::Bytes;

    fn mem(mib: u64) -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[(
            GuestAddress(0),
            usize::try_from(mib << 20).expect("small"),
        )])
        .expect("test memory")
    }

    fn temp_file(name: &str, bytes: &[u8]) -> PathBuf {
        let path = std::env::temp_dir().join(format!("unipod-boot-{}-{name}", std::process::id()));
        std::fs::write(&path, bytes).expect("write temp file");
        path
    }

    fn fake_kernel() -> LoadedKernel {
        LoadedKernel {
            entry: BootEntry::Linux64(GuestAddress(HIMEM_START)),
            end: 2 << 20,
            setup_header: None,
        }
    }

    #[test]
    fn zero_page_has_cmdline_initrd_and_e820() {
        let m = mem(64);
        let cmdline = cmdline_from("console=ttyS0").expect("valid");
        let initrd = InitrdRange {
            addr: GuestAddress(32 << 20),
            size: 4096,
        };
        write_boot_info(&m, &fake_kernel(), &cmdline, Some(initrd)).expect("fits");
        let params: boot_params = m.read_obj(GuestAddress(ZERO_PAGE_START)).expect("read");
        assert_eq!({ params.hdr.boot_flag }, KERNEL_BOOT_FLAG_MAGIC);
        assert_eq!(
            { params.hdr.cmd_line_ptr },
            u32::try_from(CMDLINE_START).expect("small")
        );
        assert_eq!({ params.hdr.cmdline_size }, 14);
        assert_eq!({ params.hdr.ramdisk_image }, 32 << 20);
        assert_eq!(params.e820_entries, 2);
        assert_eq!({ params.e820_table[0].size }, EBDA_START);
        assert_eq!({ params.e820_table[1].addr }, HIMEM_START);
        assert_eq!({ params.e820_table[1].size }, (64 << 20) - HIMEM_START);
        let mut line = [0u8; 14];
        m.read_slice(&mut line, GuestAddress(CMDLINE_START))
            .expect("read");
        assert_eq!(&line, b"console=ttyS0\0");
    }

    #[test]
    fn pvh_start_info_points_at_memmap_and_initrd() {
        let m = mem(64);
        let kernel = LoadedKernel {
            entry: BootEntry::Pvh(GuestAddress(0x100_0000)),
            ..fake_kernel()
        };
        let initrd = InitrdRange {
            addr: GuestAddress(32 << 20),
            size: 100,
        };
        write_boot_info(
            &m,
            &kernel,
            &cmdline_from("x").expect("valid"),
            Some(initrd),
        )
        .expect("fits");
        let info: hvm_start_info = m.read_obj(GuestAddress(PVH_INFO_START)).expect("read");
        assert_eq!(info.magic, XEN_HVM_START_MAGIC_VALUE);
        assert_eq!((info.memmap_entries, info.nr_modules), (2, 1));
        let module: hvm_modlist_entry = m.read_obj(GuestAddress(PVH_MODLIST_START)).expect("read");
        assert_eq!((module.paddr, module.size), (32 << 20, 100));
    }

    #[test]
    fn initrd_goes_to_top_of_low_memory_page_aligned() {
        let m = mem(64);
        let path = temp_file("initrd", &[7u8; 5000]);
        let range = load_initrd(&m, &path, 2 << 20).expect("fits");
        std::fs::remove_file(&path).expect("cleanup");
        assert_eq!(range.size, 5000);
        assert_eq!(range.addr.raw_value() % 4096, 0);
        assert!(range.addr.raw_value() + 5000 <= 64 << 20);
        assert_eq!(m.read_obj::<u8>(range.addr).expect("read"), 7);
    }

    #[test]
    fn initrd_that_would_overlap_kernel_is_rejected() {
        let m = mem(4);
        let path = temp_file("big-initrd", &vec![0u8; 3 << 20]);
        let err = load_initrd(&m, &path, 2 << 20).expect_err("must not fit");
        std::fs::remove_file(&path).expect("cleanup");
        assert!(matches!(err, BootError::InitrdTooLarge { size, .. } if size == 3 << 20));
        assert!(err.to_string().contains("--mem-mib"), "{err}");
    }

    #[test]
    fn garbage_and_empty_kernels_are_rejected_with_the_path() {
        let m = mem(16);
        for (name, bytes) in [("empty", &b""[..]), ("garbage", &[0x42u8; 8192][..])] {
            let path = temp_file(name, bytes);
            let err = load_kernel(&m, &path, BootProtocol::Auto)
                .err()
                .expect("not a kernel");
            std::fs::remove_file(&path).expect("cleanup");
            assert!(
                matches!(err, BootError::KernelFormat { .. }),
                "{name}: {err:?}"
            );
            assert!(err.to_string().contains(&path.display().to_string()));
        }
    }

    #[test]
    fn missing_kernel_names_the_path_and_the_fix() {
        let err = load_kernel(
            &mem(16),
            Path::new("/nonexistent/vmlinux"),
            BootProtocol::Auto,
        )
        .err()
        .expect("missing");
        let msg = err.to_string();
        assert!(
            msg.contains("/nonexistent/vmlinux") && msg.contains("make kernel"),
            "{msg}"
        );
    }
}
