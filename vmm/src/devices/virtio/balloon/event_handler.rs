//! Event-manager glue: a queue's eventfd woke us, so serve that queue.

#![forbid(unsafe_code)]

use std::os::fd::AsRawFd;

use event_manager::{EventOps, Events, MutEventSubscriber};
use vmm_sys_util::epoll::EventSet;

use super::Balloon;

impl Balloon {
    /// Event tokens: queue `i`'s eventfd is registered with token `i`
    /// (inflate, deflate, reporting), below this bound.
    const QUEUE_TOKENS: u32 = super::QUEUE_SIZES.len() as u32;
}

impl MutEventSubscriber for Balloon {
    fn init(&mut self, ops: &mut EventOps) {
        for (token, evt) in (0..Self::QUEUE_TOKENS).zip(&self.queue_events) {
            let fd = evt.as_raw_fd();
            if let Err(e) = ops.add(Events::with_data_raw(fd, token, EventSet::IN)) {
                log::error!("virtio-balloon: cannot watch fd {fd}: {e}");
            }
        }
    }

    fn process(&mut self, events: Events, _ops: &mut EventOps) {
        let token = events.data();
        if token >= Self::QUEUE_TOKENS {
            return;
        }
        let index = usize::try_from(token).expect("a queue index");
        // Drain the counter; the queue says what to do.
        let _ = self.queue_events[index].read();
        self.process(index);
    }
}
