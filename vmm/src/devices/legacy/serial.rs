//! The guest's console: a vm-superio 8250 UART whose output goes to stdout or
//! a file, line by line.
//!
//! The writer also watches for the kernel's panic line, so the VMM can tell a
//! panic (the guest then reboots, with `panic=-1`) from a clean shutdown.

use std::io::{self, Write};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};
use vm_superio::serial::SerialState;
use vm_superio::{Serial, Trigger};
use vmm_sys_util::eventfd::EventFd;

use crate::devices::BusDevice;

/// The I/O port base of COM1 and its IRQ.
pub const COM1_BASE: u64 = 0x3f8;
/// COM1's port range length.
pub const COM1_LEN: u64 = 8;
/// COM1's IRQ line.
pub const COM1_IRQ: u32 = 4;

const PANIC_MARKER: &str = "Kernel panic - not syncing";
/// Bound on a remembered console line; longer lines are cut for the check.
const MAX_LINE: usize = 512;

/// Console output that flushes per line and remembers a kernel panic line.
pub struct ConsoleWriter {
    out: io::BufWriter<Box<dyn Write + Send>>,
    line: Vec<u8>,
    panic_line: Arc<Mutex<Option<String>>>,
}

impl ConsoleWriter {
    /// Wraps `out`.
    pub fn new(out: Box<dyn Write + Send>) -> Self {
        ConsoleWriter {
            out: io::BufWriter::new(out),
            line: Vec::new(),
            panic_line: Arc::default(),
        }
    }

    /// The first panic line seen, shared with whoever reports the guest's fate.
    pub fn panic_line(&self) -> Arc<Mutex<Option<String>>> {
        self.panic_line.clone()
    }

    fn end_of_line(&mut self) {
        let text = String::from_utf8_lossy(&self.line);
        if let Some(pos) = text.find(PANIC_MARKER) {
            let mut seen = self.panic_line.lock().expect("panic-line lock poisoned");
            seen.get_or_insert_with(|| text[pos..].trim_end().to_string());
        }
        self.line.clear();
    }
}

impl Write for ConsoleWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        for &b in buf {
            if b == b'\n' {
                self.end_of_line();
            } else if self.line.len() < MAX_LINE {
                self.line.push(b);
            }
        }
        self.out.write_all(buf)?;
        if buf.contains(&b'\n') {
            self.out.flush()?;
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }
}

/// Raises the UART's IRQ through an irqfd.
pub struct IrqTrigger(EventFd);

impl Trigger for IrqTrigger {
    type E = io::Error;
    fn trigger(&self) -> io::Result<()> {
        self.0.write(1)
    }
}

/// The UART's registers, saved in a snapshot (vm-superio's `SerialState`
/// has no serde support).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SavedSerial(#[serde(with = "SerialStateDef")] pub SerialState);

#[derive(Serialize, Deserialize)]
#[serde(remote = "SerialState")]
struct SerialStateDef {
    baud_divisor_low: u8,
    baud_divisor_high: u8,
    interrupt_enable: u8,
    interrupt_identification: u8,
    line_control: u8,
    line_status: u8,
    modem_control: u8,
    modem_status: u8,
    scratch: u8,
    in_buffer: Vec<u8>,
}

/// The UART on the port I/O bus.
pub struct SerialConsole {
    uart: Serial<IrqTrigger, vm_superio::serial::NoEvents, ConsoleWriter>,
}

impl SerialConsole {
    /// A UART raising `irq_evt` and writing to `out`, with its registers
    /// from a snapshot or at their power-on values.
    pub fn new(irq_evt: EventFd, out: ConsoleWriter, saved: Option<&SavedSerial>) -> Self {
        let trigger = IrqTrigger(irq_evt);
        let uart = match saved {
            // from_state only fails on an oversized input buffer; drop the
            // buffered input rather than the whole restore.
            Some(SavedSerial(state)) => Serial::from_state(
                &SerialState {
                    in_buffer: Vec::new(),
                    ..state.clone()
                },
                trigger,
                vm_superio::serial::NoEvents,
                out,
            )
            .expect("an empty input buffer always fits"),
            None => Serial::new(trigger, out),
        };
        SerialConsole { uart }
    }

    /// The registers to save.
    pub fn save_state(&self) -> SavedSerial {
        SavedSerial(self.uart.state())
    }
}

impl BusDevice for SerialConsole {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        if let (Ok(offset), [byte]) = (u8::try_from(offset), data) {
            *byte = self.uart.read(offset);
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if let (Ok(offset), [byte]) = (u8::try_from(offset), data) {
            // Only a failed IRQ trigger or console write lands here; the guest
            // cannot cause either, so a warning is enough.
            if let Err(e) = self.uart.write(offset, *byte) {
                log::warn!("serial console: {e:?}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Clone, Default)]
    struct Sink(Arc<Mutex<Vec<u8>>>);
    impl Write for Sink {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.0.lock().expect("lock").extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn passes_output_through_and_spots_panics() {
        let sink = Sink::default();
        let mut w = ConsoleWriter::new(Box::new(sink.clone()));
        let panic = w.panic_line();
        w.write_all(b"booting\n[ 1.0] Kernel panic - not syncing: Attempted to kill init!\n")
            .expect("write");
        assert!(sink.0.lock().expect("lock").starts_with(b"booting\n"));
        assert_eq!(
            panic.lock().expect("lock").as_deref(),
            Some("Kernel panic - not syncing: Attempted to kill init!")
        );
    }

    #[test]
    fn ordinary_output_is_not_a_panic() {
        let mut w = ConsoleWriter::new(Box::new(Sink::default()));
        let panic = w.panic_line();
        w.write_all(b"hello from the guest\nKernel panic - not\n")
            .expect("write");
        assert_eq!(*panic.lock().expect("lock"), None);
    }

    #[test]
    fn uart_transmit_reaches_the_writer() {
        let sink = Sink::default();
        let evt = EventFd::new(libc::EFD_NONBLOCK).expect("eventfd");
        let mut uart = SerialConsole::new(evt, ConsoleWriter::new(Box::new(sink.clone())), None);
        for b in b"hi\n" {
            uart.write(0, &[*b]);
        }
        assert_eq!(sink.0.lock().expect("lock").as_slice(), b"hi\n");
    }

    #[test]
    fn uart_registers_survive_save_and_restore() {
        let evt = || EventFd::new(libc::EFD_NONBLOCK).expect("eventfd");
        let out = || ConsoleWriter::new(Box::new(Sink::default()));
        let mut uart = SerialConsole::new(evt(), out(), None);
        uart.write(1, &[0x03]); // IER: THR empty + data ready
        uart.write(7, &[0x5a]); // scratch
        let saved = uart.save_state();
        let json = serde_json::to_string(&saved).expect("serialize");
        let back: SavedSerial = serde_json::from_str(&json).expect("deserialize");
        assert_eq!(back, saved);
        let mut restored = SerialConsole::new(evt(), out(), Some(&back));
        let mut b = [0u8];
        restored.read(1, &mut b);
        assert_eq!(b[0], 0x03);
        restored.read(7, &mut b);
        assert_eq!(b[0], 0x5a);
    }
}
