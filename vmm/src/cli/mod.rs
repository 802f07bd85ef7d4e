//! The `unipod` command line.
//!
//! # Exit codes
//! `unipod run -- CMD` exits with the container's exit code, or 125 when
//! unipod itself failed and 130 when interrupted (see [`run`]); `unipod run
//! MANIFEST` exits 0 when the pod Succeeded, 1 when it Failed, 125 when it
//! could not be created and 130 when interrupted (see [`crate::pod::supervisor`]);
//! `get`, `describe`, `logs`, `stop` and `rm` exit 0, or 1 on failure, and
//! `exec` with the command's exit code (see [`pods`]); `unipod snapshot`
//! and `unipod image` exit 0, or 1 on failure. `unipod boot`:
//! - 0: the guest shut down cleanly;
//! - 1: unipod could not set up or run the VM (bad kernel, no KVM, ...);
//! - 2: bad command-line usage;
//! - 3: the guest crashed (kernel panic, triple fault, emulation failure);
//! - 4: `--restore` refused the snapshot (corrupt, other version, other
//!   inputs) or KVM refused its state; nothing was started.

use std::path::{Path, PathBuf};
use std::time::Instant;

use clap::{Parser, Subcommand, ValueEnum};

pub mod image;
pub mod jsonpath;
pub mod login;
pub mod objects;
pub mod pods;
pub mod run;
pub mod snapshot;
pub mod wait;

pub use image::ImageArgs;
pub use run::RunArgs;
pub use snapshot::SnapshotArgs;

use crate::config::{
    BlockConfig, BootProtocol, ConsoleOutput, CpuTemplate, MacAddr, NetConfig, TapFd, VmConfig,
    VsockConfig, DEFAULT_MAC,
};
use crate::device_manager::DeviceError;
use crate::devices::virtio::net::{self, NetError};
use crate::seccomp::Seccomp;
use crate::vmm::{RunReport, VmmError};

pub use crate::error_chain::error_chain;
pub use crate::exit_code::{
    EXIT_GUEST_CRASHED, EXIT_OK, EXIT_SETUP_ERROR, EXIT_SNAPSHOT_REJECTED, EXIT_USAGE,
};
/// A directory where every VMM writes a guest profile (`--guest-profile`).
const GUEST_PROFILE_ENV: &str = "UNIPOD_GUEST_PROFILE";

/// Help after `unipod --help`: each command's exit codes in short.
const TOP_AFTER_HELP: &str = "\
Exit codes ('unipod COMMAND --help' has each command's table):
  run MANIFEST    0 the pod Succeeded (with --detach: it runs), 1 it Failed,
                  125 it could not be created, 130 interrupted
  run -- CMD      the container's exit code; 125 when unipod failed, 130
                  interrupted
  exec            the command's exit code; 125 when unipod could not run it
  wait            0 the condition was met, 1 timed out or no such pod
  boot            0 clean guest shutdown, 1 setup failed, 3 guest crashed,
                  4 snapshot refused, 130/143 stopped by SIGINT/SIGTERM
  other commands  0 done, 1 failed (the message says why)
  all commands    2 bad command-line usage

Set RUST_LOG=debug for more detail.";

/// Help after the commands that exit 0 or 1.
const PLAIN_AFTER_HELP: &str = "\
Exit codes:
  0  done
  1  failed (the message says why)
  2  bad command-line usage";

/// Help after `unipod boot --help`.
const AFTER_HELP: &str = "\
Exit codes:
  0  the guest shut down cleanly (e.g. 'reboot -f' in the guest)
  1  unipod could not set up or run the VM (bad kernel path, no /dev/kvm, ...)
  2  bad command-line usage
  3  the guest crashed: kernel panic, triple fault or KVM emulation failure
  4  --restore: the snapshot is unusable (corrupt, truncated, other format
     version, taken from another kernel/initrd/memory size); nothing started
  130, 143  stopped by SIGINT or SIGTERM (the VM is torn down cleanly)

Set RUST_LOG=debug for more detail.";

/// Run Kubernetes-style pods in lightweight KVM microVMs.
#[derive(Debug, Parser)]
#[command(name = "unipod", version, after_help = TOP_AFTER_HELP)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// unipod's subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Boot a kernel in a microVM and wait until the guest shuts down.
    ///
    /// The guest's serial console goes to stdout (or --console-log). The VM
    /// ends when the guest reboots or powers off; unipod then reports the
    /// guest's fate, the boot-timer reading and its own memory use on stderr.
    #[command(after_help = AFTER_HELP)]
    Boot(BootArgs),
    /// Run a Pod manifest, or one command, in a new pod VM.
    ///
    /// 'unipod run pod.yaml' runs a Kubernetes Pod manifest with Kubernetes
    /// semantics: its images (present, or pulled as imagePullPolicy says), init
    /// containers one by one, then the containers, restarts by
    /// restartPolicy with back-off. In the foreground it streams each
    /// container's output prefixed with the container's name in brackets and the pod's phases on
    /// stderr, and Ctrl-C stops the pod gracefully; --detach runs it in the
    /// background. Either way the pod stays listed by 'unipod get' until
    /// 'unipod rm'.
    ///
    /// 'unipod run FLAGS... -- CMD...' runs one command (a pod of one
    /// container, plus any --sidecar) in the agent's own root file system,
    /// streams its stdout and stderr as they are and reports the phases;
    /// Ctrl-C sends SIGTERM to the containers, a second Ctrl-C stops the VM.
    /// It is listed by 'unipod get' while it runs, and its pod directory
    /// goes when it ends.
    ///
    /// Examples: unipod run examples/pod.yaml
    ///           unipod run --name hello -- /bin/sh -c 'echo hi'
    #[command(after_help = RUN_AFTER_HELP)]
    Run(RunArgs),
    /// List manifest pods, or show one, as 'kubectl get pod' does.
    #[command(after_help = pods::GET_AFTER_HELP)]
    Get(pods::GetArgs),
    /// Show a pod in detail: containers, states, conditions, events.
    #[command(after_help = pods::COMMON_AFTER_HELP)]
    Describe(pods::DescribeArgs),
    /// Print a container's logs, or every container's (--all-containers).
    #[command(after_help = pods::LOGS_AFTER_HELP)]
    Logs(pods::LogsArgs),
    /// Run a command in a running container.
    #[command(after_help = pods::EXEC_AFTER_HELP)]
    Exec(pods::ExecArgs),
    /// Stop a pod gracefully; its directory and final status stay.
    #[command(after_help = pods::COMMON_AFTER_HELP)]
    Stop(pods::StopArgs),
    /// Remove a pod and everything it holds (VM, tap, IP lease, port
    /// forwards, logs).
    #[command(after_help = pods::COMMON_AFTER_HELP)]
    Rm(pods::RmArgs),
    /// Wait until pods are Ready, gone, or match a JSONPath, as 'kubectl
    /// wait'.
    #[command(after_help = wait::WAIT_AFTER_HELP)]
    Wait(wait::WaitArgs),
    /// Manage the warm-start snapshots 'unipod run' restores pods from.
    ///
    /// The first 'unipod run' for a kernel, initramfs and memory size boots
    /// a template VM, saves it once its agent is ready, and every later run
    /// restores that snapshot instead of booting. Snapshots live in the
    /// state directory's snapshots/, keyed by a hash of those inputs.
    #[command(after_help = PLAIN_AFTER_HELP)]
    Snapshot(SnapshotArgs),
    /// Pull container images from registries, import them from files (OCI
    /// layouts, 'docker save' tars), and list or remove them.
    ///
    /// A pull or an import checks every blob's digest, applies the layers and packs
    /// the result into a read-only erofs image in the state directory's
    /// images/, named by its manifest digest and its names (busybox:latest).
    #[command(after_help = image::IMAGE_AFTER_HELP)]
    Image(ImageArgs),
    /// Log in to a registry: check a user name and password with it and
    /// store them for pulls, as 'podman login' does.
    ///
    /// Example: echo "$TOKEN" | unipod login -u me --password-stdin ghcr.io
    #[command(after_help = login::LOGIN_AFTER_HELP)]
    Login(login::LoginArgs),
    /// Forget the credentials stored for a registry (or, with --all, for
    /// every registry).
    #[command(after_help = login::LOGIN_AFTER_HELP)]
    Logout(login::LogoutArgs),
    /// Store ConfigMaps and Secrets for pods to use, as 'kubectl apply -f'.
    ///
    /// Pods read them when each container starts (env, envFrom) and, for
    /// their volumes, while they run: applying a changed ConfigMap or Secret
    /// updates the files of running pods within seconds. Secrets are kept
    /// readable by root only and never printed.
    ///
    /// Example: unipod apply -f config.yaml
    #[command(after_help = PLAIN_AFTER_HELP)]
    Apply(objects::ApplyArgs),
    /// Delete pods as 'kubectl delete pod' does (a graceful stop, then
    /// 'unipod rm'), or a ConfigMap or Secret.
    #[command(after_help = pods::DELETE_AFTER_HELP)]
    Delete(pods::DeleteArgs),
}

const RUN_AFTER_HELP: &str = "\
Exit codes of 'unipod run MANIFEST':
  0    the pod Succeeded (every container exited 0 and none restarts);
       with --detach: the pod is Running (or already Succeeded)
  1    the pod Failed: a container failed and will not restart, an init
       container failed under restartPolicy Never, or the VM or agent failed
  125  the pod could not be created: invalid manifest, image not present
       and not pulled (the registry's reason is given),
       name taken, guest kernel or initramfs missing; nothing was left behind
  130  interrupted: Ctrl-C stopped the pod (a second one kills its VM)
  2    bad command-line usage

Exit codes of 'unipod run -- CMD':
  N    the container's exit code (128+N if a signal killed it; 127 command
       not found, 126 not executable)
  125  unipod failed: the VM did not boot, the agent did not answer or went
       silent (pod Unknown, then Failed), or the VMM died (an unusable
       warm-start snapshot is not a failure: it is removed and the pod
       boots cold)
  130  interrupted (second Ctrl-C)
  2    bad command-line usage

UNIPOD_RESTART_BACKOFF_MS sets the restart back-off base (Kubernetes: 10000
ms, doubling up to 300 s); tests use a short one.

Set RUST_LOG=debug for more detail.";

/// `unipod boot` arguments.
#[derive(Debug, clap::Args)]
pub struct BootArgs {
    /// Guest kernel: an ELF vmlinux (preferred) or a bzImage. 'make kernel'
    /// builds one at target/guest/vmlinux.
    #[arg(long, value_name = "PATH")]
    pub kernel: PathBuf,
    /// Initramfs (newc cpio) to pass to the kernel.
    #[arg(long, value_name = "PATH")]
    pub initrd: Option<PathBuf>,
    /// Extra kernel arguments, appended to unipod's defaults
    /// ("console=ttyS0 reboot=k panic=-1 quiet").
    #[arg(long, value_name = "STR", default_value = "")]
    pub cmdline: String,
    /// Guest memory in MiB.
    #[arg(long, value_name = "N", default_value_t = crate::config::DEFAULT_MEM_MIB)]
    pub mem_mib: u32,
    /// Number of vCPUs.
    #[arg(long, value_name = "N", default_value_t = 1)]
    pub vcpus: u8,
    /// Write the guest console to FILE instead of stdout.
    #[arg(long, value_name = "FILE")]
    pub console_log: Option<PathBuf>,
    /// CPUID template. 'auto' picks 'nested-pvm' when the kvm_pvm module is
    /// loaded, else 'host'.
    #[arg(long, value_enum, default_value_t = TemplateArg::Auto)]
    pub cpu_template: TemplateArg,
    /// Kernel entry protocol. 'auto' uses PVH when the kernel has a PVH note.
    #[arg(long, value_enum, default_value_t = ProtocolArg::Auto)]
    pub boot_protocol: ProtocolArg,
    /// Add a vsock device. Host clients connect to this Unix socket and write
    /// "CONNECT PORT" and a newline (Firecracker's hybrid vsock); guest connections to
    /// host port P reach a listener at PATH_P. The path must not exist.
    #[arg(long, value_name = "PATH")]
    pub vsock_uds: Option<PathBuf>,
    /// The guest's vsock CID (3 or more); needs --vsock-uds.
    #[arg(long, value_name = "N", default_value_t = 3, requires = "vsock_uds")]
    pub vsock_cid: u64,
    /// Add a virtio-net device whose frames go through the tap open at file
    /// descriptor FD. unipod inherits it from its parent and takes it over
    /// (it closes when the VM ends). The parent opens /dev/net/tun, attaches
    /// it with TUNSETIFF and IFF_TAP | IFF_NO_PI | IFF_VNET_HDR, and passes
    /// it as fd 3 or above; unipod sets the 12-byte vnet header size,
    /// nonblocking mode and the offloads the guest accepts.
    #[arg(
        long,
        value_name = "FD",
        value_parser = clap::value_parser!(i32).range(3..),
        group = "net"
    )]
    pub net_tap_fd: Option<i32>,
    /// Add the virtio-net device with no tap: what the guest sends is
    /// dropped and nothing arrives. A warm-start template boots like this,
    /// so that the guest has the device when a pod restores the snapshot
    /// with --net-tap-fd.
    #[arg(long, group = "net")]
    pub net_detached: bool,
    /// The virtio-net device's MAC address, as six hex bytes separated by
    /// colons; needs --net-tap-fd or --net-detached. After --restore the
    /// guest keeps the address it read at boot.
    #[arg(long, value_name = "MAC", default_value_t = DEFAULT_MAC, requires = "net")]
    pub net_mac: MacAddr,
    /// Add a read-only virtio-blk disk whose blocks come from the image file
    /// PATH (an erofs or ext4 image, or any file). Repeat it for more disks:
    /// the guest sees them in order as /dev/vda, /dev/vdb, ..., with serials
    /// unipod-disk0, unipod-disk1, ... (/sys/block/vdX/serial). Guest writes
    /// fail. A size that is not a multiple of 512 bytes reads as zeros up to
    /// the end of the last sector. With --restore, the image is attached to
    /// the snapshot's disk at that position, which should have been an empty
    /// slot (--disk-slots) when the snapshot was taken.
    #[arg(long = "disk", value_name = "PATH")]
    pub disks: Vec<PathBuf>,
    /// Add N empty disk slots after the --disk disks: read-only virtio-blk
    /// devices with no image, of size 0. A warm-start template boots with
    /// slots; a pod restored from its snapshot fills them with --disk, and
    /// the guest sees each new size at once (a config-change interrupt).
    /// With --restore, --disk and --disk-slots must add up to the disks the
    /// snapshot has.
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub disk_slots: u8,
    /// Serve the runtime API on the Unix socket PATH (created; it must not
    /// exist, and is removed at exit). A client sends "ATTACH-DISK" and a
    /// newline with an image's open fd (SCM_RIGHTS); unipod attaches it to
    /// the first empty disk slot and answers "OK INDEX" or "ERR MESSAGE".
    #[arg(long, value_name = "PATH")]
    pub api_sock: Option<PathBuf>,
    /// On SIGUSR1, pause the VM, save it as a snapshot into DIR (an
    /// existing, empty directory) and exit 0. 'unipod run' uses this to
    /// build its warm-start cache.
    #[arg(long, value_name = "DIR", conflicts_with = "restore")]
    pub snapshot_to: Option<PathBuf>,
    /// Resume the snapshot in DIR instead of booting. The kernel, initrd,
    /// memory, vCPUs, CPU template, command line, net device and number of
    /// disks must be the ones it was taken with (exit code 4 otherwise).
    #[arg(long, value_name = "DIR")]
    pub restore: Option<PathBuf>,
    /// Run without the seccomp filters on the VMM's threads, for debugging
    /// (a forbidden system call otherwise kills the VMM with SIGSYS).
    /// UNIPOD_NO_SECCOMP=1 does the same, and reaches the VMM that
    /// 'unipod run' starts.
    #[arg(long)]
    pub no_seccomp: bool,
    /// Add a virtio-balloon device that takes the guest's free page
    /// reports: memory the guest frees (in blocks of 4 MiB) goes back to
    /// the host about two seconds later, instead of staying with the VM.
    #[arg(long)]
    pub free_page_reporting: bool,
    /// Sample where the guest's vCPUs are every millisecond and write the
    /// counts per guest address to FILE when the VM ends (a developer tool;
    /// bench/guest_profile.py names the guest kernel functions).
    /// UNIPOD_GUEST_PROFILE=DIR does the same for the VMMs 'unipod run'
    /// starts, each writing DIR/vmm-PID.prof.
    #[arg(long, value_name = "FILE")]
    pub guest_profile: Option<PathBuf>,
}

/// `--cpu-template` values.
#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum TemplateArg {
    /// Detect the host.
    Auto,
    /// KVM's full CPUID.
    Host,
    /// Hide what nested PVM's emulator cannot run.
    NestedPvm,
}

/// `--boot-protocol` values.
#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum ProtocolArg {
    /// PVH if available, else Linux 64-bit.
    Auto,
    /// PVH.
    Pvh,
    /// Linux 64-bit boot protocol.
    Linux64,
}

impl From<&BootArgs> for VmConfig {
    fn from(args: &BootArgs) -> Self {
        VmConfig {
            kernel: args.kernel.clone(),
            initrd: args.initrd.clone(),
            extra_cmdline: args.cmdline.clone(),
            mem_mib: args.mem_mib,
            vcpus: args.vcpus,
            console: args
                .console_log
                .clone()
                .map_or(ConsoleOutput::Stdout, ConsoleOutput::File),
            cpu_template: match args.cpu_template {
                TemplateArg::Auto => CpuTemplate::Auto,
                TemplateArg::Host => CpuTemplate::Host,
                TemplateArg::NestedPvm => CpuTemplate::NestedPvm,
            },
            boot_protocol: match args.boot_protocol {
                ProtocolArg::Auto => BootProtocol::Auto,
                ProtocolArg::Pvh => BootProtocol::Pvh,
                ProtocolArg::Linux64 => BootProtocol::Linux64,
            },
            vsock: args.vsock_uds.clone().map(|uds| VsockConfig {
                cid: args.vsock_cid,
                uds,
            }),
            // The tap fd, if any, is taken by `net_config`.
            net: args.net_detached.then_some(NetConfig {
                mac: args.net_mac,
                tap: None,
            }),
            disks: args
                .disks
                .iter()
                .cloned()
                .map(BlockConfig::image)
                .chain(std::iter::repeat_n(
                    BlockConfig::slot(),
                    usize::from(args.disk_slots),
                ))
                .collect(),
            api_sock: args.api_sock.clone(),
            free_page_reporting: args.free_page_reporting,
        }
    }
}

/// The net device `args` ask for, with the inherited tap fd taken over.
/// Runs once per process, before unipod opens any file of its own.
fn net_config(args: &BootArgs) -> Result<Option<NetConfig>, NetError> {
    let tap = match args.net_tap_fd {
        // SAFETY: the fd was inherited from our parent to be the tap; clap
        // accepts --net-tap-fd once, `boot` calls this once, and nothing in
        // this process has opened or claimed that fd number before.
        Some(fd) => Some(TapFd::new(unsafe { net::take_inherited_fd(fd) }?)),
        None if args.net_detached => None,
        None => return Ok(None),
    };
    Ok(Some(NetConfig {
        mac: args.net_mac,
        tap,
    }))
}

/// Runs `unipod boot`; returns the process exit code.
pub fn boot(args: &BootArgs, start: Instant) -> Result<i32, VmmError> {
    let config = VmConfig {
        net: net_config(args).map_err(|e| VmmError::Devices(DeviceError::Net(e)))?,
        ..VmConfig::from(args)
    };
    let profile = args.guest_profile.clone().or_else(|| {
        std::env::var_os(GUEST_PROFILE_ENV)
            .map(|dir| Path::new(&dir).join(format!("vmm-{}.prof", std::process::id())))
    });
    let report = crate::vmm::start_and_run(
        &config,
        args.restore.as_deref(),
        args.snapshot_to.as_deref(),
        Seccomp::from_flag(args.no_seccomp),
        profile.as_deref(),
        start,
    )?;
    print_report(&report);
    Ok(report.exit_code())
}

fn print_report(r: &RunReport) {
    let boot = r.boot_time.map_or("not reached".to_string(), |d| {
        format!("{} ms", d.as_millis())
    });
    eprintln!("unipod: {}", r.exit);
    eprintln!(
        "unipod: boot-timer {boot}; first KVM_RUN {} us after start ({} us of CPU); VMM peak RSS {} KiB, of which guest memory {} KiB, VMM overhead {} KiB",
        r.first_run.as_micros(),
        r.first_run_cpu.as_micros(),
        r.vmm_hwm_kib,
        r.guest_resident_kib,
        r.vmm_hwm_kib.saturating_sub(r.guest_resident_kib)
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;
    use std::time::Duration;

    #[test]
    fn cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn boot_args_become_a_config() {
        let cli = Cli::try_parse_from([
            "unipod",
            "boot",
            "--kernel",
            "k",
            "--initrd",
            "i",
            "--mem-mib",
            "256",
            "--vcpus",
            "2",
            "--console-log",
            "c.log",
            "--cpu-template",
            "nested-pvm",
            "--boot-protocol",
            "linux64",
        ])
        .expect("valid args");
        let Command::Boot(args) = cli.command else {
            panic!("parsed as boot")
        };
        let cfg = VmConfig::from(&args);
        assert_eq!(cfg.kernel, PathBuf::from("k"));
        assert_eq!(cfg.initrd, Some(PathBuf::from("i")));
        assert_eq!((cfg.mem_mib, cfg.vcpus), (256, 2));
        assert_eq!(cfg.console, ConsoleOutput::File("c.log".into()));
        assert_eq!(cfg.cpu_template, CpuTemplate::NestedPvm);
        assert_eq!(cfg.boot_protocol, BootProtocol::Linux64);
    }

    fn parse_boot(extra: &[&str]) -> Result<BootArgs, clap::Error> {
        let args = ["unipod", "boot", "--kernel", "k"].iter().chain(extra);
        Cli::try_parse_from(args).map(|cli| match cli.command {
            Command::Boot(args) => args,
            _ => panic!("parsed as boot"),
        })
    }

    #[test]
    fn net_flags_choose_a_detached_device_and_its_mac() {
        let args = parse_boot(&[]).expect("valid");
        assert_eq!(net_config(&args).expect("no fd to take"), None);
        let args = parse_boot(&["--net-detached"]).expect("valid");
        assert_eq!(
            net_config(&args).expect("no fd to take"),
            Some(NetConfig {
                mac: DEFAULT_MAC,
                tap: None
            })
        );
        let args =
            parse_boot(&["--net-detached", "--net-mac", "02:00:00:00:00:09"]).expect("valid");
        let net = VmConfig::from(&args).net.expect("a net device");
        assert_eq!(net.mac.to_string(), "02:00:00:00:00:09");
    }

    #[test]
    fn bad_net_flags_are_usage_errors_naming_the_flag() {
        for (extra, flag) in [
            (
                &["--net-detached", "--net-mac", "02:00:00:00:00"][..],
                "--net-mac",
            ),
            (&["--net-mac", "02:00:00:00:00:01"], "--net-mac"),
            (&["--net-tap-fd", "2"], "--net-tap-fd"),
            (&["--net-tap-fd", "3", "--net-detached"], "--net-tap-fd"),
        ] {
            let err = parse_boot(extra).expect_err("refused");
            assert_eq!(err.exit_code(), EXIT_USAGE, "{extra:?}");
            assert!(err.to_string().contains(flag), "{extra:?}: {err}");
        }
    }

    #[test]
    fn an_inherited_tap_fd_is_taken_over() {
        use std::os::fd::IntoRawFd;
        let (ours, peer) = std::os::unix::net::UnixDatagram::pair().unwrap();
        let fd = ours.into_raw_fd().to_string();
        let args =
            parse_boot(&["--net-tap-fd", &fd, "--net-mac", "02:00:00:00:00:07"]).expect("valid");
        let net = net_config(&args).expect("fd taken").expect("a net device");
        assert_eq!(net.mac.to_string(), "02:00:00:00:00:07");
        let tap = net.tap.expect("a tap");
        nix::unistd::write(&tap, b"frame").unwrap();
        let mut buf = [0u8; 8];
        assert_eq!(peer.recv(&mut buf).unwrap(), 5, "the fd reaches the peer");

        let args = parse_boot(&["--net-tap-fd", &i32::MAX.to_string()]).expect("valid");
        let err = net_config(&args).expect_err("not open");
        assert!(
            err.to_string()
                .starts_with("--net-tap-fd 2147483647: not an open"),
            "{err}"
        );
    }

    #[test]
    fn disks_come_in_order_then_the_empty_slots() {
        let args = parse_boot(&["--disk", "a.erofs", "--disk-slots", "2", "--disk", "b.img"])
            .expect("valid");
        assert_eq!(
            VmConfig::from(&args).disks,
            vec![
                BlockConfig::image("a.erofs".into()),
                BlockConfig::image("b.img".into()),
                BlockConfig::slot(),
                BlockConfig::slot(),
            ]
        );
        assert!(VmConfig::from(&parse_boot(&[]).expect("valid"))
            .disks
            .is_empty());
        let args = parse_boot(&["--disk-slots", "200"]).expect("valid");
        assert!(matches!(
            VmConfig::from(&args).validate(),
            Err(crate::config::ConfigError::TooManyDisks(_))
        ));
        let err = parse_boot(&["--disk-slots", "-1"]).expect_err("refused");
        assert_eq!(err.exit_code(), EXIT_USAGE);
    }

    fn parse_run(args: &[&str]) -> Result<RunArgs, String> {
        let raw: Vec<std::ffi::OsString> = ["unipod", "run"]
            .iter()
            .chain(args)
            .map(Into::into)
            .collect();
        let cli = Cli::try_parse_from(&raw).map_err(|e| e.to_string())?;
        let Command::Run(mut run) = cli.command else {
            panic!("parsed as run")
        };
        run.split_manifest(&raw)?;
        Ok(run)
    }

    #[test]
    fn run_takes_a_manifest_or_a_command_after_dashes() {
        let run = parse_run(&["pod.yaml", "--detach"]).expect("valid");
        assert_eq!(run.manifests, [PathBuf::from("pod.yaml")]);
        assert!(run.command.is_empty() && run.detach);
        let run =
            parse_run(&["pod.yaml", "-f", "config.yaml", "--filename", "s.yaml"]).expect("valid");
        assert_eq!(
            run.manifests,
            [
                PathBuf::from("pod.yaml"),
                "config.yaml".into(),
                "s.yaml".into()
            ]
        );
        let run = parse_run(&["-f", "all.yaml"]).expect("valid");
        assert_eq!(run.manifests, [PathBuf::from("all.yaml")]);
        let run = parse_run(&["--name", "x", "--", "/bin/sh", "-c", "true"]).expect("valid");
        assert!(run.manifests.is_empty());
        assert_eq!(run.command, ["/bin/sh", "-c", "true"]);
        let run = parse_run(&["--", "true"]).expect("valid");
        assert_eq!(
            (run.manifests, run.command),
            (vec![], vec!["true".to_string()])
        );
        for (bad, why) in [
            (&["pod.yaml", "--name", "x"][..], "--name"),
            (&["pod.yaml", "--", "true"], "-- CMD"),
            (&["--detach", "--", "true"], "--detach needs a MANIFEST"),
        ] {
            let err = parse_run(bad).expect_err("refused");
            assert!(err.contains(why), "{bad:?}: {err}");
        }
        assert!(parse_run(&[]).is_err(), "CMD or MANIFEST is required");
        assert!(parse_run(&["a.yaml", "b.yaml"]).is_err());
    }

    #[test]
    fn a_pod_vms_boot_args_give_the_vmm_the_config_its_snapshot_key_hashes() {
        use crate::pod::vm_inputs::{BootMode, GuestInputs, NetBackend, VmmFiles};
        let inputs = GuestInputs {
            vcpus: 2,
            images: vec!["a.erofs".into()],
            free_page_reporting: true,
            ..GuestInputs::new("k".into(), "i".into(), 192)
        };
        let files = VmmFiles {
            vsock: Path::new("v.sock"),
            console_log: Path::new("c.log"),
            vmm_log: Path::new("vmm.log"),
            api: Some(Path::new("api.sock")),
        };
        let argv = inputs.boot_args(
            &files,
            BootMode::Restore(Path::new("snap")),
            &NetBackend::Detached,
        );
        let cli = Cli::try_parse_from(std::iter::once("unipod".into()).chain(argv))
            .expect("the VMM accepts its arguments");
        let Command::Boot(args) = cli.command else {
            panic!("parsed as boot")
        };
        assert_eq!(args.restore, Some(PathBuf::from("snap")));
        let parsed = VmConfig::from(&args);
        let expected = VmConfig {
            console: ConsoleOutput::File("c.log".into()),
            vsock: Some(VsockConfig {
                cid: 3,
                uds: "v.sock".into(),
            }),
            api_sock: Some("api.sock".into()),
            ..inputs.vm_config(DEFAULT_MAC)
        };
        assert_eq!(parsed, expected);
    }

    #[test]
    fn kubectl_style_flags_parse_and_conflict_as_kubectls() {
        let parse = |args: &[&str]| {
            Cli::try_parse_from(std::iter::once("unipod").chain(args.iter().copied()))
        };
        let Command::Wait(w) = parse(&["wait", "--for=condition=Ready", "web"])
            .unwrap()
            .command
        else {
            panic!("parsed as wait")
        };
        assert_eq!(
            w.timeout,
            std::time::Duration::from_secs(30),
            "kubectl's default"
        );
        assert!(parse(&["wait", "web"]).is_err(), "--for is required");
        let Command::Delete(d) = parse(&["delete", "pod", "web", "--grace-period=0", "--force"])
            .unwrap()
            .command
        else {
            panic!("parsed as delete")
        };
        assert_eq!((d.words.len(), d.grace_period, d.force), (2, 0, true));
        let Command::Logs(l) = parse(&["logs", "web", "--tail=2", "--prefix"])
            .unwrap()
            .command
        else {
            panic!("parsed as logs")
        };
        assert_eq!((l.tail, l.prefix, l.all_containers), (2, true, false));
        assert_eq!((l.since, l.timestamps), (None, false));
        let Command::Logs(l) = parse(&["logs", "web", "--since=1m30s", "--timestamps"])
            .unwrap()
            .command
        else {
            panic!("parsed as logs")
        };
        assert_eq!(
            (l.since, l.timestamps),
            (Some(Duration::from_secs(90)), true)
        );
        for bad in [
            &["logs", "web", "--all-containers", "-c", "a"][..],
            &["logs", "web", "--all-containers", "-f"],
            &["logs", "web", "--since=-5s"],
            &["logs", "web", "--since=5"],
            &["get", "-o", "jsonpath={.a"],
            &["get", "-l", "app in (web)"],
        ] {
            let err = parse(bad).expect_err("refused");
            assert_eq!(err.exit_code(), EXIT_USAGE, "{bad:?}");
        }
    }

    #[test]
    fn kernel_is_required() {
        let err = Cli::try_parse_from(["unipod", "boot"]).expect_err("missing --kernel");
        assert_eq!(err.exit_code(), EXIT_USAGE);
    }
}
