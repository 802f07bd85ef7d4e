//! Shared setup for the device fuzz targets: a small guest memory whose
//! contents (descriptor tables, rings and buffers) come from the fuzzer, and
//! virtio queues placed in it.
//!
//! Layout of the input: byte 0 picks each queue's size (2 bits per queue,
//! 1 to 8 entries: small rings keep the input dense), byte 1 is free for the
//! target, and the rest is copied to guest address 0. Queue `i` has its
//! descriptor table at `i * 0x300`, its available ring at `+0x100` and its
//! used ring at `+0x200`; buffers may point anywhere, including outside
//! memory, which the devices must refuse.

use std::sync::Arc;

use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vmm::devices::virtio::Interrupt;
use vmm_sys_util::eventfd::EventFd;

/// Guest memory size: the rings plus room for buffers.
pub const MEM_SIZE: usize = 0x4000;
const QUEUE_STRIDE: u64 = 0x300;

/// Guest memory and queues built from a fuzz input.
pub struct Guest {
    /// The memory, holding the input's bytes from address 0.
    pub mem: GuestMemoryMmap,
    /// Ready queues.
    pub queues: Vec<Queue>,
    /// Byte 1 of the input, for the target's own choices.
    pub choice: u8,
}

/// Builds `count` queues over memory filled from `data`; `None` if the input
/// is too short.
pub fn guest(data: &[u8], count: usize) -> Option<Guest> {
    let (&sizes, rest) = data.split_first()?;
    let (&choice, contents) = rest.split_first()?;
    let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM_SIZE)]).expect("mmap");
    let n = contents.len().min(MEM_SIZE);
    mem.write_slice(&contents[..n], GuestAddress(0))
        .expect("in memory");
    let queues = (0..count)
        .map(|i| {
            let base = u64::try_from(i).expect("small") * QUEUE_STRIDE;
            let size = 1u16 << ((sizes >> (2 * i)) & 3);
            let mut q = Queue::new(256).expect("valid max size");
            q.set_size(size * 2);
            q.set_desc_table_address(Some(low(base)), Some(0));
            q.set_avail_ring_address(Some(low(base + 0x100)), Some(0));
            q.set_used_ring_address(Some(low(base + 0x200)), Some(0));
            q.set_ready(true);
            q
        })
        .collect();
    Some(Guest {
        mem,
        queues,
        choice,
    })
}

fn low(addr: u64) -> u32 {
    u32::try_from(addr).expect("below 4 GiB")
}

/// An interrupt whose eventfd nobody reads.
pub fn interrupt() -> Arc<Interrupt> {
    Arc::new(Interrupt::new(
        EventFd::new(libc::EFD_NONBLOCK).expect("eventfd"),
    ))
}

/// A per-process scratch directory for targets that need files.
pub fn scratch(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("unipod-fuzz-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("create the scratch dir");
    dir
}
