//! Cleaning up after a pod whose supervisor is gone: its VMM, its IP
//! lease and its port forwards, found from its record.
//!
//! # Design
//! The supervisor undoes all of it when a pod ends; this is for when it was
//! killed (`unipod stop` and `unipod rm` of such a pod). A killed VMM's tap
//! disappears with its last file descriptor.

use std::path::Path;
use std::time::{Duration, Instant};

use super::phase::PodPhase;
use super::status::PodRecord;
use crate::net::{ipam::Ipam, nat, Ipv4Cidr, NetError, PodNetwork};

/// Kills what a pod whose supervisor is gone left running, and releases its
/// network; marks it Failed if it had not ended.
pub fn clean_up_orphan(dir: &Path, record: &mut PodRecord) -> Result<(), NetError> {
    if let Some(vmm) = record.vmm.filter(|p| p.alive()) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(vmm.pid),
            nix::sys::signal::Signal::SIGKILL,
        );
        wait_gone(|| vmm.alive(), Duration::from_secs(5));
    }
    release_network(dir, record)?;
    if !record.status.phase.is_terminal() {
        record.status.phase = PodPhase::Failed;
        record.status.reason = Some("SupervisorLost".into());
        record.status.message = Some("the pod's supervisor was killed; its VM was stopped".into());
        let _ = record.write(dir);
    }
    Ok(())
}

/// Releases the pod's IP lease and port forwards, as its record names them.
pub fn release_network(dir: &Path, record: &mut PodRecord) -> Result<(), NetError> {
    let Some(net) = record.network.clone() else {
        return Ok(());
    };
    let state = dir
        .parent()
        .and_then(Path::parent)
        .expect("<state>/pods/NAME");
    if net.host_ports {
        nat::remove_port_forwards(&record.name)?;
    }
    if let Ok(cidr) = net.pod_cidr.parse::<Ipv4Cidr>() {
        let mut network = PodNetwork::new(net.bridge.clone(), cidr);
        if let Ok(gw) = net.gateway.parse() {
            network.gateway = gw;
        }
        network.subnet6 = net.pod_cidr6.and_then(|c| c.parse().ok());
        let ipam = Ipam::open(state, &network)?;
        ipam.release(&record.name)?;
    }
    record.network = None;
    Ok(())
}

/// Waits up to `limit` until `alive` is false; whether it became false.
pub fn wait_gone(alive: impl Fn() -> bool, limit: Duration) -> bool {
    let deadline = Instant::now() + limit;
    while alive() {
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    true
}
