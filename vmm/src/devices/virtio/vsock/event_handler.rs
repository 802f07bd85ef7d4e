//! Event-manager glue: which fd woke us, then [`Vsock::process`].

use std::os::fd::AsRawFd;

use event_manager::{EventOps, Events, MutEventSubscriber};
use vmm_sys_util::epoll::EventSet;

use super::{Vsock, EVENT, RX, TX};

impl Vsock {
    /// Event token: the rx queue was notified.
    const RX_TOKEN: u32 = 0;
    /// Event token: the tx queue was notified.
    const TX_TOKEN: u32 = 1;
    /// Event token: the event queue was notified.
    const EVENT_TOKEN: u32 = 2;
    /// Event token: the driver activated the device.
    const ACTIVATE_TOKEN: u32 = 3;
    /// Event token: a host socket needs attention.
    const MUXER_TOKEN: u32 = 4;
}

// Queue tokens are the queue indexes, which `process` relies on.
const _: () = assert!(
    Vsock::RX_TOKEN as usize == RX
        && Vsock::TX_TOKEN as usize == TX
        && Vsock::EVENT_TOKEN as usize == EVENT
);

impl MutEventSubscriber for Vsock {
    fn init(&mut self, ops: &mut EventOps) {
        let mut watch = |fd: &dyn AsRawFd, token: u32| {
            if let Err(e) = ops.add(Events::with_data_raw(fd.as_raw_fd(), token, EventSet::IN)) {
                log::error!("vsock: cannot watch fd {}: {e}", fd.as_raw_fd());
            }
        };
        let tokens = [Self::RX_TOKEN, Self::TX_TOKEN, Self::EVENT_TOKEN];
        for (evt, token) in self.queue_events.iter().zip(tokens) {
            watch(evt, token);
        }
        watch(&self.activate_evt, Self::ACTIVATE_TOKEN);
        let muxer_fd = self.muxer.epoll_fd();
        if let Err(e) = ops.add(Events::with_data_raw(
            muxer_fd,
            Self::MUXER_TOKEN,
            EventSet::IN,
        )) {
            log::error!("vsock: cannot watch the host sockets: {e}");
        }
    }

    fn process(&mut self, events: Events, _ops: &mut EventOps) {
        let token = events.data();
        let evt = match token {
            Self::ACTIVATE_TOKEN => Some(&self.activate_evt),
            Self::RX_TOKEN | Self::TX_TOKEN | Self::EVENT_TOKEN => {
                self.queue_events.get(token as usize)
            }
            _ => None,
        };
        if let Some(evt) = evt {
            // Drain the counter; the queues say what to do.
            let _ = evt.read();
        }
        if token == Self::EVENT_TOKEN {
            self.event_queue_kicked();
            return;
        }
        self.process();
    }
}
