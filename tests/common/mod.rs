//! Shared helpers for the end-to-end tests: finding the guest artifacts and
//! the `unipod` binary, and skipping loudly when KVM is unavailable.

#![allow(dead_code, reason = "each test binary uses a different subset")]

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

/// Runs `unipod` with `args`.
pub fn unipod(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_unipod"))
        .args(args)
        .output()
        .expect("the unipod binary runs")
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
