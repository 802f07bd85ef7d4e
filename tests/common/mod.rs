//! Shared helpers for the end-to-end tests: finding the guest artifacts and
//! the `unipod` binary, and skipping loudly when KVM is unavailable; a real
//! registry on loopback for the pull tests (registry.rs).

#![allow(dead_code, reason = "each test binary uses a different subset")]

pub mod pod;
pub mod registry;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The workspace root.
pub fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("vmm/ has a parent")
        .to_path_buf()
}

/// A guest artifact under target/guest, which `make kernel images` builds.
pub fn guest_artifact(name: &str) -> PathBuf {
    let path = workspace().join("target/guest").join(name);
    assert!(
        path.exists(),
        "{} is missing: run 'make kernel images' (or 'make test', which does it)",
        path.display()
    );
    path
}

/// Returns why KVM tests cannot run here, if they cannot.
pub fn kvm_unavailable() -> Option<String> {
    match std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
    {
        Ok(_) => None,
        Err(e) => Some(format!("/dev/kvm cannot be opened ({e})")),
    }
}

/// Prints a loud skip notice and returns true when KVM is unavailable.
pub fn skip_without_kvm(test: &str) -> bool {
    match kvm_unavailable() {
        Some(why) => {
            eprintln!("SKIPPED {test}: {why}; this test boots a real guest and needs KVM");
            true
        }
        None => false,
    }
}

/// The `unipod` binary under test, as a command to add arguments to.
pub fn unipod_command() -> Command {
    Command::new(env!("CARGO_BIN_EXE_unipod"))
}

/// Adds the test guest to a `unipod run`, `boot` or `snapshot` command:
/// `--kernel` and `--initrd` (the agent initramfs).
pub fn with_guest(cmd: &mut Command) -> &mut Command {
    with_guest_initrd(cmd, "initramfs.cpio")
}

/// [`with_guest`] with another initramfs under target/guest.
pub fn with_guest_initrd<'a>(cmd: &'a mut Command, initrd: &str) -> &'a mut Command {
    cmd.arg("--kernel")
        .arg(guest_artifact("vmlinux"))
        .arg("--initrd")
        .arg(guest_artifact(initrd))
}

/// `unipod run` of a command pod on the test guest with state dir
/// `state`: `cmd` is the `unipod` binary, maybe run in a network namespace
/// ([`Netns::command`]); add flags, then `--` and the command.
pub fn unipod_run(mut cmd: Command, state: &Path) -> Command {
    with_guest(cmd.arg("run")).arg("--state-dir").arg(state);
    cmd
}

/// Runs `unipod` with `args`.
pub fn unipod(args: &[&str]) -> Output {
    unipod_command()
        .args(args)
        .output()
        .expect("the unipod binary runs")
}

/// A process's exit status and both its outputs, for assertion messages.
pub fn output_text(out: &Output) -> String {
    format!(
        "status {}\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Polls `check` every 200 ms until it holds or `limit` passes; whether it
/// held.
pub fn wait_until(limit: std::time::Duration, mut check: impl FnMut() -> bool) -> bool {
    let deadline = std::time::Instant::now() + limit;
    loop {
        if check() {
            return true;
        }
        if std::time::Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
}

/// A fresh, empty per-test directory under the system temp dir.
pub fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("unipod-e2e-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("create temp dir");
    dir
}

/// The state dir the e2e tests share, so they share one warm-start
/// snapshot (keyed by its inputs, so reusing it across runs is safe). Each
/// test uses its own pod names.
pub fn shared_state_dir() -> PathBuf {
    let dir = workspace().join("target/test-state");
    std::fs::create_dir_all(&dir).expect("create the shared state dir");
    dir
}

/// Finds `prefix<digits>` in `text` and returns the number.
pub fn number_after(text: &str, prefix: &str) -> Option<u64> {
    let rest = &text[text.find(prefix)? + prefix.len()..];
    rest.split(|c: char| !c.is_ascii_digit())
        .next()?
        .parse()
        .ok()
}

/// Prints a loud skip notice and returns true when not root (network tests
/// create namespaces, bridges and taps).
pub fn skip_without_root(test: &str) -> bool {
    if nix::unistd::geteuid().is_root() {
        return false;
    }
    eprintln!("SKIPPED {test}: needs root to create network namespaces, bridges and taps");
    true
}

/// Prints a loud skip notice and returns true unless both KVM and root are
/// there (the tests that make bridges, taps or run containerd).
pub fn skip_without_kvm_or_root(test: &str) -> bool {
    skip_without_kvm(test) || skip_without_root(test)
}

/// A network namespace owned by one test: created empty (with `lo` up) and
/// deleted on drop, even when the test fails. Pods started inside it keep
/// their taps and bridges inside it, and nothing it does reaches the host's
/// own network.
pub struct Netns {
    /// The name under /run/netns.
    pub name: String,
}

impl Netns {
    /// Creates `unipod-e2e-<tag>`, replacing a stale one left by a killed run.
    pub fn new(tag: &str) -> Netns {
        let name = format!("unipod-e2e-{tag}");
        let _ = Command::new("ip").args(["netns", "del", &name]).output();
        let ns = Netns { name };
        run_ok(Command::new("ip").args(["netns", "add", &ns.name]));
        ns.ip(&["link", "set", "lo", "up"]);
        ns
    }

    /// Runs `ip -n <ns> args...`, asserting success; returns stdout.
    pub fn ip(&self, args: &[&str]) -> String {
        run_ok(Command::new("ip").arg("-n").arg(&self.name).args(args))
    }

    /// A command that runs `program` inside the namespace.
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.name]).arg(program);
        cmd
    }

    /// Runs `f` on a thread that entered the namespace (`setns` changes only
    /// the calling thread), so test code can open sockets inside it.
    pub fn enter<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        let file = std::fs::File::open(format!("/run/netns/{}", self.name)).expect("netns file");
        std::thread::scope(|s| {
            s.spawn(move || {
                nix::sched::setns(file, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
                f()
            })
            .join()
            .expect("netns thread panicked")
        })
    }

    /// Names of the links in the namespace.
    pub fn links(&self) -> Vec<String> {
        self.ip(&["-o", "link", "show"])
            .lines()
            .filter_map(|l| l.split(": ").nth(1))
            .map(|n| n.split('@').next().unwrap_or(n).to_string())
            .collect()
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
    }
}

/// Runs `cmd`, panicking with its output unless it succeeds; returns stdout.
pub fn run_ok(cmd: &mut Command) -> String {
    let out = cmd.output().expect("command runs");
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}):\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}
