//! The Pod YAML parser and validator (vmm/src/pod/manifest.rs): any text a
//! user hands `unipod run`. It must answer with a pod or errors, never
//! panic or blow up (anchors and aliases included).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok((pod, _warnings)) = vmm::pod::manifest::parse(text) {
        let _ = pod.vm_size();
    }
});
