//! The block device's request handling over guest memory the fuzzer fills:
//! request headers (type, sector), data segments and status bytes, against
//! a small image (3 sectors and a partial one).
#![no_main]

use std::io::Write;

use libfuzzer_sys::fuzz_target;
use unipod_fuzz::{guest, interrupt, scratch};
use vmm::devices::virtio::block::Block;
use vmm::devices::virtio::VirtioDevice;

fuzz_target!(|data: &[u8]| {
    let Some(g) = guest(data, 1) else { return };
    let path = scratch("blk").join("disk.img");
    if !path.exists() {
        let mut f = std::fs::File::create(&path).expect("create the image");
        f.write_all(&[0xa5; 3 * 512 + 100])
            .expect("write the image");
    }
    let image = std::fs::File::open(&path).expect("open the image");
    // Byte 1 chooses a detached slot that gets its image after activation.
    let detached = g.choice & 1 == 1;
    let mut blk = Block::new(
        "fuzz",
        (!detached).then(|| image.try_clone().expect("dup")),
        interrupt(),
    )
    .expect("block device");
    blk.set_acked_features(blk.features());
    if blk.activate(g.mem, g.queues).is_err() {
        return;
    }
    blk.process();
    if detached {
        let _ = blk.attach(image);
        blk.process();
    }
});
