//! vCPUs: creation, per-vCPU CPUID and registers, the run loop that routes
//! I/O exits to the buses and reports how the guest ended, and the pause
//! that saves a vCPU's state for a snapshot.

use std::os::unix::thread::JoinHandleExt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use kvm_bindings::{
    kvm_cpuid_entry2, kvm_debugregs, kvm_lapic_state, kvm_mp_state, kvm_msr_entry, kvm_regs,
    kvm_sregs, kvm_vcpu_events, kvm_xcrs, kvm_xsave, CpuId, Msrs, KVM_EXIT_INTERNAL_ERROR,
    KVM_INTERNAL_ERROR_EMULATION, KVM_MAX_CPUID_ENTRIES,
};
use kvm_bindings::{KVM_SYSTEM_EVENT_CRASH, KVM_SYSTEM_EVENT_RESET, KVM_SYSTEM_EVENT_SHUTDOWN};
use kvm_ioctls::{Kvm, VcpuExit, VcpuFd};
use serde::{Deserialize, Serialize};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use crate::arch::{self, BootEntry};
use crate::config::CpuTemplate;
use crate::devices::log_limit::LogLimiter;
use crate::devices::Bus;
use crate::seccomp::{Seccomp, ThreadKind};
use crate::vstate::exit::{ExitSignal, GuestExit};
use crate::vstate::profile::GuestProfile;
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
    /// KVM refused one MSR of a saved state.
    #[error("vCPU {index}: KVM refused MSR {msr:#x} of the snapshot")]
    MsrRefused {
        /// vCPU index.
        index: u8,
        /// The MSR.
        msr: u32,
    },
    /// A snapshot's CPUID does not fit in a KVM CPUID list.
    #[error("vCPU {0}: the snapshot's CPUID has too many entries")]
    CpuidTooLong(u8),
    /// The vCPUs did not stop for the snapshot.
    #[error("the vCPUs did not pause within {0:?}")]
    PauseTimeout(Duration),
    /// A vCPU thread ended (the guest stopped) before it could pause.
    #[error("vCPU {0} stopped running before it could be paused")]
    EndedBeforePause(usize),
}

/// Maps a failed vCPU ioctl to an error naming the vCPU and the step.
fn kvm_error(index: u8, what: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> VcpuError {
    move |source| VcpuError::Kvm {
        index,
        what,
        source,
    }
}

/// Everything KVM keeps for one vCPU, saved while it is paused.
#[derive(Debug, Serialize, Deserialize)]
pub struct VcpuState {
    /// CPUID as set at boot.
    pub cpuid: Vec<kvm_cpuid_entry2>,
    /// Multiprocessing state (runnable, halted, ...).
    pub mp_state: kvm_mp_state,
    /// General-purpose registers.
    pub regs: kvm_regs,
    /// Segment, control and descriptor-table registers.
    pub sregs: kvm_sregs,
    /// FPU, SSE and extended state.
    pub xsave: kvm_xsave,
    /// Extended control registers; `None` where KVM has none to offer.
    pub xcrs: Option<kvm_xcrs>,
    /// Debug registers.
    pub debug_regs: kvm_debugregs,
    /// The in-kernel local APIC.
    pub lapic: kvm_lapic_state,
    /// Every MSR KVM could read, from its save list.
    pub msrs: Vec<kvm_msr_entry>,
    /// Pending exceptions, interrupts and NMIs.
    pub events: kvm_vcpu_events,
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
        let err = |what| kvm_error(index, what);
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

    /// Creates vCPU `index` and gives it a saved `state`.
    pub fn restore(vm: &Vm, index: u8, state: &VcpuState) -> Result<Vcpu, VcpuError> {
        let err = |what| kvm_error(index, what);
        let fd = vm
            .fd()
            .create_vcpu(u64::from(index))
            .map_err(err("create it"))?;
        // The order follows KVM's dependencies (as Firecracker does): CPUID
        // before anything it gates, the LAPIC before MSRs that point into it
        // (TSC deadline), events last.
        let cpuid =
            CpuId::from_entries(&state.cpuid).map_err(|_| VcpuError::CpuidTooLong(index))?;
        fd.set_cpuid2(&cpuid).map_err(err("restore CPUID"))?;
        fd.set_mp_state(state.mp_state)
            .map_err(err("restore the MP state"))?;
        fd.set_regs(&state.regs).map_err(err("restore registers"))?;
        fd.set_sregs(&state.sregs)
            .map_err(err("restore special registers"))?;
        // SAFETY: `state.xsave` is a plain kvm_xsave (4 KiB region, no
        // trailing data), the size KVM_SET_XSAVE reads.
        unsafe { fd.set_xsave(&state.xsave) }.map_err(err("restore the FPU state"))?;
        if let Some(xcrs) = &state.xcrs {
            fd.set_xcrs(xcrs).map_err(err("restore XCRs"))?;
        }
        fd.set_debug_regs(&state.debug_regs)
            .map_err(err("restore debug registers"))?;
        fd.set_lapic(&state.lapic)
            .map_err(err("restore the LAPIC"))?;
        let msrs = Msrs::from_entries(&state.msrs).map_err(|_| VcpuError::MsrRefused {
            index,
            msr: state.msrs.first().map_or(0, |m| m.index),
        })?;
        let set = fd.set_msrs(&msrs).map_err(err("restore MSRs"))?;
        if let Some(refused) = state.msrs.get(set) {
            return Err(VcpuError::MsrRefused {
                index,
                msr: refused.index,
            });
        }
        fd.set_vcpu_events(&state.events)
            .map_err(err("restore pending events"))?;
        Ok(Vcpu { fd, index })
    }

    /// Reads the vCPU's state. Only valid while it is out of `KVM_RUN`.
    fn save_state(&self, msr_indices: &[u32]) -> Result<VcpuState, VcpuError> {
        let index = self.index;
        let err = |what| kvm_error(index, what);
        // KVM_GET_MP_STATE may deliver pending LAPIC events, so it goes first
        // and the LAPIC is read after it.
        let mp_state = self.fd.get_mp_state().map_err(err("read the MP state"))?;
        let cpuid = self
            .fd
            .get_cpuid2(KVM_MAX_CPUID_ENTRIES)
            .map_err(err("read CPUID"))?;
        let xcrs = match self.fd.get_xcrs() {
            Ok(xcrs) => Some(xcrs),
            Err(e) if e.errno() == libc::EINVAL => None,
            Err(e) => return Err(err("read XCRs")(e)),
        };
        Ok(VcpuState {
            cpuid: cpuid.as_slice().to_vec(),
            mp_state,
            regs: self.fd.get_regs().map_err(err("read registers"))?,
            sregs: self.fd.get_sregs().map_err(err("read special registers"))?,
            xsave: self.fd.get_xsave().map_err(err("read the FPU state"))?,
            xcrs,
            debug_regs: self
                .fd
                .get_debug_regs()
                .map_err(err("read debug registers"))?,
            lapic: self.fd.get_lapic().map_err(err("read the LAPIC"))?,
            msrs: self.readable_msrs(msr_indices)?,
            events: self
                .fd
                .get_vcpu_events()
                .map_err(err("read pending events"))?,
        })
    }

    /// Reads the MSRs in `indices`, skipping the ones this KVM lists but
    /// cannot read (KVM_GET_MSRS stops at the first of those).
    fn readable_msrs(&self, indices: &[u32]) -> Result<Vec<kvm_msr_entry>, VcpuError> {
        let mut entries: Vec<kvm_msr_entry> = indices
            .iter()
            .map(|&index| kvm_msr_entry {
                index,
                ..Default::default()
            })
            .collect();
        let mut done = 0;
        while done < entries.len() {
            let mut msrs = Msrs::from_entries(&entries[done..]).map_err(|_| VcpuError::Kvm {
                index: self.index,
                what: "read MSRs",
                source: kvm_ioctls::Error::new(libc::E2BIG),
            })?;
            let read = self
                .fd
                .get_msrs(&mut msrs)
                .map_err(|source| VcpuError::Kvm {
                    index: self.index,
                    what: "read MSRs",
                    source,
                })?;
            entries[done..done + read].copy_from_slice(&msrs.as_slice()[..read]);
            done += read;
            if done < entries.len() {
                log::debug!(
                    "MSR {:#x} is listed but unreadable; not saved",
                    entries[done].index
                );
                entries.remove(done);
            }
        }
        Ok(entries)
    }

    /// Runs the vCPU on its own thread until the guest ends or `pause` asks
    /// it to stop.
    pub fn start(
        self,
        buses: IoBuses,
        mem: GuestMemoryMmap,
        exit: Arc<ExitSignal>,
        pause: Arc<Pause>,
        seccomp: Seccomp,
        profile: Option<Arc<GuestProfile>>,
    ) -> Result<JoinHandle<()>, VcpuError> {
        let index = self.index;
        std::thread::Builder::new()
            .name(format!("vcpu{index}"))
            .spawn(move || {
                if let Err(e) = seccomp.apply(ThreadKind::Vcpu) {
                    let msg = crate::error_chain::error_chain(&e, ": ");
                    exit.report(GuestExit::VcpuError(msg));
                    return;
                }
                if let Some(reason) = self.run(&buses, &mem, &pause, profile.as_deref()) {
                    exit.report(reason);
                }
            })
            .map_err(|e| VcpuError::Thread(index, e))
    }

    /// The run loop; `None` when it stopped for a pause.
    fn run(
        mut self,
        buses: &IoBuses,
        mem: &GuestMemoryMmap,
        pause: &Pause,
        profile: Option<&GuestProfile>,
    ) -> Option<GuestExit> {
        let mut xstate_log = LogLimiter::default();
        loop {
            if pause.requested.load(Ordering::SeqCst) {
                pause.deliver(self.index, self.save_state(&pause.msr_indices));
                return None;
            }
            let exit = match self.fd.run() {
                Ok(VcpuExit::IoOut(port, data)) => {
                    buses.pio.write(u64::from(port), data);
                    continue;
                }
                Ok(VcpuExit::IoIn(port, data)) => {
                    // Absent ISA devices float high.
                    if !buses.pio.read(u64::from(port), data) {
                        data.fill(0xff);
                    }
                    continue;
                }
                Ok(VcpuExit::MmioRead(addr, data)) => {
                    if !buses.mmio.read(addr, data) {
                        data.fill(0);
                    }
                    continue;
                }
                Ok(VcpuExit::MmioWrite(addr, data)) => {
                    match arch::xstate::decode(addr, data) {
                        Some(request) => {
                            if let Err(e) = arch::xstate::serve(&self.fd, mem, request) {
                                if xstate_log.allow() {
                                    log::warn!(
                                        "vCPU {}: guest request {request:?} failed: {e}",
                                        self.index
                                    );
                                }
                            }
                        }
                        None => {
                            buses.mmio.write(addr, data);
                        }
                    }
                    continue;
                }
                Ok(VcpuExit::Hlt) | Ok(VcpuExit::Intr) | Ok(VcpuExit::IrqWindowOpen) => continue,
                Ok(VcpuExit::Shutdown) => GuestExit::TripleFault { rip: self.rip() },
                Ok(VcpuExit::SystemEvent(kind, _)) => match kind {
                    KVM_SYSTEM_EVENT_SHUTDOWN | KVM_SYSTEM_EVENT_RESET => GuestExit::Reset,
                    KVM_SYSTEM_EVENT_CRASH => GuestExit::VcpuError("guest reported a crash".into()),
                    other => GuestExit::VcpuError(format!("unknown system event {other}")),
                },
                Ok(VcpuExit::InternalError) => self.internal_error(mem),
                Ok(VcpuExit::FailEntry(reason, cpu)) => GuestExit::VcpuError(format!(
                    "KVM entry failed: reason {reason:#x} on host CPU {cpu}"
                )),
                Ok(other) => GuestExit::VcpuError(format!("unhandled exit {other:?}")),
                Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => {
                    if let Some(profile) = profile {
                        profile.record(self.rip());
                    }
                    continue;
                }
                Err(e) => GuestExit::VcpuError(format!("KVM_RUN failed: {e}")),
            };
            return Some(exit);
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

/// Signal that kicks a vCPU thread out of `KVM_RUN`.
pub(super) fn kick_signal() -> i32 {
    libc::SIGRTMIN() + 1
}

extern "C" fn ignore_kick(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {}

/// Installs the kick handler; must run before the vCPU threads start.
/// Without a handler the kick signal would end the process.
pub fn install_kick_handler() -> Result<(), vmm_sys_util::errno::Error> {
    vmm_sys_util::signal::register_signal_handler(kick_signal(), ignore_kick)
}

/// Stops the vCPU threads at their next exit and collects their state.
pub struct Pause {
    requested: AtomicBool,
    msr_indices: Vec<u32>,
    states: Mutex<Vec<Option<Result<VcpuState, VcpuError>>>>,
    delivered: Condvar,
}

impl Pause {
    /// A pause for `count` vCPUs that will save the MSRs in `msr_indices`.
    pub fn new(count: usize, msr_indices: Vec<u32>) -> Pause {
        Pause {
            requested: AtomicBool::new(false),
            msr_indices,
            states: Mutex::new((0..count).map(|_| None).collect()),
            delivered: Condvar::new(),
        }
    }

    fn deliver(&self, index: u8, state: Result<VcpuState, VcpuError>) {
        let mut states = self.states.lock().expect("pause lock poisoned");
        states[usize::from(index)] = Some(state);
        self.delivered.notify_all();
    }

    /// Asks every vCPU thread in `threads` to stop and returns their states
    /// in vCPU order. A vCPU only sees the request between two `KVM_RUN`s,
    /// so the threads are kicked with a signal until they all answer: a kick
    /// can land just before a thread enters `KVM_RUN` and be missed.
    pub fn pause_all(
        &self,
        threads: &[JoinHandle<()>],
        timeout: Duration,
    ) -> Result<Vec<VcpuState>, VcpuError> {
        self.requested.store(true, Ordering::SeqCst);
        let deadline = Instant::now() + timeout;
        let mut states = self.states.lock().expect("pause lock poisoned");
        while states.iter().any(Option::is_none) {
            if Instant::now() >= deadline {
                return Err(VcpuError::PauseTimeout(timeout));
            }
            if let Some(i) =
                (0..threads.len()).find(|&i| states[i].is_none() && threads[i].is_finished())
            {
                return Err(VcpuError::EndedBeforePause(i));
            }
            for thread in threads {
                // SAFETY: the pthread_t belongs to a live JoinHandle, and the
                // kick signal has a handler (install_kick_handler).
                unsafe { libc::pthread_kill(thread.as_pthread_t(), kick_signal()) };
            }
            states = self
                .delivered
                .wait_timeout(states, Duration::from_millis(5))
                .expect("pause lock poisoned")
                .0;
        }
        states
            .iter_mut()
            .map(|s| s.take().expect("checked above"))
            .collect()
    }
}
