//! Event-manager glue: the queue's eventfd woke us, so serve the queue.

#![forbid(unsafe_code)]

use std::os::fd::AsRawFd;

use event_manager::{EventOps, Events, MutEventSubscriber};
use vmm_sys_util::epoll::EventSet;

use super::Block;

impl Block {
    /// Event token: the request queue was notified (or the device was
    /// activated, which kicks the same eventfd).
    const QUEUE_TOKEN: u32 = 0;
}

impl MutEventSubscriber for Block {
    fn init(&mut self, ops: &mut EventOps) {
        for evt in &self.queue_events {
            let fd = evt.as_raw_fd();
            if let Err(e) = ops.add(Events::with_data_raw(fd, Self::QUEUE_TOKEN, EventSet::IN)) {
                log::error!("virtio-blk: cannot watch fd {fd}: {e}");
            }
        }
    }

    fn process(&mut self, events: Events, _ops: &mut EventOps) {
        if events.data() != Self::QUEUE_TOKEN {
            return;
        }
        // Drain the counter; the queue says what to do.
        for evt in &self.queue_events {
            let _ = evt.read();
        }
        self.process();
    }
}
