//! Reading an image archive (vmm/src/image/{archive,source}.rs): the input
//! is the tar of an OCI layout or a `docker save`; its index, manifests,
//! config and digests are parsed up to the import plan. Every layer the
//! plan names must be a path inside the archive.
#![no_main]

use libfuzzer_sys::fuzz_target;
use unipod_fuzz::scratch;

fuzz_target!(|data: &[u8]| {
    let path = scratch("archive").join("image.tar");
    std::fs::write(&path, data).expect("write the archive");
    if let Ok(layers) = vmm::image::fuzzing::plan(&path) {
        for layer in layers {
            assert!(
                !layer.starts_with('/') && !layer.split('/').any(|c| c == ".."),
                "layer path {layer:?} escapes the archive"
            );
        }
    }
});
