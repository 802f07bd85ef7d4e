//! The live VMM: built once from a [`VmConfig`], then run until the guest ends.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use event_manager::{EventManager, EventOps, Events, MutEventSubscriber, SubscriberOps};
use kvm_ioctls::Kvm;
use nix::sys::signal::{SigSet, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use vmm_sys_util::epoll::EventSet;

use crate::arch;
use crate::boot::{self, BootError};
use crate::config::{ConfigError, CpuTemplate, VmConfig};
use crate::device_manager::{DeviceError, DeviceManager};
use crate::vstate::exit::{ExitSignal, GuestExit};
use crate::vstate::memory::{self, MemoryError};
use crate::vstate::vcpu::{Vcpu, VcpuError};
use crate::vstate::vm::{Vm, VmError};

/// Kernel switches for nested PVM hosts. The CPUID template alone is not
/// enough there: some of the kernel's early `cpuid` reads see the host CPU, so
/// the features are also turned off by name (see docs/NESTED-KVM.md).
pub const NESTED_PVM_CMDLINE: &str =
    "noxsave nosmap nosmep clearcpuid=smap,smep,umip,fsgsbase,popcnt,cx16";

/// Errors while building or running the VMM.
#[derive(Debug, thiserror::Error)]
pub enum VmmError {
    /// Invalid configuration.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// Guest memory.
    #[error(transparent)]
    Memory(#[from] MemoryError),
    /// KVM VM setup.
    #[error(transparent)]
    Vm(#[from] VmError),
    /// Kernel or initrd loading.
    #[error(transparent)]
    Boot(#[from] BootError),
    /// Device setup.
    #[error(transparent)]
    Devices(#[from] DeviceError),
    /// vCPU setup.
    #[error(transparent)]
    Vcpu(#[from] VcpuError),
    /// MP table.
    #[error(transparent)]
    Mptable(#[from] arch::MptableError),
    /// The event loop failed.
    #[error("event loop failed: {0}")]
    EventLoop(event_manager::Error),
    /// An eventfd could not be created.
    #[error("cannot create the exit eventfd")]
    EventFd(#[source] std::io::Error),
    /// SIGINT/SIGTERM handling could not be set up.
    #[error("cannot set up SIGINT/SIGTERM handling")]
    Signals(#[source] nix::Error),
    /// SMP guests hang on this host.
    #[error("--vcpus {0}: nested PVM hosts cannot start secondary vCPUs (the guest hangs at \"Booting SMP configuration\"; see docs/NESTED-KVM.md); use --vcpus 1")]
    SmpOnNestedPvm(u8),
}

/// What a finished VM reports.
#[derive(Clone, Debug)]
pub struct RunReport {
    /// How the guest ended.
    pub exit: GuestExit,
    /// When the guest wrote the boot-timer marker, after VMM start.
    pub boot_time: Option<Duration>,
    /// Time from VMM start to the first `KVM_RUN`.
    pub first_run: Duration,
    /// Peak RSS of the VMM process (VmHWM), KiB.
    pub vmm_hwm_kib: u64,
    /// Guest memory resident in the VMM at exit, KiB.
    pub guest_resident_kib: u64,
}

/// A VM ready to run.
pub struct Vmm {
    vm: Vm,
    devices: DeviceManager,
    vcpus: Vec<Vcpu>,
    exit: Arc<ExitSignal>,
    vmm_start: Instant,
}

impl Vmm {
    /// Builds the VM described by `config`. `vmm_start` is when the process
    /// started, for the boot timer.
    pub fn new(config: &VmConfig, vmm_start: Instant) -> Result<Vmm, VmmError> {
        config.validate()?;
        let kvm = Kvm::new().map_err(VmError::OpenKvm)?;
        let host = arch::detect_host();
        if host == arch::HostKind::NestedPvm && config.vcpus > 1 {
            return Err(VmmError::SmpOnNestedPvm(config.vcpus));
        }
        let template = config.cpu_template.resolve(host);
        log::info!("host KVM: {host:?}; CPU template: {template:?}");

        let vm = Vm::new(&kvm, memory::create_guest_memory(config.mem_bytes())?)?;
        let kernel = boot::load_kernel(vm.memory(), &config.kernel, config.boot_protocol)?;
        let initrd = match &config.initrd {
            Some(path) => Some(boot::load_initrd(vm.memory(), path, kernel.end)?),
            None => None,
        };
        // Devices after the kernel and initrd: the console log file and the
        // vsock socket are only created once those inputs have been checked,
        // so a bad kernel leaves nothing behind.
        let exit = Arc::new(ExitSignal::new().map_err(VmmError::EventFd)?);
        let mut devices = DeviceManager::new(&vm, &config.console, exit.clone(), vmm_start)?;
        if let Some(vsock) = &config.vsock {
            devices.add_vsock(&vm, vsock)?;
        }

        let mut cmdline = config.cmdline();
        let additions = devices.cmdline_additions();
        if !additions.is_empty() {
            cmdline = format!("{cmdline} {additions}");
        }
        if template == CpuTemplate::NestedPvm {
            cmdline = format!("{cmdline} {NESTED_PVM_CMDLINE}");
        }
        log::debug!("kernel cmdline: {cmdline}");
        boot::write_boot_info(vm.memory(), &kernel, &boot::cmdline_from(&cmdline)?, initrd)?;
        arch::setup_mptable(vm.memory(), config.vcpus)?;
        log::info!("kernel entry: {:?}", kernel.entry);

        let vcpus = (0..config.vcpus)
            .map(|i| Vcpu::new(&kvm, &vm, i, config.vcpus, template, kernel.entry))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Vmm {
            vm,
            devices,
            vcpus,
            exit,
            vmm_start,
        })
    }

    /// Runs the guest until it ends, and reports how.
    pub fn run(self) -> Result<RunReport, VmmError> {
        let mut manager = EventManager::<Arc<Mutex<dyn MutEventSubscriber + Send>>>::new()
            .map_err(VmmError::EventLoop)?;
        manager.add_subscriber(Arc::new(Mutex::new(ExitWatcher(self.exit.clone()))));
        // Before the vCPU threads exist, so they inherit the blocked mask and
        // SIGINT/SIGTERM arrive only through the signalfd.
        let stop = StopSignals::new(self.exit.clone()).map_err(VmmError::Signals)?;
        manager.add_subscriber(Arc::new(Mutex::new(stop)));
        for device in self.devices.subscribers() {
            manager.add_subscriber(device);
        }

        let first_run = self.vmm_start.elapsed();
        let mut threads = Vec::new();
        for vcpu in self.vcpus {
            threads.push(vcpu.start(
                self.devices.buses(),
                self.vm.memory().clone(),
                self.exit.clone(),
            )?);
        }
        let exit = loop {
            if let Err(e) = manager.run() {
                self.devices.shutdown();
                return Err(VmmError::EventLoop(e));
            }
            if let Some(exit) = self.exit.peek() {
                break exit;
            }
        };
        // A panicking guest reboots (panic=-1), so a reset after a panic line
        // is the panic.
        let exit = match (exit, self.devices.panic_line()) {
            (GuestExit::Reset, Some(line)) => GuestExit::KernelPanic(line),
            (exit, _) => exit,
        };
        self.devices.shutdown();
        let (vmm_hwm_kib, guest_resident_kib) = memory_usage(self.vm.memory());
        // vCPU threads still in KVM_RUN end with the process; the VM's memory
        // stays mapped until then because the threads hold clones of it.
        drop(threads);
        Ok(RunReport {
            exit,
            boot_time: self.devices.boot_time(),
            first_run,
            vmm_hwm_kib,
            guest_resident_kib,
        })
    }
}

/// Wakes the event loop when the guest ends.
struct ExitWatcher(Arc<ExitSignal>);

impl MutEventSubscriber for ExitWatcher {
    fn init(&mut self, ops: &mut EventOps) {
        if let Err(e) = ops.add(Events::new(self.0.eventfd(), EventSet::IN)) {
            log::error!("cannot watch the exit eventfd: {e}");
        }
    }

    fn process(&mut self, _events: Events, _ops: &mut EventOps) {
        // Drain the counter; the reason itself is read by the loop.
        let _ = self.0.eventfd().read();
    }
}

/// Turns SIGINT and SIGTERM into an orderly stop, so devices can clean up
/// (the vsock socket file) before the process ends.
struct StopSignals {
    fd: SignalFd,
    exit: Arc<ExitSignal>,
}

impl StopSignals {
    fn new(exit: Arc<ExitSignal>) -> nix::Result<StopSignals> {
        let mut mask = SigSet::empty();
        mask.add(Signal::SIGINT);
        mask.add(Signal::SIGTERM);
        mask.thread_block()?;
        let fd = SignalFd::with_flags(&mask, SfdFlags::SFD_NONBLOCK | SfdFlags::SFD_CLOEXEC)?;
        Ok(StopSignals { fd, exit })
    }
}

impl MutEventSubscriber for StopSignals {
    fn init(&mut self, ops: &mut EventOps) {
        if let Err(e) = ops.add(Events::new(&self.fd, EventSet::IN)) {
            log::error!("cannot watch for SIGINT/SIGTERM: {e}");
        }
    }

    fn process(&mut self, _events: Events, _ops: &mut EventOps) {
        if let Ok(Some(info)) = self.fd.read_signal() {
            let signo = i32::try_from(info.ssi_signo).unwrap_or(libc::SIGTERM);
            self.exit.report(GuestExit::Stopped(signo));
        }
    }
}

/// VmHWM of this process and the resident size of guest memory, in KiB,
/// from /proc/self/status and /proc/self/smaps. Zero when unreadable.
fn memory_usage(mem: &vm_memory::GuestMemoryMmap) -> (u64, u64) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let hwm = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0);
    let smaps = std::fs::read_to_string("/proc/self/smaps").unwrap_or_default();
    let guest_starts: Vec<u64> = memory::host_ranges(mem)
        .into_iter()
        .map(|(start, _)| start)
        .collect();
    (hwm, resident_kib_of(&smaps, &guest_starts))
}

/// Sums the `Rss:` of the smaps mappings that start at `starts`.
fn resident_kib_of(smaps: &str, starts: &[u64]) -> u64 {
    let mut total = 0;
    let mut in_guest = false;
    for line in smaps.lines() {
        let first = line.split_whitespace().next().unwrap_or("");
        if let Some((start, _)) = first
            .split_once('-')
            .filter(|(s, _)| s.bytes().all(|b| b.is_ascii_hexdigit()))
        {
            in_guest = u64::from_str_radix(start, 16).is_ok_and(|s| starts.contains(&s));
        } else if in_guest {
            if let Some(v) = line.strip_prefix("Rss:") {
                total += v
                    .trim()
                    .trim_end_matches("kB")
                    .trim()
                    .parse::<u64>()
                    .unwrap_or(0);
            }
        }
    }
    total
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn smaps_rss_is_summed_for_guest_mappings_only() {
        let smaps = "\
7f0000000000-7f0008000000 rw-p 00000000 00:00 0
Size:             131072 kB
Rss:               20480 kB
7f0010000000-7f0010001000 rw-p 00000000 00:00 0
Rss:                   4 kB
";
        assert_eq!(resident_kib_of(smaps, &[0x7f00_0000_0000]), 20480);
        assert_eq!(resident_kib_of(smaps, &[0x1234]), 0);
    }
}
