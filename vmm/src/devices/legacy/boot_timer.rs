//! The boot-timer marker: the guest writes [`BOOT_TIMER_MAGIC`] at
//! [`crate::arch::layout::DEVICE_MMIO_START`] once userspace runs, and the VMM
//! records how long after its own start that happened. Firecracker uses the
//! same byte for the same purpose.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::devices::BusDevice;

/// The byte the guest writes.
pub const BOOT_TIMER_MAGIC: u8 = 123;
/// MMIO length of the device.
pub const BOOT_TIMER_LEN: u64 = 0x1000;

/// Records the first marker write.
pub struct BootTimer {
    start: Instant,
    reached: Arc<Mutex<Option<Duration>>>,
}

impl BootTimer {
    /// A timer measuring from `start` (the VMM's start).
    pub fn new(start: Instant) -> Self {
        BootTimer {
            start,
            reached: Arc::default(),
        }
    }

    /// When the guest wrote the marker, shared.
    pub fn reached(&self) -> Arc<Mutex<Option<Duration>>> {
        self.reached.clone()
    }
}

impl BusDevice for BootTimer {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        data.fill(0);
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if offset != 0 || data.first() != Some(&BOOT_TIMER_MAGIC) {
            return;
        }
        let mut reached = self.reached.lock().expect("boot-timer lock poisoned");
        if reached.is_none() {
            let elapsed = self.start.elapsed();
            // Logged once per VM, so the guest cannot flood the log.
            log::info!(
                "boot-timer: guest reached userspace {} ms after VMM start",
                elapsed.as_millis()
            );
            *reached = Some(elapsed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_magic_byte_at_offset_zero_counts_once() {
        let mut timer = BootTimer::new(Instant::now());
        let reached = timer.reached();
        timer.write(0, &[1]);
        timer.write(1, &[BOOT_TIMER_MAGIC]);
        assert_eq!(*reached.lock().expect("lock"), None);
        timer.write(0, &[BOOT_TIMER_MAGIC]);
        let first = reached.lock().expect("lock").expect("recorded");
        std::thread::sleep(Duration::from_millis(2));
        timer.write(0, &[BOOT_TIMER_MAGIC]);
        assert_eq!(reached.lock().expect("lock").expect("recorded"), first);
    }
}
