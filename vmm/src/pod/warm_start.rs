//! Warm start for pods: find the snapshot that fits a pod's guest inputs,
//! or make it by booting a template VM once.
//!
//! # Design
//! The template VM is an ordinary `unipod boot --snapshot-to`: once its
//! agent answers (before any pod-specific request), we hang up and send it
//! SIGUSR1, and it saves itself and exits. Pods are then restored from that
//! snapshot and get their identity afterwards (`Request::Configure`), so one
//! snapshot serves every pod with the same kernel, initramfs and memory size.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use guest_agent::protocol::AGENT_VSOCK_PORT;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use super::agent_client::{AgentError, AgentLink};
use super::vm_inputs::{BootMode, GuestInputs, NetBackend, VmmFiles};
use super::vmm_process;
use crate::arch;
use crate::config::{CpuTemplate, DEFAULT_MAC};
use crate::snapshot::cache::{disk_usage, Entry, SnapshotCache};
use crate::snapshot::{self, SnapshotError};

/// How long a template VM may take to save itself after SIGUSR1.
const SAVE_TIMEOUT: Duration = Duration::from_secs(120);

/// Why no snapshot could be found or made.
#[derive(Debug, thiserror::Error)]
pub enum WarmStartError {
    /// The inputs cannot be hashed.
    #[error(transparent)]
    Key(#[from] SnapshotError),
    /// The cache directory cannot be used.
    #[error("snapshot cache: {0}")]
    Cache(#[source] std::io::Error),
    /// The template VM cannot be started.
    #[error("cannot start the template VM")]
    Spawn(#[source] std::io::Error),
    /// The template's agent never answered.
    #[error("the template VM's agent did not answer")]
    Agent(#[source] AgentError),
    /// The template VM did not save itself.
    #[error("the template VM did not save a snapshot: {0}")]
    Save(String),
}

/// The snapshot key for a pod VM with `inputs`: the hash of the config its
/// template VM boots with, as `unipod boot` will compute it (the vsock
/// device, the net device's MAC and tap and the disks' images do not enter
/// the key).
pub fn key(inputs: &GuestInputs, cache: &SnapshotCache) -> Result<String, SnapshotError> {
    snapshot::key(
        &inputs.template().vm_config(DEFAULT_MAC),
        CpuTemplate::Auto.resolve(arch::detect_host()),
        &cache.hash_memo(),
    )
}

/// Why the cached snapshot `entry` can no longer be used (`None`: it can):
/// unreadable, not a pod's, or its kernel or initramfs changed or is gone.
pub fn stale(entry: &Entry, cache: &SnapshotCache) -> Option<String> {
    match &entry.info {
        Err(e) => Some(format!("unreadable: {e}")),
        Ok(info) => {
            let inputs = info.initrd.clone().map(|initrd| GuestInputs {
                vcpus: info.vcpus,
                free_page_reporting: info.free_page_reporting,
                ..GuestInputs::new(info.kernel.clone(), initrd, info.mem_mib)
            });
            match inputs.map(|i| key(&i, cache)) {
                Some(Ok(key)) if key == entry.key => None,
                Some(Ok(_)) => Some("its kernel or initramfs changed".into()),
                Some(Err(e)) => Some(format!("its inputs are gone: {e}")),
                None => Some("not a pod snapshot".into()),
            }
        }
    }
}

/// The snapshot directory for `key`, made first if needed. `check` runs
/// while the template boots; an `Err` from it (e.g. Ctrl-C) aborts.
pub fn snapshot_for(
    cache: &SnapshotCache,
    key: &str,
    inputs: &GuestInputs,
    deadline: Instant,
    check: &mut dyn FnMut() -> Result<(), String>,
) -> Result<PathBuf, WarmStartError> {
    if cache.contains(key) {
        return Ok(cache.dir(key));
    }
    // Another unipod may be making it; wait for it rather than boot twice.
    let _lock = cache.lock(key).map_err(WarmStartError::Cache)?;
    if cache.contains(key) {
        return Ok(cache.dir(key));
    }
    eprintln!(
        "unipod: no warm-start snapshot for this kernel, initramfs and memory size yet; \
         booting a template VM to make one (a cold boot: about a minute on nested-PVM hosts, once)"
    );
    let started = Instant::now();
    let staging = cache.staging(key).map_err(WarmStartError::Cache)?;
    let made = boot_and_save(&staging, inputs, deadline, check);
    if let Err(e) = made {
        let _ = std::fs::remove_dir_all(&staging);
        return Err(e);
    }
    cache.commit(&staging, key).map_err(WarmStartError::Cache)?;
    let dir = cache.dir(key);
    eprintln!(
        "unipod: snapshot {key} saved in {:.1} s ({} MiB on disk)",
        started.elapsed().as_secs_f64(),
        disk_usage(&dir) >> 20
    );
    Ok(dir)
}

fn boot_and_save(
    staging: &std::path::Path,
    inputs: &GuestInputs,
    deadline: Instant,
    check: &mut dyn FnMut() -> Result<(), String>,
) -> Result<(), WarmStartError> {
    let vsock = staging.join("vsock.sock");
    let vmm_log = staging.join("vmm.log");
    let files = VmmFiles {
        vsock: &vsock,
        console_log: &staging.join("console.log"),
        vmm_log: &vmm_log,
        // The template gets no images after boot.
        api: None,
    };
    // The template's virtio-net device has no tap; each restored pod
    // brings its own.
    let mut vmm = vmm_process::spawn(
        &inputs.template(),
        &files,
        BootMode::SnapshotTo(staging),
        NetBackend::Detached,
    )
    .map_err(WarmStartError::Spawn)?;
    let result = (|| {
        let mut checks = || vmm_process::alive(&mut vmm).and_then(|()| check());
        let link = AgentLink::connect(&vsock, AGENT_VSOCK_PORT, deadline, &mut checks)
            .map_err(WarmStartError::Agent)?;
        // Hang up first: the snapshot should hold no host connection.
        drop(link);
        let pid = Pid::from_raw(i32::try_from(vmm.id()).unwrap_or(i32::MAX));
        kill(pid, Signal::SIGUSR1)
            .map_err(|e| WarmStartError::Save(format!("cannot signal the VMM: {e}")))?;
        match vmm_process::wait_for_exit(&mut vmm, SAVE_TIMEOUT) {
            Some(0) => Ok(()),
            Some(code) => Err(WarmStartError::Save(format!(
                "the VMM exited with {code}:\n{}",
                vmm_process::log_tail(&vmm_log, 5).join("\n")
            ))),
            None => Err(WarmStartError::Save(format!(
                "the VMM did not finish within {} s",
                SAVE_TIMEOUT.as_secs()
            ))),
        }
    })();
    vmm_process::stop(&mut vmm);
    result
}
