//! Creates the devices and puts them on the buses.
//!
//! # Design
//! Devices are never fields of [`crate::vmm::Vmm`]; they live on the buses,
//! and the manager keeps only the handles the VMM needs afterwards (the
//! console's panic line, the boot timer's reading).

use std::fs::File;
use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use vmm_sys_util::eventfd::EventFd;

use crate::arch::layout::DEVICE_MMIO_START;
use crate::config::ConsoleOutput;
use crate::devices::legacy::{boot_timer, i8042, serial};
use crate::devices::legacy::{BootTimer, ConsoleWriter, SerialConsole, I8042};
use crate::devices::{Bus, BusError};
use crate::vstate::exit::ExitSignal;
use crate::vstate::vcpu::IoBuses;
use crate::vstate::vm::Vm;

/// Command-line bytes kept free for device announcements and the
/// host-specific switches appended at boot.
pub const CMDLINE_RESERVE: usize = 512;

/// Errors while creating devices.
#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    /// The console log file cannot be created.
    #[error("--console-log {}: cannot create the file", .0.display())]
    ConsoleLog(std::path::PathBuf, #[source] std::io::Error),
    /// An eventfd could not be created.
    #[error("cannot create an eventfd")]
    EventFd(#[source] std::io::Error),
    /// Wiring an IRQ failed.
    #[error("cannot connect IRQ {0} to KVM")]
    Irq(u32, #[source] kvm_ioctls::Error),
    /// Two devices claim the same addresses (a bug in our layout).
    #[error("device layout conflict")]
    Bus(#[from] BusError),
}

/// The VM's devices, reachable through its buses.
pub struct DeviceManager {
    buses: IoBuses,
    panic_line: Arc<Mutex<Option<String>>>,
    boot_time: Arc<Mutex<Option<Duration>>>,
}

impl DeviceManager {
    /// Creates the legacy devices: serial console, i8042 and boot timer.
    pub fn new(
        vm: &Vm,
        console: &ConsoleOutput,
        exit: Arc<ExitSignal>,
        vmm_start: Instant,
    ) -> Result<DeviceManager, DeviceError> {
        let out: Box<dyn Write + Send> = match console {
            ConsoleOutput::Stdout => Box::new(std::io::stdout()),
            ConsoleOutput::File(path) => {
                Box::new(File::create(path).map_err(|e| DeviceError::ConsoleLog(path.clone(), e))?)
            }
        };
        let writer = ConsoleWriter::new(out);
        let panic_line = writer.panic_line();
        let irq_evt = EventFd::new(libc::EFD_NONBLOCK).map_err(DeviceError::EventFd)?;
        vm.fd()
            .register_irqfd(&irq_evt, serial::COM1_IRQ)
            .map_err(|e| DeviceError::Irq(serial::COM1_IRQ, e))?;
        let timer = BootTimer::new(vmm_start);
        let boot_time = timer.reached();

        let mut pio = Bus::default();
        pio.insert(
            Arc::new(Mutex::new(SerialConsole::new(irq_evt, writer))),
            serial::COM1_BASE,
            serial::COM1_LEN,
        )?;
        pio.insert(
            Arc::new(Mutex::new(I8042::new(exit))),
            i8042::I8042_BASE,
            i8042::I8042_LEN,
        )?;
        let mut mmio = Bus::default();
        mmio.insert(
            Arc::new(Mutex::new(timer)),
            DEVICE_MMIO_START,
            boot_timer::BOOT_TIMER_LEN,
        )?;
        Ok(DeviceManager {
            buses: IoBuses { pio, mmio },
            panic_line,
            boot_time,
        })
    }

    /// The buses, for the vCPU threads.
    pub fn buses(&self) -> IoBuses {
        self.buses.clone()
    }

    /// The kernel panic line, if the console saw one.
    pub fn panic_line(&self) -> Option<String> {
        self.panic_line
            .lock()
            .expect("panic-line lock poisoned")
            .clone()
    }

    /// When the guest wrote the boot-timer marker, after VMM start.
    pub fn boot_time(&self) -> Option<Duration> {
        *self.boot_time.lock().expect("boot-timer lock poisoned")
    }
}
