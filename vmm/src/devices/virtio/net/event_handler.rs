//! Event-manager glue: which fd woke us, then the rx or tx path of [`Net`].
//!
//! # Design
//! The tap is watched level-triggered for `EPOLLIN`, and only while the
//! device is active and no frame waits for rx buffers. While a frame waits,
//! the tap's interest is emptied (muted), so a readable tap cannot spin the
//! loop; the guest's next rx kick delivers the frame and unmutes it. A tap
//! that reports an error or hang-up (its interface is gone) is dropped from
//! the watch list for good.

#![forbid(unsafe_code)]

use std::os::fd::AsRawFd;

use event_manager::{EventOps, Events, MutEventSubscriber};
use vmm_sys_util::epoll::EventSet;

use super::{Net, RX, TX};

/// Whether and how the event loop watches the tap.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum TapWatch {
    /// Not registered.
    Off,
    /// Registered for `EPOLLIN`.
    On,
    /// Registered with an empty interest set (errors still wake us).
    Muted,
}

impl Net {
    /// Event token: the rx queue was notified (the guest added buffers).
    const RX_TOKEN: u32 = 0;
    /// Event token: the tx queue was notified (the guest sent frames).
    const TX_TOKEN: u32 = 1;
    /// Event token: the driver activated the device.
    const ACTIVATE_TOKEN: u32 = 2;
    /// Event token: the tap has a frame (or failed).
    const TAP_TOKEN: u32 = 3;

    /// Registers, mutes, unmutes or drops the tap so that the event loop
    /// watches it exactly when the device can take a frame.
    fn update_tap_watch(&mut self, ops: &mut EventOps) {
        let failed = self.backend_failed();
        let Some((tap, watch, wants)) = self.tap_watch() else {
            return;
        };
        let fd = tap.as_raw_fd();
        let events = |set| Events::with_data_raw(fd, Self::TAP_TOKEN, set);
        let (result, next) = match (*watch, wants) {
            (TapWatch::On | TapWatch::Muted, _) if failed => {
                (ops.remove(events(EventSet::empty())), TapWatch::Off)
            }
            (TapWatch::Off, true) => (ops.add(events(EventSet::IN)), TapWatch::On),
            (TapWatch::Muted, true) => (ops.modify(events(EventSet::IN)), TapWatch::On),
            (TapWatch::On, false) => (ops.modify(events(EventSet::empty())), TapWatch::Muted),
            _ => return,
        };
        match result {
            Ok(()) => *watch = next,
            Err(e) => {
                log::error!("net: cannot change how the tap (fd {fd}) is watched: {e}");
                if next == TapWatch::On {
                    // Retrying on every event would only repeat this.
                    self.fail_backend("the tap cannot be watched");
                }
            }
        }
    }
}

// Queue tokens are the queue indexes, which `process` relies on.
const _: () = assert!(Net::RX_TOKEN as usize == RX && Net::TX_TOKEN as usize == TX);

impl MutEventSubscriber for Net {
    fn init(&mut self, ops: &mut EventOps) {
        let mut watch = |fd: &dyn AsRawFd, token: u32| {
            if let Err(e) = ops.add(Events::with_data_raw(fd.as_raw_fd(), token, EventSet::IN)) {
                log::error!("net: cannot watch fd {}: {e}", fd.as_raw_fd());
            }
        };
        for (evt, token) in self
            .queue_events
            .iter()
            .zip([Self::RX_TOKEN, Self::TX_TOKEN])
        {
            watch(evt, token);
        }
        watch(&self.activate_evt, Self::ACTIVATE_TOKEN);
        // The tap is watched once the device is active.
        self.update_tap_watch(ops);
    }

    fn process(&mut self, events: Events, ops: &mut EventOps) {
        let token = events.data();
        let evt = match token {
            Self::ACTIVATE_TOKEN => Some(&self.activate_evt),
            Self::RX_TOKEN | Self::TX_TOKEN => self.queue_events.get(token as usize),
            _ => None,
        };
        if let Some(evt) = evt {
            // Drain the counter; the queues say what to do.
            let _ = evt.read();
        }
        if token == Self::TAP_TOKEN
            && events
                .event_set()
                .intersects(EventSet::ERROR | EventSet::HANG_UP)
        {
            self.fail_backend("the tap reported an error (its interface may be gone)");
        }
        let used = match token {
            Self::RX_TOKEN | Self::TAP_TOKEN => self.process_rx(),
            Self::TX_TOKEN => self.process_tx(),
            Self::ACTIVATE_TOKEN => self.process_tx() | self.process_rx(),
            _ => false,
        };
        if used {
            self.signal_used();
        }
        self.update_tap_watch(ops);
    }
}
