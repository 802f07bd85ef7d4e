//! How a VM ends, reported once by whichever thread sees it first (a vCPU, or
//! the i8042 reset line) and picked up by the event loop through an eventfd.

use std::sync::Mutex;

use vmm_sys_util::eventfd::EventFd;

/// The guest's fate.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum GuestExit {
    /// The guest reset or powered off (a clean `reboot -f`).
    Reset,
    /// The guest kernel panicked; the console's panic line.
    KernelPanic(String),
    /// Triple fault (KVM_EXIT_SHUTDOWN).
    TripleFault {
        /// Guest RIP at the fault.
        rip: u64,
    },
    /// KVM's instruction emulator could not run an instruction.
    EmulationFailure {
        /// Guest RIP.
        rip: u64,
        /// The instruction bytes at RIP, when readable.
        bytes: Vec<u8>,
    },
    /// KVM failed or returned an exit we cannot handle.
    VcpuError(String),
    /// The VMM was asked to stop (SIGINT or SIGTERM, by number).
    Stopped(i32),
    /// The VM was paused and saved as a snapshot (SIGUSR1).
    Snapshotted,
}

impl GuestExit {
    /// True when the guest ended on purpose.
    pub fn is_clean(&self) -> bool {
        *self == GuestExit::Reset
    }
}

impl std::fmt::Display for GuestExit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            GuestExit::Reset => write!(f, "guest shut down"),
            GuestExit::KernelPanic(line) => write!(f, "guest kernel panicked: {line}"),
            GuestExit::TripleFault { rip } => write!(f, "guest triple fault at RIP {rip:#x}"),
            GuestExit::EmulationFailure { rip, bytes } => {
                write!(
                    f,
                    "KVM emulation failure at RIP {rip:#x}, instruction bytes ["
                )?;
                for (i, b) in bytes.iter().enumerate() {
                    write!(f, "{}{b:02x}", if i == 0 { "" } else { " " })?;
                }
                write!(f, "]; on nested PVM hosts see docs/NESTED-KVM.md")
            }
            GuestExit::VcpuError(msg) => write!(f, "vCPU error: {msg}"),
            GuestExit::Stopped(signo) => write!(f, "VM stopped by signal {signo}"),
            GuestExit::Snapshotted => write!(f, "VM paused and saved as a snapshot"),
        }
    }
}

/// The first reported [`GuestExit`], plus an eventfd that wakes the event loop.
pub struct ExitSignal {
    evt: EventFd,
    reason: Mutex<Option<GuestExit>>,
}

impl ExitSignal {
    /// A signal with nothing reported yet.
    pub fn new() -> std::io::Result<Self> {
        Ok(ExitSignal {
            evt: EventFd::new(libc::EFD_NONBLOCK)?,
            reason: Mutex::new(None),
        })
    }

    /// Records `reason` unless another was recorded first, and wakes the loop.
    pub fn report(&self, reason: GuestExit) {
        self.reason
            .lock()
            .expect("exit lock poisoned")
            .get_or_insert(reason);
        // A full counter (2^64 - 2 writes) is the only failure; it still wakes.
        let _ = self.evt.write(1);
    }

    /// The recorded reason, if any.
    pub fn peek(&self) -> Option<GuestExit> {
        self.reason.lock().expect("exit lock poisoned").clone()
    }

    /// The eventfd the event loop waits on.
    pub fn eventfd(&self) -> &EventFd {
        &self.evt
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_report_wins_and_wakes() {
        let signal = ExitSignal::new().expect("eventfd");
        assert_eq!(signal.peek(), None);
        signal.report(GuestExit::TripleFault { rip: 1 });
        signal.report(GuestExit::Reset);
        assert_eq!(signal.peek(), Some(GuestExit::TripleFault { rip: 1 }));
        assert_eq!(signal.eventfd().read().expect("woken"), 2);
    }

    #[test]
    fn emulation_failure_message_shows_bytes() {
        let e = GuestExit::EmulationFailure {
            rip: 0xffff_ffff_8100_0000,
            bytes: vec![0x0f, 0xc7, 0x0f],
        };
        let msg = e.to_string();
        assert!(
            msg.contains("0xffffffff81000000") && msg.contains("[0f c7 0f]"),
            "{msg}"
        );
        assert!(!e.is_clean() && GuestExit::Reset.is_clean());
    }
}
