//! vCPUs: creation, per-vCPU CPUID and registers, and the run loop that
//! routes I/O exits to the buses and reports how the guest ended.

use std::sync::Arc;
use std::thread::JoinHandle;

use kvm_bindings::{
    CpuId, KVM_EXIT_INTERNAL_ERROR, KVM_INTERNAL_ERROR_EMULATION, KVM_MAX_CPUID_ENTRIES,
};
use kvm_bindings::{KVM_SYSTEM_EVENT_CRASH, KVM_SYSTEM_EVENT_RESET, KVM_SYSTEM_EVENT_SHUTDOWN};
use kvm_ioctls::{Kvm, VcpuExit, VcpuFd};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use crate::arch::{self, BootEntry};
use crate::config::CpuTemplate;
use crate::devices::Bus;
use crate::vstate::exit::{ExitSignal, GuestExit};
use crate::vstate::vm::Vm;

/// Errors while creating or configuring a vCPU.
#[derive(Debug, thiserror::Error)]
pub enum VcpuError {
    /// A KVM vCPU ioctl failed.
    #[error("vCPU {index}: cannot {what}")]
    Kvm {
        /// vCPU index.
        index: u8,
        /// What failed.
        what: &'static str,
        /// The ioctl's error.
        #[source]
        source: kvm_ioctls::Error,
    },
    /// Register setup failed.
    #[error("vCPU {0}: cannot set up registers")]
    Regs(u8, #[source] arch::RegsError),
    /// Spawning the thread failed.
    #[error("vCPU {0}: cannot start its thread")]
    Thread(u8, #[source] std::io::Error),
}

/// The buses a vCPU routes its I/O exits to.
#[derive(Clone)]
pub struct IoBuses {
    /// Port I/O.
    pub pio: Bus,
    /// MMIO.
    pub mmio: Bus,
}

/// One vCPU, configured and ready to run.
pub struct Vcpu {
    fd: VcpuFd,
    index: u8,
}

const MAX_INSN_LEN: usize = 15;

impl Vcpu {
    /// Creates vCPU `index` of `count` with `template` CPUID, set up to enter
    /// at `entry` (only the boot vCPU uses it).
    pub fn new(
        kvm: &Kvm,
        vm: &Vm,
        index: u8,
        count: u8,
        template: CpuTemplate,
        entry: BootEntry,
    ) -> Result<Vcpu, VcpuError> {
        let err = |what| {
            move |source| VcpuError::Kvm {
                index,
                what,
                source,
            }
        };
        let fd = vm
            .fd()
            .create_vcpu(u64::from(index))
            .map_err(err("create it"))?;
        let mut cpuid: CpuId = kvm
            .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
            .map_err(err("read supported CPUID"))?;
        arch::filter_cpuid(&mut cpuid, template, index, count);
        fd.set_cpuid2(&cpuid).map_err(err("set CPUID"))?;
        arch::configure_vcpu(&fd, index, entry, vm.memory())
            .map_err(|e| VcpuError::Regs(index, e))?;
        Ok(Vcpu { fd, index })
    }

    /// Runs the vCPU on its own thread until the guest ends.
    pub fn start(
        self,
        buses: IoBuses,
        mem: GuestMemoryMmap,
        exit: Arc<ExitSignal>,
    ) -> Result<JoinHandle<()>, VcpuError> {
        let index = self.index;
        std::thread::Builder::new()
            .name(format!("vcpu{index}"))
            .spawn(move || {
                let reason = self.run(&buses, &mem);
                exit.report(reason);
            })
            .map_err(|e| VcpuError::Thread(index, e))
    }

    fn run(mut self, buses: &IoBuses, mem: &GuestMemoryMmap) -> GuestExit {
        loop {
            match self.fd.run() {
                Ok(VcpuExit::IoOut(port, data)) => {
                    buses.pio.write(u64::from(port), data);
                }
                Ok(VcpuExit::IoIn(port, data)) => {
                    // Absent ISA devices float high.
                    if !buses.pio.read(u64::from(port), data) {
                        data.fill(0xff);
                    }
                }
                Ok(VcpuExit::MmioRead(addr, data)) => {
                    if !buses.mmio.read(addr, data) {
                        data.fill(0);
                    }
                }
                Ok(VcpuExit::MmioWrite(addr, data)) => {
                    buses.mmio.write(addr, data);
                }
                Ok(VcpuExit::Hlt) | Ok(VcpuExit::Intr) | Ok(VcpuExit::IrqWindowOpen) => {}
                Ok(VcpuExit::Shutdown) => return GuestExit::TripleFault { rip: self.rip() },
                Ok(VcpuExit::SystemEvent(kind, _)) => {
                    return match kind {
                        KVM_SYSTEM_EVENT_SHUTDOWN | KVM_SYSTEM_EVENT_RESET => GuestExit::Reset,
                        KVM_SYSTEM_EVENT_CRASH => {
                            GuestExit::VcpuError("guest reported a crash".into())
                        }
                        other => GuestExit::VcpuError(format!("unknown system event {other}")),
                    }
                }
                Ok(VcpuExit::InternalError) => return self.internal_error(mem),
                Ok(VcpuExit::FailEntry(reason, cpu)) => {
                    return GuestExit::VcpuError(format!(
                        "KVM entry failed: reason {reason:#x} on host CPU {cpu}"
                    ))
                }
                Ok(other) => return GuestExit::VcpuError(format!("unhandled exit {other:?}")),
                Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => {}
                Err(e) => return GuestExit::VcpuError(format!("KVM_RUN failed: {e}")),
            }
        }
    }

    fn rip(&self) -> u64 {
        self.fd.get_regs().map(|r| r.rip).unwrap_or(0)
    }

    fn internal_error(&mut self, mem: &GuestMemoryMmap) -> GuestExit {
        let run = self.fd.get_kvm_run();
        debug_assert_eq!(run.exit_reason, KVM_EXIT_INTERNAL_ERROR);
        // SAFETY: exit_reason is KVM_EXIT_INTERNAL_ERROR (we got
        // VcpuExit::InternalError), so `internal` is the union's live member.
        let suberror = unsafe { run.__bindgen_anon_1.internal.suberror };
        if suberror != KVM_INTERNAL_ERROR_EMULATION {
            return GuestExit::VcpuError(format!("KVM internal error, suberror {suberror}"));
        }
        let rip = self.rip();
        GuestExit::EmulationFailure {
            rip,
            bytes: self.instruction_bytes(rip, mem),
        }
    }

    /// Reads the instruction bytes at `rip`, stopping at a page boundary
    /// rather than translating a second page.
    fn instruction_bytes(&self, rip: u64, mem: &GuestMemoryMmap) -> Vec<u8> {
        let Ok(tr) = self.fd.translate_gva(rip) else {
            return Vec::new();
        };
        if tr.valid == 0 {
            return Vec::new();
        }
        let in_page = usize::try_from(0x1000 - (rip & 0xfff)).expect("at most 4096");
        let mut bytes = vec![0u8; MAX_INSN_LEN.min(in_page)];
        match mem.read_slice(&mut bytes, GuestAddress(tr.physical_address)) {
            Ok(()) => bytes,
            Err(_) => Vec::new(),
        }
    }
}
