//! The vsock device's queue handling over guest memory the fuzzer fills:
//! tx chains carrying packet headers (every op, any ports and lengths), rx
//! buffers, the event queue. The guest CID is 3 and no host listener
//! exists, so guest connects get RST.
#![no_main]

use libfuzzer_sys::fuzz_target;
use unipod_fuzz::{guest, interrupt, scratch};
use vmm::devices::virtio::vsock::Vsock;
use vmm::devices::virtio::VirtioDevice;

fuzz_target!(|data: &[u8]| {
    let Some(g) = guest(data, 3) else { return };
    let uds = scratch("vsock").join("v.sock");
    let _ = std::fs::remove_file(&uds);
    let mut vsock = Vsock::new(3, &uds, interrupt()).expect("vsock device");
    if vsock.activate(g.mem, g.queues).is_err() {
        return;
    }
    // Twice: the second pass sees what the first left (credit, resets).
    vsock.process();
    vsock.process();
    if g.choice & 1 == 1 {
        vsock.reset();
    }
    vsock.shutdown();
});
