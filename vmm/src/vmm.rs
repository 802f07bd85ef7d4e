//! The live VMM: built once from a [`VmConfig`], then run until the guest ends.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use event_manager::{EventManager, EventOps, Events, MutEventSubscriber, SubscriberOps};
use kvm_ioctls::Kvm;
use nix::sys::signal::{SigSet, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use vmm_sys_util::epoll::EventSet;

use crate::api::{ApiError, ApiServer};
use crate::arch;
use crate::boot::{self, BootError};
use crate::config::{ConfigError, CpuTemplate, VmConfig};
use crate::device_manager::{DeviceError, DeviceManager};
use crate::devices::virtio::block;
use crate::exit_code::{EXIT_GUEST_CRASHED, EXIT_OK, EXIT_SETUP_ERROR, EXIT_SNAPSHOT_REJECTED};
use crate::seccomp::{Seccomp, SeccompError, ThreadKind};
use crate::snapshot::{self, HashMemo, Snapshot, SnapshotError, SnapshotInfo, MEMORY_FILE};
use crate::vstate::exit::{ExitSignal, GuestExit};
use crate::vstate::memory::{self, MemoryError};
use crate::vstate::profile::GuestProfile;
use crate::vstate::vcpu::{self, Pause, Vcpu, VcpuError};
use crate::vstate::vm::{Vm, VmError};

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
    /// A snapshot cannot be read or does not fit this VM.
    #[error(transparent)]
    Snapshot(#[from] SnapshotError),
    /// Restoring from a snapshot failed; the snapshot is unusable here.
    #[error("cannot restore from the snapshot in {}", .dir.display())]
    Restore {
        /// The snapshot directory.
        dir: PathBuf,
        /// Why.
        #[source]
        source: Box<VmmError>,
    },
    /// Saving a snapshot failed.
    #[error("cannot save a snapshot to {}", .dir.display())]
    SaveSnapshot {
        /// The snapshot directory.
        dir: PathBuf,
        /// Why.
        #[source]
        source: Box<VmmError>,
    },
    /// The signal that pauses vCPUs for a snapshot cannot be handled.
    #[error("the kick signal handler cannot be installed")]
    KickHandler(#[source] vmm_sys_util::errno::Error),
    /// The guest profile could not be started or written.
    #[error("guest profile {}", .0.display())]
    GuestProfile(PathBuf, #[source] std::io::Error),
    /// A seccomp filter cannot be built or installed.
    #[error(transparent)]
    Seccomp(#[from] SeccompError),
    /// The runtime API socket.
    #[error(transparent)]
    Api(#[from] ApiError),
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
    /// CPU time the process (all threads) had used by then.
    pub first_run_cpu: Duration,
    /// Peak RSS of the VMM process (VmHWM), KiB.
    pub vmm_hwm_kib: u64,
    /// Guest memory resident in the VMM at exit, KiB.
    pub guest_resident_kib: u64,
}

impl RunReport {
    /// The VMM process's exit code for this end of the guest.
    pub fn exit_code(&self) -> i32 {
        match self.exit {
            GuestExit::Reset | GuestExit::Snapshotted => EXIT_OK,
            GuestExit::Stopped(signo) => 128 + signo,
            _ => EXIT_GUEST_CRASHED,
        }
    }
}

impl VmmError {
    /// The VMM process's exit code when it failed with this error.
    pub fn exit_code(&self) -> i32 {
        match self {
            VmmError::Restore { .. } => EXIT_SNAPSHOT_REJECTED,
            _ => EXIT_SETUP_ERROR,
        }
    }
}

/// Starts the VM that `config` describes, restored from the snapshot in
/// `restore` or booted, and runs it to its end: what a VMM process does.
pub fn start_and_run(
    config: &VmConfig,
    restore: Option<&Path>,
    snapshot_to: Option<&Path>,
    seccomp: Seccomp,
    guest_profile: Option<&Path>,
    start: Instant,
) -> Result<RunReport, VmmError> {
    let vmm = match restore {
        Some(dir) => Vmm::restore(config, dir, start)?,
        None => Vmm::new(config, start)?,
    };
    vmm.run(snapshot_to, seccomp, guest_profile)
}

/// A VM ready to run.
pub struct Vmm {
    kvm: Kvm,
    config: VmConfig,
    template: CpuTemplate,
    vm: Vm,
    devices: DeviceManager,
    vcpus: Vec<Vcpu>,
    exit: Arc<ExitSignal>,
    vmm_start: Instant,
    api: Option<ApiServer>,
}

/// Opens each disk's image (`None` for an empty slot), in order.
fn open_disks(config: &VmConfig) -> Result<Vec<Option<std::fs::File>>, VmmError> {
    config
        .disks
        .iter()
        .map(|disk| disk.path.as_deref().map(block::open_image).transpose())
        .collect::<Result<_, _>>()
        .map_err(|e| VmmError::Devices(DeviceError::Block(e)))
}

/// The runtime API on `config`'s socket, if it asks for one; last of the
/// devices' host files, like the vsock socket.
fn bind_api(config: &VmConfig, devices: &DeviceManager) -> Result<Option<ApiServer>, VmmError> {
    Ok(config
        .api_sock
        .as_deref()
        .map(|path| ApiServer::bind(path, devices.disks()))
        .transpose()?)
}

/// KVM and the CPU template for `config`, after the checks every VM needs.
fn open_kvm(config: &VmConfig) -> Result<(Kvm, CpuTemplate), VmmError> {
    config.validate()?;
    let kvm = Kvm::new().map_err(VmError::OpenKvm)?;
    let host = arch::detect_host();
    let template = config.cpu_template.resolve(host);
    log::info!("host KVM: {host:?}; CPU template: {template:?}");
    Ok((kvm, template))
}

impl Vmm {
    /// Builds the VM described by `config`. `vmm_start` is when the process
    /// started, for the boot timer.
    pub fn new(config: &VmConfig, vmm_start: Instant) -> Result<Vmm, VmmError> {
        let (kvm, template) = open_kvm(config)?;

        let vm = Vm::new(&kvm, memory::create_guest_memory(config.mem_bytes())?)?;
        let kernel = boot::load_kernel(vm.memory(), &config.kernel, config.boot_protocol)?;
        let initrd = match &config.initrd {
            Some(path) => Some(boot::load_initrd(vm.memory(), path, kernel.end)?),
            None => None,
        };
        // Devices after the kernel, initrd and disk images: the console log
        // file and the vsock socket are only created once those inputs have
        // been checked, so a bad one leaves nothing behind.
        let images = open_disks(config)?;
        let exit = Arc::new(ExitSignal::new().map_err(VmmError::EventFd)?);
        let mut devices = DeviceManager::new(&vm, &config.console, exit.clone(), vmm_start, None)?;
        if let Some(vsock) = &config.vsock {
            devices.add_vsock(&vm, vsock, None)?;
        }
        if let Some(net) = &config.net {
            devices.add_net(&vm, net, None)?;
        }
        for image in images {
            devices.add_block(&vm, image, None)?;
        }
        if config.free_page_reporting {
            devices.add_balloon(&vm, None)?;
        }
        let api = bind_api(config, &devices)?;

        let mut cmdline = config.cmdline();
        let additions = devices.cmdline_additions();
        if !additions.is_empty() {
            cmdline = format!("{cmdline} {additions}");
        }
        let host = crate::config::cmdline::host_cmdline(template);
        if !host.is_empty() {
            cmdline = format!("{cmdline} {host}");
        }
        log::debug!("kernel cmdline: {cmdline}");
        boot::write_boot_info(vm.memory(), &kernel, &boot::cmdline_from(&cmdline)?, initrd)?;
        arch::setup_mptable(vm.memory(), config.vcpus)?;
        log::info!("kernel entry: {:?}", kernel.entry);

        let vcpus = (0..config.vcpus)
            .map(|i| Vcpu::new(&kvm, &vm, i, config.vcpus, template, kernel.entry))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Vmm {
            kvm,
            config: config.clone(),
            template,
            vm,
            devices,
            vcpus,
            exit,
            vmm_start,
            api,
        })
    }

    /// Builds the VM described by `config` from the snapshot in `dir`
    /// instead of booting it. The snapshot must have been taken with the
    /// same inputs (see [`snapshot::key`]). Its disks come back as empty
    /// slots, and those `config` gives an image get it attached.
    pub fn restore(config: &VmConfig, dir: &Path, vmm_start: Instant) -> Result<Vmm, VmmError> {
        // Outside the restore error: a missing image is not the snapshot's
        // fault, and must not get it thrown away.
        let images = open_disks(config)?;
        let mut vmm =
            Vmm::restore_inner(config, images, dir, vmm_start).map_err(|e| VmmError::Restore {
                dir: dir.to_path_buf(),
                source: Box::new(e),
            })?;
        // Outside as well: a socket in the way is not the snapshot's fault.
        vmm.api = bind_api(config, &vmm.devices)?;
        Ok(vmm)
    }

    fn restore_inner(
        config: &VmConfig,
        images: Vec<Option<std::fs::File>>,
        dir: &Path,
        vmm_start: Instant,
    ) -> Result<Vmm, VmmError> {
        let (kvm, template) = open_kvm(config)?;
        let memo = HashMemo::beside(dir);
        let key = snapshot::key(config, template, &memo)?;
        log::debug!("snapshot key {key} after {:?}", vmm_start.elapsed());
        let (saved, memory_file) = Snapshot::open(dir, &key, &memo)?;
        log::debug!("snapshot read and checked after {:?}", vmm_start.elapsed());
        let vm = Vm::new(&kvm, memory::restore(&memory_file, &saved.memory)?)?;
        vm.restore_state(&saved.vm)?;
        let vcpus = saved
            .vcpus
            .iter()
            .enumerate()
            .map(|(i, state)| Vcpu::restore(&vm, u8::try_from(i).unwrap_or(u8::MAX), state))
            .collect::<Result<Vec<_>, _>>()?;
        // Devices last: a restored vsock device raises its interrupt at once,
        // and that must land in the restored interrupt controllers.
        let exit = Arc::new(ExitSignal::new().map_err(VmmError::EventFd)?);
        let mut devices = DeviceManager::new(
            &vm,
            &config.console,
            exit.clone(),
            vmm_start,
            Some(&saved.devices),
        )?;
        match (&config.vsock, &saved.devices.vsock) {
            (Some(vsock), Some(state)) => devices.add_vsock(&vm, vsock, Some(state))?,
            (None, None) => {}
            (Some(_), None) => return Err(DeviceError::Mismatch("has no vsock device").into()),
            (None, Some(_)) => {
                return Err(DeviceError::Mismatch("has a vsock device; pass --vsock-uds").into())
            }
        }
        // The same order as at boot: each device gets the MMIO slot it had.
        match (&config.net, &saved.devices.net) {
            (Some(net), Some(state)) => devices.add_net(&vm, net, Some(state))?,
            (None, None) => {}
            (Some(_), None) => return Err(DeviceError::Mismatch("has no net device").into()),
            (None, Some(_)) => {
                return Err(DeviceError::Mismatch(
                    "has a net device; pass --net-tap-fd or --net-detached",
                )
                .into())
            }
        }
        let saved_disks = &saved.devices.blocks;
        if saved_disks.len() != images.len() {
            return Err(DeviceError::DiskCount {
                saved: saved_disks.len(),
                given: images.len(),
            }
            .into());
        }
        for (image, state) in images.into_iter().zip(saved_disks) {
            devices.add_block(&vm, image, Some(state))?;
        }
        match (config.free_page_reporting, &saved.devices.balloon) {
            (true, Some(state)) => devices.add_balloon(&vm, Some(state))?,
            (false, None) => {}
            (true, None) => return Err(DeviceError::Mismatch("has no balloon device").into()),
            (false, Some(_)) => {
                return Err(DeviceError::Mismatch(
                    "has a balloon device; pass --free-page-reporting",
                )
                .into())
            }
        }
        log::info!(
            "restored {} vCPU(s) from {} in {:?}",
            vcpus.len(),
            dir.display(),
            vmm_start.elapsed()
        );
        Ok(Vmm {
            kvm,
            config: config.clone(),
            template,
            vm,
            devices,
            vcpus,
            exit,
            vmm_start,
            api: None,
        })
    }

    /// Runs the guest until it ends, and reports how. With `snapshot_to`,
    /// SIGUSR1 pauses the VM, saves it there and ends it
    /// ([`GuestExit::Snapshotted`]).
    ///
    /// With `seccomp` on, each vCPU thread and then this thread install
    /// their filters before their loops start (see [`crate::seccomp`]).
    ///
    /// With `guest_profile`, the guest's RIP is sampled while it runs and
    /// the counts are written to that file at the end (see
    /// [`crate::vstate::profile`]).
    pub fn run(
        mut self,
        snapshot_to: Option<&Path>,
        seccomp: Seccomp,
        guest_profile: Option<&Path>,
    ) -> Result<RunReport, VmmError> {
        let mut manager = EventManager::<Arc<Mutex<dyn MutEventSubscriber + Send>>>::new()
            .map_err(VmmError::EventLoop)?;
        manager.add_subscriber(Arc::new(Mutex::new(ExitWatcher(self.exit.clone()))));
        // Before the vCPU threads exist, so they inherit the blocked mask and
        // the signals arrive only through the signalfd.
        let stop = StopSignals::new(self.exit.clone()).map_err(VmmError::Signals)?;
        let snapshot_requested = stop.snapshot_requested.clone();
        manager.add_subscriber(Arc::new(Mutex::new(stop)));
        for device in self.devices.subscribers() {
            manager.add_subscriber(device);
        }
        if let Some(api) = self.api.take() {
            manager.add_subscriber(Arc::new(Mutex::new(api)));
        }
        vcpu::install_kick_handler().map_err(VmmError::KickHandler)?;
        let msr_indices = match snapshot_to {
            Some(_) => self
                .kvm
                .get_msr_index_list()
                .map_err(|e| VmError::Kvm("list the MSRs to save", e))?
                .as_slice()
                .to_vec(),
            None => Vec::new(),
        };
        let pause = Arc::new(Pause::new(self.vcpus.len(), msr_indices));

        let profile = guest_profile.map(GuestProfile::new);
        let first_run = self.vmm_start.elapsed();
        let first_run_cpu = process_cpu_time();
        let mut threads = Vec::new();
        for vcpu in std::mem::take(&mut self.vcpus) {
            threads.push(vcpu.start(
                self.devices.buses(),
                self.vm.memory().clone(),
                self.exit.clone(),
                pause.clone(),
                seccomp,
                profile.clone(),
            )?);
        }
        let profile_error = |p: &GuestProfile, e| VmmError::GuestProfile(p.path().into(), e);
        // Declared after `threads`, so dropped (stopped) before them on
        // every return.
        let sampler = match &profile {
            // SAFETY: the sampler is finished or dropped before `threads`
            // (see above), and install_kick_handler ran above.
            Some(p) => Some(unsafe { p.start_sampler(&threads) }.map_err(|e| profile_error(p, e))?),
            None => None,
        };
        seccomp.apply(ThreadKind::Main)?;
        let exit = loop {
            if let Err(e) = manager.run() {
                self.devices.shutdown();
                return Err(VmmError::EventLoop(e));
            }
            if let Some(exit) = self.exit.peek() {
                break exit;
            }
            if snapshot_requested.swap(false, Ordering::SeqCst) {
                let Some(dir) = snapshot_to else {
                    log::warn!("SIGUSR1 ignored: no snapshot directory was given");
                    continue;
                };
                let saved = self.save_snapshot(&pause, &threads, dir);
                self.devices.shutdown();
                saved.map_err(|e| VmmError::SaveSnapshot {
                    dir: dir.to_path_buf(),
                    source: Box::new(e),
                })?;
                break GuestExit::Snapshotted;
            }
        };
        // A panicking guest reboots (panic=-1), so a reset after a panic line
        // is the panic.
        let exit = match (exit, self.devices.panic_line()) {
            (GuestExit::Reset, Some(line)) => GuestExit::KernelPanic(line),
            (exit, _) => exit,
        };
        self.devices.shutdown();
        if let (Some(profile), Some(sampler)) = (&profile, sampler) {
            sampler.finish().map_err(|e| profile_error(profile, e))?;
        }
        let (vmm_hwm_kib, guest_resident_kib) = memory_usage(self.vm.memory());
        // vCPU threads still in KVM_RUN end with the process; the VM's memory
        // stays mapped until then because the threads hold clones of it.
        drop(threads);
        Ok(RunReport {
            exit,
            boot_time: self.devices.boot_time(),
            first_run,
            first_run_cpu,
            vmm_hwm_kib,
            guest_resident_kib,
        })
    }
}

impl Vmm {
    /// Pauses the vCPUs and writes the whole VM to `dir`.
    fn save_snapshot(
        &self,
        pause: &Pause,
        threads: &[std::thread::JoinHandle<()>],
        dir: &Path,
    ) -> Result<(), VmmError> {
        let started = Instant::now();
        let vcpus = pause.pause_all(threads, Duration::from_secs(5))?;
        let vm = self.vm.save_state()?;
        let devices = self.devices.save_state();
        let path = dir.join(MEMORY_FILE);
        let io = |what| {
            let path = path.clone();
            move |source| SnapshotError::Io { path, what, source }
        };
        let file = std::fs::File::options()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .map_err(io("cannot create"))?;
        let regions = memory::save(self.vm.memory(), &file)?;
        let memory_len = file.metadata().map_err(io("cannot stat"))?.len();
        let memory_hash = snapshot::hash_file(&file).map_err(io("cannot read"))?;
        file.sync_all().map_err(io("cannot sync"))?;
        let created_unix = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        Snapshot {
            // No memo: this runs under the event loop's seccomp filter,
            // which has no stat or readlink for it.
            key: snapshot::key(&self.config, self.template, &HashMemo::default())?,
            info: SnapshotInfo {
                kernel: self.config.kernel.clone(),
                initrd: self.config.initrd.clone(),
                mem_mib: self.config.mem_mib,
                vcpus: self.config.vcpus,
                created_unix,
                free_page_reporting: self.config.free_page_reporting,
            },
            vm,
            vcpus,
            devices,
            memory: regions,
            memory_len,
            memory_hash,
        }
        .write_state(dir)?;
        log::info!(
            "snapshot saved to {} in {:?}",
            dir.display(),
            started.elapsed()
        );
        Ok(())
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
/// (the vsock socket file) before the process ends, and SIGUSR1 into a
/// snapshot request.
struct StopSignals {
    fd: SignalFd,
    exit: Arc<ExitSignal>,
    snapshot_requested: Arc<AtomicBool>,
}

impl StopSignals {
    fn new(exit: Arc<ExitSignal>) -> nix::Result<StopSignals> {
        let mut mask = SigSet::empty();
        mask.add(Signal::SIGINT);
        mask.add(Signal::SIGTERM);
        mask.add(Signal::SIGUSR1);
        mask.thread_block()?;
        let fd = SignalFd::with_flags(&mask, SfdFlags::SFD_NONBLOCK | SfdFlags::SFD_CLOEXEC)?;
        Ok(StopSignals {
            fd,
            exit,
            snapshot_requested: Arc::default(),
        })
    }
}

impl MutEventSubscriber for StopSignals {
    fn init(&mut self, ops: &mut EventOps) {
        if let Err(e) = ops.add(Events::new(&self.fd, EventSet::IN)) {
            log::error!("cannot watch for SIGINT/SIGTERM: {e}");
        }
    }

    fn process(&mut self, _events: Events, _ops: &mut EventOps) {
        while let Ok(Some(info)) = self.fd.read_signal() {
            let signo = i32::try_from(info.ssi_signo).unwrap_or(libc::SIGTERM);
            if signo == libc::SIGUSR1 {
                // The loop checks the flag after this returns.
                self.snapshot_requested.store(true, Ordering::SeqCst);
            } else {
                self.exit.report(GuestExit::Stopped(signo));
            }
        }
    }
}

/// CPU time used so far by this process, all threads; zero if unreadable.
fn process_cpu_time() -> Duration {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_PROCESS_CPUTIME_ID)
        .map(Duration::from)
        .unwrap_or_default()
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
