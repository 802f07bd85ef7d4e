//! A split virtqueue in mock guest memory, filled as a driver would fill
//! it: device tests publish descriptor chains and read the used ring back.

use virtio_bindings::virtio_ring::VRING_DESC_F_NEXT;
use virtio_queue::desc::{split::Descriptor, RawDescriptor};
use virtio_queue::mock::MockSplitQueue;
use virtio_queue::Queue;
use vm_memory::{GuestAddress, GuestMemoryMmap};

/// One queue and the descriptor-table slots the test has used.
pub struct MockQueue {
    q: MockSplitQueue<'static, GuestMemoryMmap>,
    size: u16,
    next_desc: u16,
    used_seen: u16,
}

impl MockQueue {
    /// A queue of `size` entries whose rings start at `ring`.
    pub fn new(mem: &'static GuestMemoryMmap, ring: u64, size: u16) -> MockQueue {
        MockQueue {
            q: MockSplitQueue::create(mem, GuestAddress(ring), size),
            size,
            next_desc: 0,
            used_seen: 0,
        }
    }

    /// The device side of the queue, ready for `activate`.
    pub fn create_queue(&self) -> Queue {
        self.q.create_queue().expect("a valid mock queue")
    }

    /// The table slot the next published descriptor takes.
    pub fn next_free(&self) -> u16 {
        self.next_desc % self.size
    }

    /// The descriptor stored at table slot `index`.
    pub fn desc(&self, index: u16) -> Descriptor {
        Descriptor::from(
            self.q
                .desc_table()
                .load(index)
                .expect("the table is in memory"),
        )
    }

    /// Publishes descriptors (addr, len, flags, next) as given, from the
    /// next free table slot; the first is the head, which it returns.
    pub fn add_raw(&mut self, descs: &[(u64, u32, u32, u16)]) -> u16 {
        let head = self.next_desc % self.size;
        for (i, &(addr, len, flags, next)) in descs.iter().enumerate() {
            let index = (head + u16::try_from(i).expect("a short chain")) % self.size;
            let flags = u16::try_from(flags).expect("16-bit flags");
            let desc = Descriptor::new(addr, len, flags, next);
            self.q
                .desc_table()
                .store(index, RawDescriptor::from(desc))
                .expect("the table is in memory");
        }
        let count = u16::try_from(descs.len()).expect("a short chain");
        self.next_desc = self.next_desc.wrapping_add(count);
        let idx = self.q.avail().idx().load();
        self.q
            .avail()
            .ring()
            .ref_at(usize::from(idx % self.size))
            .expect("inside the ring")
            .store(head);
        self.q.avail().idx().store(idx.wrapping_add(1));
        head
    }

    /// Publishes a chain of (addr, len, flags) descriptors, linked in
    /// order; returns its head.
    pub fn add_chain(&mut self, descs: &[(u64, u32, u32)]) -> u16 {
        let first = self.next_desc % self.size;
        let raw: Vec<(u64, u32, u32, u16)> = descs
            .iter()
            .enumerate()
            .map(|(i, &(addr, len, flags))| {
                let next = (first + u16::try_from(i).expect("a short chain") + 1) % self.size;
                let last = i + 1 == descs.len();
                let flags = if last {
                    flags
                } else {
                    flags | VRING_DESC_F_NEXT
                };
                (addr, len, flags, next)
            })
            .collect();
        self.add_raw(&raw)
    }

    /// Used entries (head index, length) since the last call.
    pub fn take_used(&mut self) -> Vec<(u16, u32)> {
        let idx = self.q.used().idx().load();
        let mut out = Vec::new();
        while self.used_seen != idx {
            let elem = self
                .q
                .used()
                .ring()
                .ref_at(usize::from(self.used_seen % self.size))
                .expect("inside the ring")
                .load();
            let head = u16::try_from(elem.id()).expect("a table index");
            out.push((head, elem.len()));
            self.used_seen = self.used_seen.wrapping_add(1);
        }
        out
    }
}
