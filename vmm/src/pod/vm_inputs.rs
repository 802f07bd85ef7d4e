//! A pod VM's inputs ([`GuestInputs`]: kernel, initramfs, memory, vCPUs,
//! images) and their one conversion to the VMM's [`VmConfig`] and to the
//! arguments of the `unipod boot` child that runs it.
//!
//! # Design
//! The warm-start snapshot key hashes [`GuestInputs::vm_config`] and the
//! spawned VMM is given [`GuestInputs::boot_args`], which renders that same
//! config; `config_args` names every field of [`VmConfig`], so a new field
//! does not compile until it is rendered. A unit test in `cli` parses the
//! arguments back and compares the configs.

use std::ffi::OsString;
use std::os::fd::BorrowedFd;
use std::path::{Path, PathBuf};

use crate::config::{
    BlockConfig, BootProtocol, ConsoleOutput, CpuTemplate, MacAddr, NetConfig, VmConfig,
    VsockConfig, DEFAULT_MAC,
};

/// How the VM starts.
#[derive(Clone, Copy, Debug)]
pub enum BootMode<'a> {
    /// A full boot.
    Cold,
    /// Resume this snapshot directory.
    Restore(&'a Path),
    /// A full boot; SIGUSR1 saves the VM into this directory and ends it.
    SnapshotTo(&'a Path),
}

/// The fd number the VMM child finds its tap on.
pub(crate) const CHILD_TAP_FD: i32 = 3;

/// The backend of the VM's virtio-net device. Every pod VM has the device,
/// so that cold, template and restored VMs have the same devices.
#[derive(Clone, Copy, Debug)]
pub enum NetBackend<'a> {
    /// No tap: the guest's frames are dropped (`--network none`, and the
    /// warm-start template).
    Detached,
    /// The pod's tap (the child inherits it as fd 3) and MAC.
    Tap {
        /// The open tap.
        fd: BorrowedFd<'a>,
        /// The pod's MAC.
        mac: [u8; 6],
    },
}

/// Disk devices every pod VM has: the first ones hold the pod's images
/// (`/dev/vda`, `/dev/vdb`, ...), the rest are empty slots. Cold, template
/// and restored VMs all have this many, so that one warm-start snapshot
/// serves every pod of a memory size, whatever images it brings (the
/// snapshot key counts the disks, not their images).
pub const MAX_IMAGES_PER_POD: usize = 4;

/// The guest artifacts a pod VM is made from. Together with the CPU
/// template, all but `images` decide which snapshot fits.
#[derive(Clone, Debug)]
pub struct GuestInputs {
    /// Guest kernel.
    pub kernel: PathBuf,
    /// Initramfs with the agent as /init.
    pub initrd: PathBuf,
    /// Guest memory in MiB.
    pub mem_mib: u32,
    /// Virtual CPUs.
    pub vcpus: u8,
    /// The pod's image files (erofs), at most [`MAX_IMAGES_PER_POD`], given
    /// to the first disks in order; the template VM of a snapshot has none.
    pub images: Vec<PathBuf>,
    /// A free-page-reporting balloon, so memory the pod frees goes back to
    /// the host: on unless [`FREE_PAGE_REPORTING_ENV`] is `0` (to measure
    /// what it buys).
    pub free_page_reporting: bool,
}

/// Environment variable: `0` starts pod VMs without the balloon.
pub const FREE_PAGE_REPORTING_ENV: &str = "UNIPOD_FREE_PAGE_REPORTING";

impl GuestInputs {
    /// One vCPU and no images.
    pub fn new(kernel: PathBuf, initrd: PathBuf, mem_mib: u32) -> GuestInputs {
        GuestInputs {
            kernel,
            initrd,
            mem_mib,
            vcpus: 1,
            images: Vec::new(),
            free_page_reporting: std::env::var_os(FREE_PAGE_REPORTING_ENV).is_none_or(|v| v != "0"),
        }
    }

    /// The same VM with no images: what its warm-start template boots.
    pub fn template(&self) -> GuestInputs {
        GuestInputs {
            images: Vec::new(),
            ..self.clone()
        }
    }

    /// The configuration of this VM with a net device of address `mac`
    /// (its tap aside): what the snapshot key hashes, and what
    /// [`GuestInputs::boot_args`] renders for the VMM child. The first disks
    /// hold the images, the rest up to [`MAX_IMAGES_PER_POD`] are slots.
    pub fn vm_config(&self, mac: MacAddr) -> VmConfig {
        let slots = MAX_IMAGES_PER_POD.saturating_sub(self.images.len());
        VmConfig {
            kernel: self.kernel.clone(),
            initrd: Some(self.initrd.clone()),
            mem_mib: self.mem_mib,
            vcpus: self.vcpus,
            net: Some(NetConfig { mac, tap: None }),
            disks: self
                .images
                .iter()
                .cloned()
                .map(BlockConfig::image)
                .chain(std::iter::repeat_n(BlockConfig::slot(), slots))
                .collect(),
            free_page_reporting: self.free_page_reporting,
            ..VmConfig::default()
        }
    }

    /// The arguments of `unipod boot` for this VM: [`GuestInputs::vm_config`]
    /// with `files`, started as `mode`, its net device backed by `net` (a
    /// tap arrives as fd 3).
    pub fn boot_args(&self, files: &VmmFiles, mode: BootMode, net: &NetBackend) -> Vec<OsString> {
        let mac = match net {
            NetBackend::Tap { mac, .. } => MacAddr(*mac),
            NetBackend::Detached => DEFAULT_MAC,
        };
        let config = VmConfig {
            console: ConsoleOutput::File(files.console_log.to_path_buf()),
            vsock: Some(VsockConfig {
                cid: DEFAULT_CID,
                uds: files.vsock.to_path_buf(),
            }),
            api_sock: files.api.map(Path::to_path_buf),
            ..self.vm_config(mac)
        };
        let tap = matches!(net, NetBackend::Tap { .. });
        let mut args = config_args(&config, tap);
        match mode {
            BootMode::Cold => {}
            BootMode::Restore(dir) => args.extend(["--restore".into(), dir.into()]),
            BootMode::SnapshotTo(dir) => args.extend(["--snapshot-to".into(), dir.into()]),
        }
        args
    }
}

/// The guest CID of every pod VM (`unipod boot`'s default).
const DEFAULT_CID: u64 = 3;

/// Where one VMM child keeps its files.
pub struct VmmFiles<'a> {
    /// The hybrid-vsock socket.
    pub vsock: &'a Path,
    /// The guest console.
    pub console_log: &'a Path,
    /// The VMM's own stderr.
    pub vmm_log: &'a Path,
    /// The runtime API socket (hot-attaching images), if wanted.
    pub api: Option<&'a Path>,
}

/// `config` as `unipod boot` arguments; `tap`: the net device's tap is fd
/// [`CHILD_TAP_FD`], else it is detached.
fn config_args(config: &VmConfig, tap: bool) -> Vec<OsString> {
    let VmConfig {
        kernel,
        initrd,
        extra_cmdline,
        mem_mib,
        vcpus,
        console,
        cpu_template,
        boot_protocol,
        vsock,
        net,
        disks,
        api_sock,
        free_page_reporting,
    } = config;
    let mut args: Vec<OsString> = vec!["boot".into(), "--kernel".into(), kernel.into()];
    if let Some(initrd) = initrd {
        args.extend(["--initrd".into(), initrd.into()]);
    }
    if !extra_cmdline.is_empty() {
        args.extend(["--cmdline".into(), extra_cmdline.into()]);
    }
    args.extend([
        "--mem-mib".into(),
        mem_mib.to_string().into(),
        "--vcpus".into(),
        vcpus.to_string().into(),
    ]);
    if let Some(vsock) = vsock {
        args.extend(["--vsock-uds".into(), (&vsock.uds).into()]);
        if vsock.cid != DEFAULT_CID {
            args.extend(["--vsock-cid".into(), vsock.cid.to_string().into()]);
        }
    }
    if let ConsoleOutput::File(log) = console {
        args.extend(["--console-log".into(), log.into()]);
    }
    match cpu_template {
        CpuTemplate::Auto => {}
        CpuTemplate::Host => args.extend(["--cpu-template".into(), "host".into()]),
        CpuTemplate::NestedPvm => args.extend(["--cpu-template".into(), "nested-pvm".into()]),
    }
    match boot_protocol {
        BootProtocol::Auto => {}
        BootProtocol::Pvh => args.extend(["--boot-protocol".into(), "pvh".into()]),
        BootProtocol::Linux64 => args.extend(["--boot-protocol".into(), "linux64".into()]),
    }
    if let Some(api) = api_sock {
        args.extend(["--api-sock".into(), api.into()]);
    }
    let mut slots = 0usize;
    for disk in disks {
        match &disk.path {
            Some(image) => args.extend(["--disk".into(), image.into()]),
            None => slots += 1,
        }
    }
    args.extend(["--disk-slots".into(), slots.to_string().into()]);
    if *free_page_reporting {
        args.push("--free-page-reporting".into());
    }
    if let Some(net) = net {
        if tap {
            args.extend([
                "--net-tap-fd".into(),
                CHILD_TAP_FD.to_string().into(),
                "--net-mac".into(),
                net.mac.to_string().into(),
            ]);
        } else {
            args.push("--net-detached".into());
        }
    }
    args
}
