//! The i8042 keyboard controller, only for its reset line: a guest booted
//! with `reboot=k` writes 0xfe to port 0x64 to reboot, and we end the VM.

use std::sync::Arc;

use vm_superio::{I8042Device, Trigger};

use crate::devices::BusDevice;
use crate::vstate::exit::{ExitSignal, GuestExit};

/// Port base of the i8042 (data 0x60 .. command 0x64).
pub const I8042_BASE: u64 = 0x60;
/// Port range length.
pub const I8042_LEN: u64 = 5;

/// Reports a guest reset as the end of the VM.
pub struct ResetTrigger(Arc<ExitSignal>);

impl Trigger for ResetTrigger {
    type E = std::convert::Infallible;
    fn trigger(&self) -> Result<(), Self::E> {
        self.0.report(GuestExit::Reset);
        Ok(())
    }
}

/// The i8042 on the port I/O bus.
pub struct I8042(I8042Device<ResetTrigger>);

impl I8042 {
    /// An i8042 that reports resets to `exit`.
    pub fn new(exit: Arc<ExitSignal>) -> Self {
        I8042(I8042Device::new(ResetTrigger(exit)))
    }
}

impl BusDevice for I8042 {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        if let (Ok(offset), [byte]) = (u8::try_from(offset), data) {
            *byte = self.0.read(offset);
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if let (Ok(offset), [byte]) = (u8::try_from(offset), data) {
            let Ok(()) = self.0.write(offset, *byte);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reset_command_ends_the_vm() {
        let exit = Arc::new(ExitSignal::new().expect("eventfd"));
        let mut dev = I8042::new(exit.clone());
        dev.write(4, &[0x20]); // read command byte: not a reset
        assert_eq!(exit.peek(), None);
        dev.write(4, &[0xfe]);
        assert_eq!(exit.peek(), Some(GuestExit::Reset));
    }
}
