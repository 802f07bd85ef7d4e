//! The balloon device's free page reports over guest memory the fuzzer
//! fills: ranges that are unaligned, read-only, outside memory or over the
//! rings themselves, on all three queues.
#![no_main]

use libfuzzer_sys::fuzz_target;
use unipod_fuzz::{guest, interrupt};
use vmm::devices::virtio::balloon::Balloon;
use vmm::devices::virtio::VirtioDevice;

fuzz_target!(|data: &[u8]| {
    let Some(g) = guest(data, 3) else { return };
    let mut balloon = Balloon::new(interrupt()).expect("balloon device");
    balloon.set_acked_features(balloon.features());
    if balloon.activate(g.mem, g.queues).is_err() {
        return;
    }
    // Byte 1 orders the queues, so a report can land before or after the
    // other queues' chains are read.
    let order: [usize; 3] = if g.choice & 1 == 1 {
        [2, 0, 1]
    } else {
        [0, 1, 2]
    };
    for index in order {
        balloon.process(index);
    }
});
