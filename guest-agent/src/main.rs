//! `unipod-agent`: the guest's `/init`. It mounts the basic file systems,
//! reaps orphans, serves the host over vsock (see `guest_agent::protocol`),
//! runs the pod's container and powers the VM off when the pod is done.
//!
//! # Design
//!
//! PID 1 may not exit or panic (the kernel would panic, losing the reason), so
//! every way out, fatal errors and panics included, logs and then powers off
//! through `agent::init::power_off`. Run as any other PID (a developer on a
//! workstation), it leaves mounts alone and exits instead.

mod agent;

use agent::{init, logger};

fn main() {
    logger::init();
    init::install_panic_hook();
    let code = match agent::run() {
        Ok(()) => 0,
        Err(e) => {
            log::error!("fatal: {}", logger::Chain(&e));
            1
        }
    };
    init::power_off(code)
}
