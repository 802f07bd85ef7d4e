//! Creates the devices and puts them on the buses.
//!
//! # Design
//! Devices are never fields of [`crate::vmm::Vmm`]; they live on the buses,
//! and the manager keeps only the handles the VMM needs afterwards (the
//! console's panic line, the boot timer's reading, the disks to attach
//! images to).
//!
//! Virtio devices take MMIO windows and IRQs in the order they are added:
//! vsock, net, the disks, then the balloon. A restore adds them in the same order, so
//! each gets the window the guest knows it by.

use std::fs::File;
use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use event_manager::MutEventSubscriber;
use kvm_ioctls::IoEventAddress;
use serde::{Deserialize, Serialize};
use vmm_sys_util::eventfd::EventFd;

use crate::arch::layout::{DEVICE_MMIO_START, IRQ_BASE, IRQ_MAX};
use crate::config::{ConsoleOutput, NetConfig, TapFd, VsockConfig};
use crate::devices::legacy::serial::SavedSerial;
use crate::devices::legacy::{boot_timer, i8042, serial};
use crate::devices::legacy::{BootTimer, ConsoleWriter, SerialConsole, I8042};
use crate::devices::virtio::balloon::{Balloon, BalloonError, BalloonMetrics};
use crate::devices::virtio::block::{Block, BlockError, BlockMetrics};
use crate::devices::virtio::mmio::{
    MmioRestoreError, MmioState, MmioTransport, MMIO_WINDOW_LEN, QUEUE_NOTIFY_OFFSET,
};
use crate::devices::virtio::net::{Net, NetError, NetMetrics};
use crate::devices::virtio::vsock::{Vsock, VsockError};
use crate::devices::virtio::{Interrupt, VirtioDevice};
use crate::devices::{Bus, BusError};
use crate::vstate::exit::ExitSignal;
use crate::vstate::vcpu::IoBuses;
use crate::vstate::vm::Vm;

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
    /// Wiring a queue notification failed.
    #[error("cannot connect a virtio queue notification to KVM")]
    IoEvent(#[source] kvm_ioctls::Error),
    /// Two devices claim the same addresses (a bug in our layout).
    #[error("device layout conflict")]
    Bus(#[from] BusError),
    /// The vsock device.
    #[error(transparent)]
    Vsock(#[from] VsockError),
    /// The net device or its tap.
    #[error(transparent)]
    Net(#[from] NetError),
    /// A disk or its image.
    #[error(transparent)]
    Block(#[from] BlockError),
    /// The balloon device.
    #[error(transparent)]
    Balloon(#[from] BalloonError),
    /// No disk has that index (a bug in the caller).
    #[error("there is no disk {0}")]
    NoSuchDisk(usize),
    /// Every disk holds an image already.
    #[error("no free disk slot: all {0} disks hold an image; start the VM with more --disk-slots")]
    NoFreeSlot(usize),
    /// More virtio devices than IRQs.
    #[error("too many virtio devices: IRQ {0} is past the last one ({IRQ_MAX})")]
    TooManyDevices(u32),
    /// The tap fd cannot be duplicated for the device.
    #[error("cannot duplicate the tap fd for the net device")]
    TapDup(#[source] std::io::Error),
    /// A saved virtio device cannot be restored.
    #[error("cannot restore the {0} device from the snapshot")]
    Restore(&'static str, #[source] MmioRestoreError),
    /// The snapshot and the configuration disagree about a device.
    #[error("the snapshot {0}")]
    Mismatch(&'static str),
    /// The snapshot has another number of disks.
    #[error("the snapshot has {saved} disk(s) (images and slots); this VM asks for {given}; give as many --disk and --disk-slots as the snapshot was taken with")]
    DiskCount {
        /// In the snapshot.
        saved: usize,
        /// In the configuration.
        given: usize,
    },
}

/// The VM's disks, shared with whoever attaches images while the VM runs
/// (the runtime API, see [`crate::api`]).
#[derive(Clone, Default)]
pub struct Disks(Vec<Arc<Mutex<Block>>>);

impl Disks {
    /// Disks made from devices directly (tests).
    #[cfg(test)]
    pub(crate) fn from_blocks(blocks: Vec<Arc<Mutex<Block>>>) -> Disks {
        Disks(blocks)
    }

    /// Gives the empty slot `index` its image; the guest gets a
    /// config-change interrupt and rereads the capacity. Returns the
    /// capacity in 512-byte sectors.
    pub fn attach(&self, index: usize, image: File) -> Result<u64, DeviceError> {
        let block = self.0.get(index).ok_or(DeviceError::NoSuchDisk(index))?;
        let sectors = block
            .lock()
            .expect("virtio-blk lock poisoned")
            .attach(image)?;
        log::debug!("disk {index}: attached an image of {sectors} sectors");
        Ok(sectors)
    }

    /// Gives the first empty slot `image`; returns the slot's index (0 is
    /// /dev/vda) and the capacity in sectors.
    pub fn attach_to_free_slot(&self, image: File) -> Result<(usize, u64), DeviceError> {
        for (index, block) in self.0.iter().enumerate() {
            // Checked and filled under one lock, so two attaches cannot
            // pick the same slot.
            let mut block = block.lock().expect("virtio-blk lock poisoned");
            if block.is_detached() {
                let sectors = block.attach(image)?;
                log::info!("disk {index}: hot-attached an image of {sectors} sectors");
                return Ok((index, sectors));
            }
        }
        Err(DeviceError::NoFreeSlot(self.0.len()))
    }
}

/// Device state saved in a snapshot. Legacy devices other than the UART
/// (i8042, boot timer) have none.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DevicesState {
    /// The serial console's registers.
    pub serial: SavedSerial,
    /// The vsock transport, if the VM had one.
    pub vsock: Option<MmioState>,
    /// The net transport, if the VM had one (absent in older snapshots).
    #[serde(default)]
    pub net: Option<MmioState>,
    /// Each disk's transport, in order (absent in older snapshots). The
    /// images are not saved: a restored disk starts as an empty slot.
    #[serde(default)]
    pub blocks: Vec<MmioState>,
    /// The balloon's transport, if the VM had one (absent in older
    /// snapshots).
    #[serde(default)]
    pub balloon: Option<MmioState>,
}

/// Where the virtio-mmio windows start: right after the boot timer.
const VIRTIO_MMIO_START: u64 = DEVICE_MMIO_START + boot_timer::BOOT_TIMER_LEN;

/// A device the VMM's event loop must drive.
pub type Subscriber = Arc<Mutex<dyn MutEventSubscriber + Send>>;

/// A virtio device and its transport.
type VirtioHandles<D> = (Arc<Mutex<D>>, Arc<Mutex<MmioTransport>>);
/// The vsock device and its transport, kept for shutdown and snapshots.
type VsockHandles = VirtioHandles<Vsock>;
/// The net device and its transport, kept for metrics and snapshots.
type NetHandles = VirtioHandles<Net>;
/// A disk and its transport, kept for attaching, metrics and snapshots.
type BlockHandles = VirtioHandles<Block>;
/// The balloon and its transport, kept for metrics and snapshots.
type BalloonHandles = VirtioHandles<Balloon>;

/// The VM's devices, reachable through its buses.
pub struct DeviceManager {
    buses: IoBuses,
    subscribers: Vec<Subscriber>,
    serial: Arc<Mutex<SerialConsole>>,
    vsock: Option<VsockHandles>,
    net: Option<NetHandles>,
    blocks: Vec<BlockHandles>,
    balloon: Option<BalloonHandles>,
    /// `virtio_mmio.device=` announcements for the kernel command line.
    virtio_cmdline: Vec<String>,
    panic_line: Arc<Mutex<Option<String>>>,
    boot_time: Arc<Mutex<Option<Duration>>>,
}

impl DeviceManager {
    /// Creates the legacy devices: serial console (with its `saved`
    /// registers, after a restore), i8042 and boot timer.
    pub fn new(
        vm: &Vm,
        console: &ConsoleOutput,
        exit: Arc<ExitSignal>,
        vmm_start: Instant,
        saved: Option<&DevicesState>,
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

        let serial_console = Arc::new(Mutex::new(SerialConsole::new(
            irq_evt,
            writer,
            saved.map(|s| &s.serial),
        )));
        let mut pio = Bus::default();
        pio.insert(serial_console.clone(), serial::COM1_BASE, serial::COM1_LEN)?;
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
            subscribers: Vec::new(),
            serial: serial_console,
            vsock: None,
            net: None,
            blocks: Vec::new(),
            balloon: None,
            virtio_cmdline: Vec::new(),
            panic_line,
            boot_time,
        })
    }

    /// Adds the hybrid vsock device; with `saved` transport state (after a
    /// restore) it resumes where the snapshot left it and tells the guest
    /// that its old connections are gone.
    pub fn add_vsock(
        &mut self,
        vm: &Vm,
        config: &VsockConfig,
        saved: Option<&MmioState>,
    ) -> Result<(), DeviceError> {
        let (vsock, transport) = self.add_virtio(vm, saved, "vsock", |interrupt| {
            Ok(Vsock::new(config.cid, &config.uds, interrupt)?)
        })?;
        if saved.is_some_and(|s| s.activated) {
            let mut dev = vsock.lock().expect("vsock lock poisoned");
            if !dev.reset_transport() {
                log::warn!("the guest left no vsock event buffer; old connections linger");
            }
        }
        self.vsock = Some((vsock, transport));
        Ok(())
    }

    /// Adds the virtio-net device on `config`'s tap (or detached). With
    /// `saved` transport state (after a restore) it resumes where the
    /// snapshot left it; the tap may be another one than at snapshot time.
    pub fn add_net(
        &mut self,
        vm: &Vm,
        config: &NetConfig,
        saved: Option<&MmioState>,
    ) -> Result<(), DeviceError> {
        let tap = config
            .tap
            .as_ref()
            .map(TapFd::try_clone_owned)
            .transpose()
            .map_err(DeviceError::TapDup)?;
        self.net = Some(self.add_virtio(vm, saved, "net", |interrupt| {
            Ok(Net::new(config.mac.0, tap, interrupt)?)
        })?);
        Ok(())
    }

    /// Adds a read-only disk backed by `image`, or an empty slot; returns
    /// its index (0 is /dev/vda). With `saved` transport state (after a
    /// restore) it resumes where the snapshot left it, as an empty slot,
    /// and then takes `image` as [`DeviceManager::attach_block`] does, so
    /// the guest learns the new capacity.
    pub fn add_block(
        &mut self,
        vm: &Vm,
        image: Option<File>,
        saved: Option<&MmioState>,
    ) -> Result<usize, DeviceError> {
        let index = self.blocks.len();
        let serial = format!("unipod-disk{index}");
        let (initial, later) = match saved {
            None => (image, None),
            Some(_) => (None, image),
        };
        let disk = self.add_virtio(vm, saved, "virtio-blk", |interrupt| {
            Ok(Block::new(&serial, initial, interrupt)?)
        })?;
        self.blocks.push(disk);
        if let Some(image) = later {
            self.attach_block(index, image)?;
        }
        Ok(index)
    }

    /// Adds the free-page-reporting balloon. With `saved` transport state
    /// (after a restore) it resumes where the snapshot left it.
    pub fn add_balloon(&mut self, vm: &Vm, saved: Option<&MmioState>) -> Result<(), DeviceError> {
        self.balloon = Some(self.add_virtio(vm, saved, "virtio-balloon", |interrupt| {
            Ok(Balloon::new(interrupt)?)
        })?);
        Ok(())
    }

    /// The balloon's counters, if the VM has one.
    pub fn balloon_metrics(&self) -> Option<BalloonMetrics> {
        self.balloon
            .as_ref()
            .map(|(balloon, _)| balloon.lock().expect("balloon lock poisoned").metrics())
    }

    /// Gives the empty slot `index` its image; the guest gets a
    /// config-change interrupt and rereads the capacity. Returns the
    /// capacity in 512-byte sectors.
    pub fn attach_block(&self, index: usize, image: File) -> Result<u64, DeviceError> {
        self.disks().attach(index, image)
    }

    /// The disks, for attaching images while the VM runs.
    pub fn disks(&self) -> Disks {
        Disks(self.blocks.iter().map(|(block, _)| block.clone()).collect())
    }

    /// Each disk's counters, in order.
    pub fn block_metrics(&self) -> Vec<BlockMetrics> {
        self.blocks
            .iter()
            .map(|(block, _)| block.lock().expect("virtio-blk lock poisoned").metrics())
            .collect()
    }

    /// The net device's counters, if the VM has one.
    pub fn net_metrics(&self) -> Option<NetMetrics> {
        self.net
            .as_ref()
            .map(|(net, _)| net.lock().expect("net lock poisoned").metrics())
    }

    /// Saves the device state; the vCPUs must be paused and the event loop
    /// idle.
    pub fn save_state(&self) -> DevicesState {
        DevicesState {
            serial: self
                .serial
                .lock()
                .expect("serial lock poisoned")
                .save_state(),
            vsock: self
                .vsock
                .as_ref()
                .map(|(_, t)| t.lock().expect("virtio lock poisoned").save_state()),
            net: self
                .net
                .as_ref()
                .map(|(_, t)| t.lock().expect("virtio lock poisoned").save_state()),
            blocks: self
                .blocks
                .iter()
                .map(|(_, t)| t.lock().expect("virtio lock poisoned").save_state())
                .collect(),
            balloon: self
                .balloon
                .as_ref()
                .map(|(_, t)| t.lock().expect("virtio lock poisoned").save_state()),
        }
    }

    /// The MMIO window, IRQ and interrupt of the next virtio device.
    fn next_virtio_slot(&self, vm: &Vm) -> Result<(Arc<Interrupt>, u64, u32), DeviceError> {
        let index = self.virtio_cmdline.len();
        let base = VIRTIO_MMIO_START + MMIO_WINDOW_LEN * index as u64;
        let irq = IRQ_BASE + u32::try_from(index).expect("a handful of devices");
        if irq > IRQ_MAX {
            return Err(DeviceError::TooManyDevices(irq));
        }
        let irqfd = EventFd::new(libc::EFD_NONBLOCK).map_err(DeviceError::EventFd)?;
        vm.fd()
            .register_irqfd(&irqfd, irq)
            .map_err(|e| DeviceError::Irq(irq, e))?;
        Ok((Arc::new(Interrupt::new(irqfd)), base, irq))
    }

    /// Makes the device `make` builds on the next MMIO window and IRQ,
    /// with a new transport, or one resumed from `saved` (`name` says which
    /// device failed to), puts it on the bus, announces it to the kernel
    /// and hands it to the event loop.
    fn add_virtio<D>(
        &mut self,
        vm: &Vm,
        saved: Option<&MmioState>,
        name: &'static str,
        make: impl FnOnce(Arc<Interrupt>) -> Result<D, DeviceError>,
    ) -> Result<VirtioHandles<D>, DeviceError>
    where
        D: VirtioDevice + MutEventSubscriber + 'static,
    {
        let (interrupt, base, irq) = self.next_virtio_slot(vm)?;
        let device = Arc::new(Mutex::new(make(interrupt.clone())?));
        let transport = match saved {
            None => MmioTransport::new(device.clone(), interrupt, vm.memory().clone()),
            Some(state) => {
                MmioTransport::restore(device.clone(), interrupt, vm.memory().clone(), state)
                    .map_err(|e| DeviceError::Restore(name, e))?
            }
        };
        let transport = Arc::new(Mutex::new(transport));
        {
            let dev = device.lock().expect("virtio device lock poisoned");
            for (i, evt) in dev.queue_events().iter().enumerate() {
                let queue = u32::try_from(i).expect("a handful of queues");
                vm.fd()
                    .register_ioevent(
                        evt,
                        &IoEventAddress::Mmio(base + QUEUE_NOTIFY_OFFSET),
                        queue,
                    )
                    .map_err(DeviceError::IoEvent)?;
            }
        }
        self.buses
            .mmio
            .insert(transport.clone(), base, MMIO_WINDOW_LEN)?;
        self.virtio_cmdline
            .push(format!("virtio_mmio.device=4K@{base:#x}:{irq}"));
        self.subscribers.push(device.clone());
        Ok((device, transport))
    }

    /// What the kernel command line must add so the guest finds the devices.
    pub fn cmdline_additions(&self) -> String {
        self.virtio_cmdline.join(" ")
    }

    /// The devices the event loop drives.
    pub fn subscribers(&self) -> Vec<Subscriber> {
        self.subscribers.clone()
    }

    /// Releases host resources (sockets) before the process ends; vCPU
    /// threads keep the devices alive, so this cannot wait for Drop.
    pub fn shutdown(&self) {
        if let Some((vsock, _)) = &self.vsock {
            vsock.lock().expect("vsock lock poisoned").shutdown();
        }
        // The pod's network and disk counters end up in its VMM log.
        if let Some(metrics) = self.net_metrics() {
            log::info!("virtio-net: {metrics:?}");
        }
        for (i, metrics) in self.block_metrics().iter().enumerate() {
            log::info!("virtio-blk {i}: {metrics:?}");
        }
        if let Some(metrics) = self.balloon_metrics() {
            log::info!("virtio-balloon: {metrics:?}");
        }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::virtio::mmio::SavedQueue;
    use virtio_queue::{Queue, QueueT};

    fn transport_state(queues: usize) -> MmioState {
        let queue = Queue::new(256).expect("power of two").state();
        MmioState {
            status: 0xf,
            driver_features: 1 << 32,
            queue_select: 0,
            device_features_select: 0,
            driver_features_select: 0,
            activated: true,
            interrupt_status: 0,
            queues: vec![SavedQueue(queue); queues],
            config_generation: 0,
        }
    }

    #[test]
    fn devices_state_with_net_and_disks_survives_json() {
        let mut attached = transport_state(1);
        attached.config_generation = 1;
        attached.interrupt_status = 2;
        let state = DevicesState {
            serial: SavedSerial(vm_superio::serial::SerialState::default()),
            vsock: Some(transport_state(3)),
            net: Some(transport_state(2)),
            blocks: vec![transport_state(1), attached],
            balloon: Some(transport_state(3)),
        };
        let json = serde_json::to_string(&state).expect("serializable");
        let back: DevicesState = serde_json::from_str(&json).expect("deserializable");
        assert_eq!(back, state);
    }

    #[test]
    fn devices_state_from_before_the_net_and_block_devices_still_loads() {
        let state = DevicesState {
            serial: SavedSerial(vm_superio::serial::SerialState::default()),
            vsock: Some(transport_state(3)),
            net: None,
            blocks: Vec::new(),
            balloon: None,
        };
        let mut json = serde_json::to_value(&state).expect("serializable");
        let fields = json.as_object_mut().expect("a JSON object");
        for old in ["net", "blocks", "balloon"] {
            fields.remove(old).expect("serialized");
        }
        let back: DevicesState = serde_json::from_value(json).expect("old state loads");
        assert_eq!(back, state);
    }
}
