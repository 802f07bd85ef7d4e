//! Event-manager glue: a queue's eventfd woke us, so serve that queue.

#![forbid(unsafe_code)]

use std::os::fd::AsRawFd;

use event_manager::{EventOps, Events, MutEventSubscriber};
use vmm_sys_util::epoll::EventSet;

use super::Balloon;

impl MutEventSubscriber for Balloon {
    /// Event tokens: queue `i`'s eventfd (inflate, deflate, reporting) is
    /// registered with token `i`.
    fn init(&mut self, ops: &mut EventOps) {
        for (token, evt) in (0u32..).zip(&self.queue_events) {
            let fd = evt.as_raw_fd();
            if let Err(e) = ops.add(Events::with_data_raw(fd, token, EventSet::IN)) {
                log::error!("virtio-balloon: cannot watch fd {fd}: {e}");
            }
        }
    }

    fn process(&mut self, events: Events, _ops: &mut EventOps) {
        let Ok(index) = usize::try_from(events.data()) else {
            return;
        };
        let Some(evt) = self.queue_events.get(index) else {
            return;
        };
        // Drain the counter; the queue says what to do.
        let _ = evt.read();
        self.process(index);
    }
}
