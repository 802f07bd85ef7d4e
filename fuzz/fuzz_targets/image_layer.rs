//! Applying a layer tar (vmm/src/image/layer.rs) from the input onto an
//! image root. Whatever the entries (`..`, absolute paths, symlinks and hard
//! links pointing out, whiteouts), nothing may appear or change outside the
//! root: the root sits next to a canary directory that must stay as it was.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use unipod_fuzz::scratch;

fn listing(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut out: Vec<_> = std::fs::read_dir(dir)
        .expect("read the base dir")
        .map(|e| {
            let e = e.expect("entry");
            let data = std::fs::read(e.path()).unwrap_or_default();
            (e.file_name().to_string_lossy().into_owned(), data)
        })
        .collect();
    out.sort();
    out
}

fn make_writable(dir: &Path) {
    use std::os::unix::fs::PermissionsExt;
    let _ = std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700));
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        if entry.file_type().is_ok_and(|t| t.is_dir()) {
            make_writable(&entry.path());
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let base = scratch("layer");
    let root = base.join("root");
    let outside = base.join("outside");
    if std::fs::remove_dir_all(&root).is_err() {
        // Layers can make directories read-only (root ignores that).
        make_writable(&root);
        let _ = std::fs::remove_dir_all(&root);
    }
    std::fs::create_dir_all(&root).expect("create the root");
    if !outside.exists() {
        std::fs::create_dir_all(&outside).expect("create the canary dir");
        std::fs::write(outside.join("canary"), b"canary").expect("write the canary");
    }
    let before = listing(&outside);
    let _ = vmm::image::fuzzing::apply_layer(&root, data);
    assert_eq!(listing(&outside), before, "a layer wrote outside the root");
    let names: Vec<_> = std::fs::read_dir(&base)
        .expect("read the base dir")
        .map(|e| e.expect("entry").file_name())
        .collect();
    assert_eq!(names.len(), 2, "a layer created {names:?} next to the root");
});
