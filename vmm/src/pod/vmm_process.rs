//! The VMM child process: `unipod boot`, started by `unipod run` and by the
//! warm-start cache.
//!
//! The child runs in its own process group (a terminal's Ctrl-C reaches only
//! the supervisor, which stops the pod gracefully first) and gets
//! PR_SET_PDEATHSIG, so even a SIGKILLed supervisor leaves no VM behind.

use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::vm_inputs::{BootMode, GuestInputs, NetBackend, VmmFiles, CHILD_TAP_FD};

const POLL: Duration = Duration::from_millis(20);

/// Starts `unipod boot` for `inputs`.
pub fn spawn(
    inputs: &GuestInputs,
    files: &VmmFiles,
    mode: BootMode,
    net: NetBackend,
) -> std::io::Result<Child> {
    let exe = vmm_binary()?;
    let log = std::fs::File::create(files.vmm_log)?;
    let mut cmd = Command::new(exe);
    cmd.args(inputs.boot_args(files, mode, &net));
    let tap_fd = match net {
        NetBackend::Detached => None,
        NetBackend::Tap { fd, .. } => Some(fd.as_raw_fd()),
    };
    cmd.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .process_group(0);
    // SAFETY: the closure runs in the forked child before exec and only calls
    // prctl, dup2 and fcntl, which are async-signal-safe; `tap_fd` is open
    // in the parent (borrowed for this call), hence in the forked child.
    unsafe {
        cmd.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            if let Some(fd) = tap_fd {
                // dup2 onto itself keeps FD_CLOEXEC, so clear it explicitly.
                if fd == CHILD_TAP_FD {
                    if libc::fcntl(fd, libc::F_SETFD, 0) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                } else if libc::dup2(fd, CHILD_TAP_FD) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
    cmd.spawn()
}

/// The `unipod` executable that runs `unipod boot`: this process's own,
/// or, when another binary of ours calls (the containerd shim), the
/// `unipod` installed next to it.
pub fn vmm_binary() -> std::io::Result<PathBuf> {
    let exe = std::env::current_exe()?;
    if exe.file_name().is_some_and(|n| n == "unipod") {
        return Ok(exe);
    }
    let sibling = exe.with_file_name("unipod");
    if sibling.is_file() {
        Ok(sibling)
    } else {
        Err(std::io::Error::new(
            std::io::ErrorKind::NotFound,
            format!(
                "{} not found: install the unipod binary next to {}",
                sibling.display(),
                exe.display()
            ),
        ))
    }
}

/// `Err(reason)` once the VMM process has exited.
pub fn alive(vmm: &mut Child) -> Result<(), String> {
    match vmm.try_wait() {
        Ok(None) => Ok(()),
        Ok(Some(status)) => Err(format!(
            "VMM exited ({status}) before the pod finished{}",
            exit_hint(status)
        )),
        Err(e) => Err(format!("cannot check the VMM process: {e}")),
    }
}

/// What a VMM's exit status suggests beyond itself: SIGSYS is its seccomp
/// filter stopping a forbidden system call (see vmm/src/seccomp.rs); exit
/// code 3 (`EXIT_GUEST_CRASHED`) is the guest dying under it, most often a
/// kernel panic, which is what the death of the guest's PID 1 (the agent)
/// becomes.
fn exit_hint(status: std::process::ExitStatus) -> &'static str {
    use std::os::unix::process::ExitStatusExt;
    match (status.signal(), status.code()) {
        (Some(libc::SIGSYS), _) => {
            ": its seccomp filter stopped a forbidden system call (a VMM bug or a guest exploit; \
             UNIPOD_NO_SECCOMP=1 turns the filter off to debug)"
        }
        (_, Some(crate::exit_code::EXIT_GUEST_CRASHED)) => {
            ": the guest crashed (a kernel panic, e.g. its agent, PID 1, died, or a CPU fault); \
             the pod's vmm.log names the crash and console.log shows the guest's last words"
        }
        _ => "",
    }
}

/// Waits up to `grace` for the VMM to exit; its exit code if it did (`-1`
/// for a signal).
pub fn wait_for_exit(vmm: &mut Child, grace: Duration) -> Option<i32> {
    let deadline = Instant::now() + grace;
    loop {
        if let Ok(Some(status)) = vmm.try_wait() {
            return Some(status.code().unwrap_or(-1));
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(POLL);
    }
}

/// Kills the VMM if it still runs, and reaps it.
pub fn stop(vmm: &mut Child) {
    if matches!(vmm.try_wait(), Ok(None)) {
        let _ = vmm.kill();
        let _ = vmm.wait();
    }
}

/// The last `n` non-empty lines of a log file, indented for stderr.
pub fn log_tail(path: &Path, n: usize) -> Vec<String> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    lines[lines.len().saturating_sub(n)..]
        .iter()
        .map(|l| format!("  | {l}"))
        .collect()
}

#[cfg(test)]
mod tests {
    use std::os::unix::process::ExitStatusExt;
    use std::process::ExitStatus;

    use super::exit_hint;

    #[test]
    fn a_crashed_guest_and_a_seccomp_kill_are_named_other_exits_are_not() {
        // A wait status holds an exit code in its second byte.
        let crashed = ExitStatus::from_raw(crate::exit_code::EXIT_GUEST_CRASHED << 8);
        assert!(exit_hint(crashed).contains("the guest crashed (a kernel panic"));
        assert!(exit_hint(ExitStatus::from_raw(libc::SIGSYS)).contains("seccomp"));
        assert_eq!(exit_hint(ExitStatus::from_raw(1 << 8)), "");
        assert_eq!(exit_hint(ExitStatus::from_raw(libc::SIGKILL)), "");
    }
}
