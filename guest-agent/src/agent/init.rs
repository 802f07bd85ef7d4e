//! PID-1 plumbing: the early mounts, stdio, the kernel command line and
//! powering the guest off.
//!
//! # Design
//!
//! Mount failures are logged and skipped, never fatal: an agent without
//! `/tmp` can still run a container and report what went wrong, while an agent
//! that gives up leaves the host with nothing but a dead VM. When the process
//! is not PID 1 (a developer running it on a workstation) the mounts are
//! skipped and "power off" is a plain exit, so it cannot shadow the host's
//! `/dev` or reboot it.
//!
//! The VMM runs the guest with `reboot=k`, so a reboot is how the VM ends:
//! [`power_off`] syncs and calls `reboot(RB_AUTOBOOT)`. PID 1 must never
//! return (the kernel would panic), so that function diverges.

#![forbid(unsafe_code)]

use std::collections::HashSet;
use std::fs;
use std::os::fd::{AsRawFd, IntoRawFd};
use std::path::Path;
use std::time::Duration;

use nix::errno::Errno;
use nix::fcntl::{open, OFlag};
use nix::mount::{mount, MsFlags};
use nix::sys::reboot::{reboot, set_cad_enabled, RebootMode};
use nix::sys::stat::Mode;

use super::logger::Chain;

/// Kernel command-line key for the heartbeat period in milliseconds.
pub const HEARTBEAT_KEY: &str = "unipod.heartbeat_ms";

/// Errors of the PID-1 setup steps.
#[derive(Debug, thiserror::Error)]
pub enum InitError {
    /// A mount point could not be created.
    #[error("cannot create mount point {path}")]
    MountPoint {
        /// The directory.
        path: &'static str,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A file system could not be mounted.
    #[error("cannot mount {fstype} on {target}")]
    Mount {
        /// The file system type.
        fstype: &'static str,
        /// The mount point.
        target: &'static str,
        /// The cause.
        #[source]
        source: Errno,
    },
    /// A kernel command-line value is malformed.
    #[error("kernel command line: {key}={value}: expected a positive number of milliseconds")]
    Cmdline {
        /// The key.
        key: &'static str,
        /// The offending value.
        value: String,
    },
}

/// True when this process is the guest's init.
pub fn is_pid1() -> bool {
    nix::unistd::getpid().as_raw() == 1
}

/// One early mount.
struct MountSpec {
    fstype: &'static str,
    target: &'static str,
    flags: MsFlags,
    data: Option<&'static str>,
}

/// The mounts PID 1 sets up, in order (`/sys/fs/cgroup` lives inside sysfs).
fn mount_table() -> [MountSpec; 7] {
    let locked = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    let m = |fstype, target, flags, data| MountSpec {
        fstype,
        target,
        flags,
        data,
    };
    [
        m("proc", "/proc", locked, None),
        m("sysfs", "/sys", locked, None),
        m("devtmpfs", "/dev", MsFlags::MS_NOSUID, Some("mode=0755")),
        // For the ptys of `tty` execs (openpty names the slave /dev/pts/N).
        m(
            "devpts",
            "/dev/pts",
            MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
            Some("mode=0620,ptmxmode=0666"),
        ),
        m("cgroup2", "/sys/fs/cgroup", locked, None),
        m(
            "tmpfs",
            "/tmp",
            MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
            Some("mode=1777"),
        ),
        m(
            "tmpfs",
            "/run",
            MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
            Some("mode=0755"),
        ),
    ]
}

/// Mount points listed in a `/proc/mounts` text.
fn mounted_targets(proc_mounts: &str) -> HashSet<&str> {
    proc_mounts
        .lines()
        .filter_map(|line| line.split_whitespace().nth(1))
        .collect()
}

fn mount_one(spec: &MountSpec) -> Result<(), InitError> {
    let path = Path::new(spec.target);
    if !path.is_dir() {
        fs::create_dir_all(path).map_err(|source| InitError::MountPoint {
            path: spec.target,
            source,
        })?;
    }
    match mount(
        Some(spec.fstype),
        spec.target,
        Some(spec.fstype),
        spec.flags,
        spec.data,
    ) {
        // EBUSY: something is mounted there already, which is what we want.
        Ok(()) | Err(Errno::EBUSY) => Ok(()),
        Err(source) => Err(InitError::Mount {
            fstype: spec.fstype,
            target: spec.target,
            source,
        }),
    }
}

/// Where [`reroot_off_initramfs`] stages the bind mount of `/`.
const REROOT_STAGE: &str = "/.unipod-root";

/// Moves PID 1's root from the initramfs onto a bind mount of itself.
///
/// The initramfs is the root mount, which has no parent, and `pivot_root`
/// refuses such a root; containers need `pivot_root` so that their mount
/// namespace keeps nothing of the agent's. A recursive bind of `/` is the
/// same files (no copy, no memory) on a mount that does have a parent. As in
/// `switch_root`: bind it on a directory, enter it, move it onto `/` and
/// `chroot` to it (a mount on `/` alone would not change the process root).
fn reroot_off_initramfs() -> std::io::Result<()> {
    use nix::unistd::{chdir, chroot};
    match fs::create_dir(REROOT_STAGE) {
        Err(e) if e.kind() != std::io::ErrorKind::AlreadyExists => return Err(e),
        _ => {}
    }
    let bind = MsFlags::MS_BIND | MsFlags::MS_REC;
    mount(Some("/"), REROOT_STAGE, None::<&str>, bind, None::<&str>)?;
    chdir(REROOT_STAGE)?;
    mount(Some("."), "/", None::<&str>, MsFlags::MS_MOVE, None::<&str>)?;
    chroot(".")?;
    chdir("/")?;
    // The stage is an empty directory of the initramfs again.
    fs::remove_dir(REROOT_STAGE)
}

/// Moves the root off the initramfs, then mounts proc, sysfs, devtmpfs,
/// devpts, cgroup2 and the tmpfs's, skipping what is already mounted and
/// logging (not failing on) errors. Only as PID 1.
pub fn mount_filesystems() {
    if !is_pid1() {
        log::info!("not PID 1: leaving mounts alone");
        return;
    }
    if let Err(e) = reroot_off_initramfs() {
        log::warn!(
            "cannot move the root off the initramfs ({e}): containers will fail to pivot_root"
        );
    }
    for spec in mount_table() {
        // Re-read each time: /proc/mounts exists only once proc is mounted.
        let mounts = fs::read_to_string("/proc/mounts").unwrap_or_default();
        if mounted_targets(&mounts).contains(spec.target) {
            continue;
        }
        if let Err(e) = mount_one(&spec) {
            log::warn!("{}", Chain(&e));
        }
    }
}

/// Makes sure fds 0-2 are open (on the console, else `/dev/null`) so that no
/// later socket or pipe lands on them. The kernel leaves them closed when the
/// initramfs has no `/dev/console`.
pub fn ensure_stdio() {
    for _ in 0..3 {
        let flags = OFlag::O_RDWR | OFlag::O_NOCTTY | OFlag::O_CLOEXEC;
        let fd = match open("/dev/console", flags, Mode::empty())
            .or_else(|_| open("/dev/null", flags, Mode::empty()))
        {
            Ok(fd) => fd,
            Err(_) => return,
        };
        if fd.as_raw_fd() > 2 {
            return; // 0-2 are all open; dropping `fd` closes it.
        }
        // It filled a hole in 0-2; keep it open for good. CLOEXEC is harmless:
        // children get their own stdio from the spawner.
        let _ = fd.into_raw_fd();
    }
}

/// Has Ctrl-Alt-Del send SIGINT to PID 1 (a graceful stop) instead of an
/// immediate reboot. Only as PID 1; failure is logged.
pub fn route_ctrl_alt_del_to_sigint() {
    if is_pid1() {
        if let Err(e) = set_cad_enabled(false) {
            log::warn!("cannot disable Ctrl-Alt-Del reboot: {e}");
        }
    }
}

/// The kernel command line, or "" when `/proc` is unavailable.
pub fn read_cmdline() -> String {
    fs::read_to_string("/proc/cmdline").unwrap_or_default()
}

/// The value of `key=value` on a command line; the last occurrence wins, as
/// for kernel parameters.
pub fn cmdline_value<'a>(cmdline: &'a str, key: &str) -> Option<&'a str> {
    cmdline
        .split_whitespace()
        .filter_map(|word| word.split_once('='))
        .filter(|(k, _)| *k == key)
        .map(|(_, v)| v)
        .next_back()
}

/// The heartbeat period from `unipod.heartbeat_ms=`, or `default` when absent.
pub fn heartbeat_period(cmdline: &str, default: Duration) -> Result<Duration, InitError> {
    let Some(value) = cmdline_value(cmdline, HEARTBEAT_KEY) else {
        return Ok(default);
    };
    match value.parse::<u64>() {
        Ok(ms) if ms > 0 => Ok(Duration::from_millis(ms)),
        _ => Err(InitError::Cmdline {
            key: HEARTBEAT_KEY,
            value: value.to_string(),
        }),
    }
}

/// Ends the VM: sync, then `reboot(RB_AUTOBOOT)` (the guest runs with
/// `reboot=k`). When not PID 1, exits with `code` instead.
pub fn power_off(code: i32) -> ! {
    if !is_pid1() {
        log::info!("not PID 1: exiting with status {code} instead of powering off");
        std::process::exit(code);
    }
    log::info!("powering off");
    nix::unistd::sync();
    let Err(e) = reboot(RebootMode::RB_AUTOBOOT);
    log::error!("reboot failed: {e}; trying power-off");
    let Err(e) = reboot(RebootMode::RB_POWER_OFF);
    log::error!("power-off failed: {e}; halting here");
    // PID 1 must not exit: the kernel would panic.
    loop {
        std::thread::sleep(Duration::from_secs(3600));
    }
}

/// Makes a panic log its message and power off instead of killing PID 1
/// (which would panic the kernel and hide the message).
pub fn install_panic_hook() {
    std::panic::set_hook(Box::new(|info| {
        log::error!("fatal: {info}");
        power_off(101);
    }));
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEFAULT: Duration = Duration::from_millis(1000);

    #[test]
    fn heartbeat_defaults_when_absent() {
        let cmdline = "console=ttyS0 reboot=k panic=-1 unipod.other=5\n";
        assert_eq!(heartbeat_period(cmdline, DEFAULT).unwrap(), DEFAULT);
        assert_eq!(heartbeat_period("", DEFAULT).unwrap(), DEFAULT);
    }

    #[test]
    fn heartbeat_is_parsed_and_last_value_wins() {
        let cmdline = "console=ttyS0 unipod.heartbeat_ms=50 quiet unipod.heartbeat_ms=250\n";
        assert_eq!(
            heartbeat_period(cmdline, DEFAULT).unwrap(),
            Duration::from_millis(250)
        );
    }

    #[test]
    fn bad_heartbeat_values_are_errors() {
        for bad in ["0", "-5", "1s", ""] {
            let cmdline = format!("{HEARTBEAT_KEY}={bad}");
            let err = heartbeat_period(&cmdline, DEFAULT).unwrap_err();
            assert!(err.to_string().contains(HEARTBEAT_KEY), "{err}");
        }
    }

    #[test]
    fn key_must_match_exactly() {
        assert_eq!(cmdline_value("xunipod.heartbeat_ms=5", HEARTBEAT_KEY), None);
        assert_eq!(cmdline_value("a=b=c", "a"), Some("b=c"));
    }

    #[test]
    fn mounted_targets_reads_the_second_field() {
        let mounts = "rootfs / rootfs rw 0 0\nproc /proc proc rw,nosuid 0 0\n";
        let t = mounted_targets(mounts);
        assert!(t.contains("/proc") && t.contains("/"));
        assert!(!t.contains("/sys"));
    }

    #[test]
    fn parents_are_mounted_before_what_is_inside_them() {
        let table = mount_table();
        let pos = |t| table.iter().position(|m| m.target == t).unwrap();
        assert!(pos("/sys") < pos("/sys/fs/cgroup"));
        assert!(pos("/dev") < pos("/dev/pts"));
    }
}
