//! Tests of image import across modules, and the helpers that build test
//! layers and layouts in memory.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};

use super::source::{self, parse_docker_manifest};
use super::*;

/// A fresh, empty directory for one test.
pub(crate) fn scratch_dir(name: &str) -> PathBuf {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let dir = std::env::temp_dir().join(format!(
        "unipod-image-{name}-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).expect("create scratch dir");
    dir
}

/// Builds a layer tar entry by entry, writing names as given (`tar::Builder`
/// refuses `..`, which the tests need).
pub(crate) struct TarBuilder {
    builder: tar::Builder<Vec<u8>>,
}

impl TarBuilder {
    pub(crate) fn new() -> Self {
        TarBuilder {
            builder: tar::Builder::new(Vec::new()),
        }
    }

    #[expect(
        clippy::too_many_arguments,
        reason = "a test helper mirroring the header"
    )]
    fn raw(
        &mut self,
        path: &str,
        kind: tar::EntryType,
        data: &[u8],
        mode: u32,
        uid: u64,
        gid: u64,
        link: Option<&str>,
    ) {
        let mut header = tar::Header::new_gnu();
        {
            let gnu = header.as_gnu_mut().expect("a GNU header");
            gnu.name[..path.len()].copy_from_slice(path.as_bytes());
            if let Some(link) = link {
                gnu.linkname[..link.len()].copy_from_slice(link.as_bytes());
            }
        }
        header.set_entry_type(kind);
        header.set_size(data.len() as u64);
        header.set_mode(mode);
        header.set_uid(uid);
        header.set_gid(gid);
        header.set_mtime(0);
        header.set_cksum();
        self.builder.append(&header, data).expect("append to a Vec");
    }

    pub(crate) fn file(&mut self, path: &str, data: &[u8], mode: u32) {
        self.raw(path, tar::EntryType::Regular, data, mode, 0, 0, None);
    }

    pub(crate) fn owned_file(&mut self, path: &str, data: &[u8], mode: u32, uid: u64, gid: u64) {
        self.raw(path, tar::EntryType::Regular, data, mode, uid, gid, None);
    }

    pub(crate) fn dir(&mut self, path: &str, mode: u32) {
        self.raw(path, tar::EntryType::Directory, b"", mode, 0, 0, None);
    }

    pub(crate) fn symlink(&mut self, path: &str, target: &str) {
        self.owned_symlink(path, target, 0, 0);
    }

    pub(crate) fn owned_symlink(&mut self, path: &str, target: &str, uid: u64, gid: u64) {
        self.raw(
            path,
            tar::EntryType::Symlink,
            b"",
            0o777,
            uid,
            gid,
            Some(target),
        );
    }

    pub(crate) fn hardlink(&mut self, path: &str, target: &str) {
        self.raw(path, tar::EntryType::Link, b"", 0o644, 0, 0, Some(target));
    }

    pub(crate) fn device(&mut self, path: &str) {
        self.raw(path, tar::EntryType::Char, b"", 0o666, 0, 0, None);
    }

    pub(crate) fn finish(self) -> Vec<u8> {
        self.builder.into_inner().expect("finish a Vec")
    }
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    encoder.write_all(data).unwrap();
    encoder.finish().unwrap()
}

/// Writes `data` as a blob of the layout at `dir`; returns its descriptor
/// JSON.
fn put_blob(dir: &Path, media_type: &str, data: &[u8]) -> serde_json::Value {
    let digest = sha256_of(data);
    let blobs = dir.join("blobs/sha256");
    fs::create_dir_all(&blobs).unwrap();
    fs::write(blobs.join(&digest["sha256:".len()..]), data).unwrap();
    serde_json::json!({"mediaType": media_type, "digest": digest, "size": data.len()})
}

fn test_config(diff_ids: &[String]) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({
        "architecture": "amd64",
        "os": "linux",
        "config": {
            "Env": ["PATH=/bin"],
            "Entrypoint": ["/bin/sh", "-c"],
            "Cmd": ["echo hi"],
            "WorkingDir": "/tmp",
            "User": "nobody",
            "StopSignal": "SIGQUIT"
        },
        "rootfs": {"type": "layers", "diff_ids": diff_ids}
    }))
    .unwrap()
}

/// Writes an OCI image layout at `dir` with `layers` (uncompressed tars,
/// stored gzipped), named `name`; returns the manifest digest.
fn oci_layout(dir: &Path, layers: &[Vec<u8>], name: &str) -> String {
    oci_layout_with(dir, layers, name, Compression::Gzip)
}

#[derive(Clone, Copy)]
enum Compression {
    Gzip,
    Zstd,
}

/// Writes the config, layer and manifest blobs of an image with `layers`
/// into `dir`'s `blobs/sha256/`; returns the manifest's descriptor.
fn put_image_blobs(dir: &Path, layers: &[Vec<u8>], compression: Compression) -> serde_json::Value {
    let diff_ids: Vec<String> = layers.iter().map(|l| sha256_of(l)).collect();
    let config = put_blob(
        dir,
        "application/vnd.oci.image.config.v1+json",
        &test_config(&diff_ids),
    );
    let layer_descriptors: Vec<_> = layers
        .iter()
        .map(|l| match compression {
            Compression::Gzip => {
                put_blob(dir, "application/vnd.oci.image.layer.v1.tar+gzip", &gzip(l))
            }
            Compression::Zstd => put_blob(
                dir,
                "application/vnd.oci.image.layer.v1.tar+zstd",
                &zstd::encode_all(&l[..], 3).unwrap(),
            ),
        })
        .collect();
    let manifest = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": config,
        "layers": layer_descriptors,
    }))
    .unwrap();
    put_blob(dir, "application/vnd.oci.image.manifest.v1+json", &manifest)
}

/// [`oci_layout`] with the layers compressed as `compression` says.
fn oci_layout_with(dir: &Path, layers: &[Vec<u8>], name: &str, compression: Compression) -> String {
    let mut descriptor = put_image_blobs(dir, layers, compression);
    descriptor["annotations"] = serde_json::json!({"org.opencontainers.image.ref.name": name});
    descriptor["platform"] = serde_json::json!({"architecture": "amd64", "os": "linux"});
    let index = serde_json::json!({"schemaVersion": 2, "manifests": [descriptor]});
    fs::write(dir.join("index.json"), serde_json::to_vec(&index).unwrap()).unwrap();
    fs::write(dir.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
    descriptor["digest"].as_str().unwrap().to_string()
}

fn two_layers() -> Vec<Vec<u8>> {
    let mut lower = TarBuilder::new();
    lower.dir("bin", 0o755);
    lower.file("bin/tool", b"#!/bin/sh\n", 0o755);
    lower.file("etc/motd", b"hello", 0o644);
    let mut upper = TarBuilder::new();
    upper.file("etc/.wh.motd", b"", 0o644);
    upper.file("etc/added", b"upper", 0o644);
    vec![lower.finish(), upper.finish()]
}

fn mkfs_missing(test: &str) -> bool {
    let missing = std::process::Command::new("mkfs.erofs")
        .arg("--help")
        .output()
        .is_err();
    if missing {
        eprintln!("SKIPPED {test}: mkfs.erofs is missing (apt install erofs-utils)");
    }
    missing
}

#[test]
fn a_layer_blob_that_does_not_match_its_digest_is_refused_by_name() {
    let state = scratch_dir("mismatch-state");
    let layout = scratch_dir("mismatch-layout");
    oci_layout(&layout, &two_layers(), "test:1");
    let manifest: serde_json::Value = {
        let index: serde_json::Value =
            serde_json::from_slice(&fs::read(layout.join("index.json")).unwrap()).unwrap();
        let digest = index["manifests"][0]["digest"].as_str().unwrap();
        let blob = layout.join("blobs/sha256").join(&digest["sha256:".len()..]);
        serde_json::from_slice(&fs::read(blob).unwrap()).unwrap()
    };
    let layer_digest = manifest["layers"][1]["digest"].as_str().unwrap();
    let blob = format!("blobs/sha256/{}", &layer_digest["sha256:".len()..]);
    let mut data = fs::read(layout.join(&blob)).unwrap();
    let last = data.len() - 1;
    data[last] ^= 0xff;
    fs::write(layout.join(&blob), &data).unwrap();

    let store = ImageStore::open(&state);
    let err = store
        .import(&layout, None, |_| {})
        .expect_err("corrupt blob");
    let msg = err.to_string();
    assert!(matches!(err, ImageError::DigestMismatch { .. }), "{msg}");
    assert!(msg.contains(&blob), "names the blob: {msg}");
    assert!(msg.contains("layer 2/2"), "names the layer: {msg}");
    assert!(
        msg.contains(layer_digest),
        "names the expected digest: {msg}"
    );
    let leftovers: Vec<_> = fs::read_dir(store.root()).unwrap().flatten().collect();
    assert!(
        leftovers
            .iter()
            .all(|e| !e.file_name().to_string_lossy().starts_with(".tmp-")),
        "no temporary directory is left: {leftovers:?}"
    );
    assert!(store.list().unwrap().is_empty());
    fs::remove_dir_all(&state).unwrap();
    fs::remove_dir_all(&layout).unwrap();
}

#[test]
fn a_manifest_that_does_not_match_its_digest_is_refused_before_parsing() {
    let layout = scratch_dir("mismatch-manifest");
    let digest = oci_layout(&layout, &two_layers(), "test:1");
    let blob = layout.join("blobs/sha256").join(&digest["sha256:".len()..]);
    let mut data = fs::read(&blob).unwrap();
    data.extend_from_slice(b" ");
    fs::write(&blob, data).unwrap();
    let archive = archive::Archive::open(&layout).unwrap();
    let err = source::plan(&archive, None).expect_err("corrupt manifest");
    assert!(matches!(err, ImageError::DigestMismatch { .. }), "{err}");
    assert!(err.to_string().contains("index.json"), "{err}");
    fs::remove_dir_all(&layout).unwrap();
}

#[test]
fn an_oci_layout_imports_once_and_resolves_by_any_spelling() {
    if mkfs_missing("an_oci_layout_imports_once_and_resolves_by_any_spelling") {
        return;
    }
    let state = scratch_dir("import-state");
    let layout = scratch_dir("import-layout");
    let digest = oci_layout(&layout, &two_layers(), "docker.io/library/test:1");
    let store = ImageStore::open(&state);
    let mut lines = Vec::new();
    let imported = store
        .import(&layout, None, |l| lines.push(l.to_string()))
        .unwrap();
    assert!(!imported.already_present);
    assert_eq!(imported.image.digest, digest);
    assert_eq!(imported.image.names, ["test:1"]);
    assert!(
        lines.iter().any(|l| l.starts_with("unpacking layer 2/2")),
        "{lines:?}"
    );
    assert!(imported.image.rootfs.is_file());
    assert_eq!(
        imported.image.config,
        ImageConfig {
            entrypoint: vec!["/bin/sh".into(), "-c".into()],
            cmd: vec!["echo hi".into()],
            env: vec!["PATH=/bin".into()],
            working_dir: Some("/tmp".into()),
            user: Some("nobody".into()),
            stop_signal: Some("SIGQUIT".into()),
        }
    );

    let mut lines = Vec::new();
    let again = store
        .import(&layout, Some("other"), |l| lines.push(l.to_string()))
        .unwrap();
    assert!(again.already_present);
    assert!(lines.iter().all(|l| !l.contains("unpacking")), "{lines:?}");
    assert_eq!(again.image.names, ["other:latest", "test:1"]);

    for reference in [
        "test:1",
        "docker.io/library/test:1",
        "other",
        &digest,
        &digest[7..19],
    ] {
        assert_eq!(
            store.resolve(reference).unwrap().digest,
            digest,
            "{reference}"
        );
    }
    let err = store.resolve("nginx:1.25").expect_err("not imported");
    assert_eq!(
        err.to_string(),
        "image \"nginx:1.25\" is not imported; import it with: unipod image import PATH (an \
         OCI layout or docker-save tar)"
    );

    let removed = store.remove("other").unwrap();
    assert_eq!(
        (removed.names, removed.image),
        (vec!["other:latest".into()], None)
    );
    let removed = store.remove("test:1").unwrap();
    assert_eq!(removed.image.as_deref(), Some(digest.as_str()));
    assert!(store.list().unwrap().is_empty());
    assert!(!imported.image.rootfs.exists());
    fs::remove_dir_all(&state).unwrap();
    fs::remove_dir_all(&layout).unwrap();
}

#[test]
fn docker_save_manifests_parse_with_and_without_tags() {
    let entries = parse_docker_manifest(
        br#"[{"Config":"0123.json","RepoTags":["busybox:latest","bb:1"],
              "Layers":["aaa/layer.tar","bbb/layer.tar"]},
             {"Config":"blobs/sha256/4567","RepoTags":null,"Layers":[]}]"#,
    )
    .unwrap();
    assert_eq!(entries.len(), 2);
    assert_eq!(entries[0].config, "0123.json");
    assert_eq!(
        entries[0].repo_tags.as_deref(),
        Some(&["busybox:latest".to_string(), "bb:1".to_string()][..])
    );
    assert_eq!(entries[0].layers, ["aaa/layer.tar", "bbb/layer.tar"]);
    assert_eq!(entries[1].repo_tags, None);
    let err = parse_docker_manifest(br#"{"Config": 1}"#).expect_err("not a list");
    assert!(err
        .to_string()
        .starts_with("manifest.json: not a valid docker save manifest"));
}

/// Writes a legacy `docker save` archive directory; returns the config
/// digest.
fn docker_save_dir(dir: &Path, layers: &[Vec<u8>], tag: &str) -> String {
    let diff_ids: Vec<String> = layers.iter().map(|l| sha256_of(l)).collect();
    let config = test_config(&diff_ids);
    let config_digest = sha256_of(&config);
    let config_file = format!("{}.json", &config_digest[7..]);
    fs::write(dir.join(&config_file), &config).unwrap();
    let mut layer_files = Vec::new();
    for (layer, diff_id) in layers.iter().zip(&diff_ids) {
        let id = &diff_id[7..];
        fs::create_dir_all(dir.join(id)).unwrap();
        fs::write(dir.join(id).join("layer.tar"), layer).unwrap();
        layer_files.push(format!("{id}/layer.tar"));
    }
    let manifest = serde_json::json!([{
        "Config": config_file, "RepoTags": [tag], "Layers": layer_files
    }]);
    fs::write(
        dir.join("manifest.json"),
        serde_json::to_vec(&manifest).unwrap(),
    )
    .unwrap();
    config_digest
}

#[test]
fn a_docker_save_archive_plans_its_layers_by_diff_id_with_a_stable_digest() {
    let dir = scratch_dir("docker-save");
    let layers = two_layers();
    docker_save_dir(&dir, &layers, "docker.io/library/busybox:latest");
    let archive = archive::Archive::open(&dir).unwrap();
    let plan = source::plan(&archive, None).unwrap();
    assert_eq!(plan.names, ["busybox:latest"]);
    assert_eq!(plan.format, "docker save archive");
    assert_eq!(plan.layers.len(), 2);
    assert_eq!(plan.layers[1].diff_id, sha256_of(&layers[1]));
    assert_eq!(plan.layers[1].digest, None);
    assert_eq!(plan.config.cmd, ["echo hi"]);
    let again = source::plan(&archive, None).unwrap();
    assert_eq!(plan.manifest_digest, again.manifest_digest);
    sha256_hex(&plan.manifest_digest, "test").unwrap();

    // A corrupt config is caught by its file name, which is its digest.
    let config = fs::read_dir(&dir)
        .unwrap()
        .flatten()
        .find(|e| {
            e.file_name().to_string_lossy().ends_with(".json") && e.file_name() != "manifest.json"
        })
        .unwrap()
        .path();
    let mut data = fs::read(&config).unwrap();
    data.push(b'\n');
    fs::write(&config, data).unwrap();
    let err = source::plan(&archive, None).expect_err("corrupt config");
    assert!(matches!(err, ImageError::DigestMismatch { .. }), "{err}");
    fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_corrupt_legacy_docker_layer_is_refused_before_unpacking() {
    let state = scratch_dir("docker-corrupt-state");
    let dir = scratch_dir("docker-corrupt");
    let layers = two_layers();
    docker_save_dir(&dir, &layers, "bb:1");
    let id = &sha256_of(&layers[0])[7..];
    let path = dir.join(id).join("layer.tar");
    let mut data = fs::read(&path).unwrap();
    data[600] ^= 1;
    fs::write(&path, data).unwrap();
    let err = ImageStore::open(&state)
        .import(&dir, None, |_| {})
        .expect_err("corrupt layer");
    assert!(matches!(err, ImageError::DigestMismatch { .. }), "{err}");
    assert!(
        err.to_string().contains(&format!("{id}/layer.tar")),
        "{err}"
    );
    assert!(err.to_string().contains("rootfs.diff_ids[0]"), "{err}");
    fs::remove_dir_all(&state).unwrap();
    fs::remove_dir_all(&dir).unwrap();
}

fn descriptor(platform: Option<&str>) -> serde_json::Value {
    let mut d = serde_json::json!({
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "digest": format!("sha256:{}", "0".repeat(64)),
        "size": 1
    });
    if let Some(p) = platform {
        let mut parts = p.split('/');
        d["platform"] = serde_json::json!({
            "os": parts.next().unwrap(),
            "architecture": parts.next().unwrap(),
        });
        if let Some(variant) = parts.next() {
            d["platform"]["variant"] = variant.into();
        }
    }
    d
}

fn plan_index(manifests: Vec<serde_json::Value>) -> Result<source::Plan, ImageError> {
    let dir = scratch_dir("index");
    let index = serde_json::json!({"schemaVersion": 2, "manifests": manifests});
    fs::write(dir.join("index.json"), serde_json::to_vec(&index).unwrap()).unwrap();
    let archive = archive::Archive::open(&dir).unwrap();
    let result = source::plan(&archive, None);
    fs::remove_dir_all(&dir).unwrap();
    result
}

#[test]
fn a_multi_platform_index_without_amd64_names_the_platforms_found() {
    let err = plan_index(vec![
        descriptor(Some("linux/arm64")),
        descriptor(Some("linux/arm/v7")),
    ])
    .expect_err("no amd64");
    let msg = err.to_string();
    assert!(matches!(err, ImageError::NoAmd64 { .. }), "{msg}");
    assert!(msg.contains("linux/arm64, linux/arm/v7"), "{msg}");

    // With amd64 present it is chosen: the (missing) blob it names is
    // what fails next.
    let err = plan_index(vec![
        descriptor(Some("linux/arm64")),
        descriptor(Some("linux/amd64")),
    ])
    .expect_err("blob missing");
    assert!(matches!(err, ImageError::MissingBlob { .. }), "{err}");
}

#[test]
fn a_nested_index_is_followed_to_its_amd64_manifest_and_top_level_name() {
    // As docker save 25+ writes: index.json -> image index -> manifests.
    let layout = scratch_dir("nested");
    let digest = oci_layout(&layout, &two_layers(), "ignored:1");
    let index: serde_json::Value =
        serde_json::from_slice(&fs::read(layout.join("index.json")).unwrap()).unwrap();
    let amd64 = index["manifests"][0].clone();
    let nested = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [descriptor(Some("linux/arm64")), amd64]
    }))
    .unwrap();
    let mut top = put_blob(&layout, "application/vnd.oci.image.index.v1+json", &nested);
    top["annotations"] = serde_json::json!({
        "io.containerd.image.name": "docker.io/library/busybox:1.36",
        "org.opencontainers.image.ref.name": "1.36"
    });
    let index = serde_json::json!({"schemaVersion": 2, "manifests": [top]});
    fs::write(
        layout.join("index.json"),
        serde_json::to_vec(&index).unwrap(),
    )
    .unwrap();
    let archive = archive::Archive::open(&layout).unwrap();
    let plan = source::plan(&archive, None).unwrap();
    assert_eq!(plan.manifest_digest, digest);
    assert_eq!(plan.names, ["busybox:1.36", "ignored:1"]);
    fs::remove_dir_all(&layout).unwrap();
}

#[test]
fn concurrent_name_updates_are_all_kept() {
    let state = scratch_dir("names-lock");
    let store = ImageStore::open(&state);
    let digests: Vec<String> = (0..4)
        .map(|i| format!("sha256:{}", format!("{i}").repeat(64)))
        .collect();
    for digest in &digests {
        let dir = store.root().join(&digest[7..]);
        fs::create_dir_all(&dir).unwrap();
        let record = serde_json::json!({
            "digest": digest, "names": [], "size_bytes": 0, "imported_unix": 0,
            "config": ImageConfig::default(), "format": "test", "source": "/", "layers": 0
        });
        fs::write(dir.join("image.json"), serde_json::to_vec(&record).unwrap()).unwrap();
    }
    std::thread::scope(|s| {
        for (t, digest) in digests.iter().enumerate() {
            let store = store.clone();
            s.spawn(move || {
                for n in 0..15 {
                    store
                        .add_names_for_test(digest, &[format!("img-{t}-{n}:latest")])
                        .unwrap();
                    // Everyone also fights over one name.
                    store
                        .add_names_for_test(digest, &["shared:latest".into()])
                        .unwrap();
                }
            });
        }
    });
    let images = store.list().unwrap();
    let all: Vec<&String> = images.iter().flat_map(|i| &i.names).collect();
    assert_eq!(all.len(), 4 * 15 + 1, "no update was lost: {all:?}");
    for image in &images {
        let on_disk: serde_json::Value =
            serde_json::from_slice(&fs::read(image.rootfs.with_file_name("image.json")).unwrap())
                .unwrap();
        assert_eq!(
            on_disk["names"],
            serde_json::json!(image.names),
            "image.json follows names.json"
        );
    }
    fs::remove_dir_all(&state).unwrap();
}

#[test]
fn temp_dirs_of_dead_imports_are_removed_and_live_ones_kept() {
    let state = scratch_dir("stale");
    let store = ImageStore::open(&state);
    fs::create_dir_all(store.root()).unwrap();
    // Above Linux's largest pid_max: no such process.
    let dead = store.root().join(".tmp-0123456789ab-2000000000-0");
    let live = store
        .root()
        .join(format!(".tmp-0123456789ab-{}-7", std::process::id()));
    fs::create_dir_all(dead.join("rootfs/bin")).unwrap();
    fs::create_dir_all(&live).unwrap();
    store.remove_stale_temps();
    assert!(!dead.exists(), "a dead import's temp dir is removed");
    assert!(live.exists(), "a running import's temp dir is kept");
    fs::remove_dir_all(&state).unwrap();
}

#[test]
fn a_bare_tag_annotation_is_not_taken_for_a_name() {
    let layout = scratch_dir("bare-tag");
    oci_layout(&layout, &two_layers(), "latest");
    let archive = archive::Archive::open(&layout).unwrap();
    assert_eq!(
        source::plan(&archive, None).unwrap().names,
        Vec::<String>::new()
    );
    fs::remove_dir_all(&layout).unwrap();
}

#[test]
fn sizes_read_like_docker() {
    assert_eq!(human_size(812), "812 B");
    assert_eq!(human_size(1258291), "1.2 MiB");
    assert_eq!(human_size(5 << 30), "5.0 GiB");
}

#[test]
fn zstd_layers_import_like_gzip_ones() {
    if mkfs_missing("zstd_layers_import_like_gzip_ones") {
        return;
    }
    let state = scratch_dir("zstd-state");
    let gz = scratch_dir("zstd-gz-layout");
    let zst = scratch_dir("zstd-zst-layout");
    oci_layout_with(&gz, &two_layers(), "gz:1", Compression::Gzip);
    oci_layout_with(&zst, &two_layers(), "zst:1", Compression::Zstd);
    let store = ImageStore::open(&state);
    let a = store.import(&gz, None, |_| {}).unwrap().image;
    let b = store.import(&zst, None, |_| {}).unwrap().image;
    assert_ne!(
        a.digest, b.digest,
        "different layer blobs, different manifests"
    );
    // The same tars give the same file system (the erofs UUID, seeded by
    // the manifest digest, is all that differs).
    let (fa, fb) = (fs::read(&a.rootfs).unwrap(), fs::read(&b.rootfs).unwrap());
    assert_eq!(fa.len(), fb.len());
    let differing = fa.iter().zip(&fb).filter(|(x, y)| x != y).count();
    assert!(differing <= 32, "{differing} bytes differ");
    for dir in [state, gz, zst] {
        fs::remove_dir_all(dir).unwrap();
    }
}

/// Puts the blobs of an image with `layers` into `store`'s blob directory,
/// as a pull does; returns its manifest descriptor.
fn pulled_blobs(store: &ImageStore, layers: &[Vec<u8>]) -> oci_spec::image::Descriptor {
    let descriptor = put_image_blobs(store.root(), layers, Compression::Gzip);
    serde_json::from_value(descriptor).unwrap()
}

fn blob_count(store: &ImageStore) -> usize {
    fs::read_dir(store.root().join("blobs/sha256")).map_or(0, |d| d.count())
}

#[test]
fn pulled_images_share_layer_blobs_until_the_last_user_goes() {
    if mkfs_missing("pulled_images_share_layer_blobs_until_the_last_user_goes") {
        return;
    }
    let state = scratch_dir("pulled-state");
    let store = ImageStore::open(&state);
    let layers = two_layers();
    let mut extra = TarBuilder::new();
    extra.file("etc/extra", b"x", 0o644);
    let first = pulled_blobs(&store, &layers);
    let second = pulled_blobs(&store, &[layers[0].clone(), extra.finish()]);
    // 2 manifests, 1 shared config? No: the configs differ by diff ids.
    assert_eq!(
        blob_count(&store),
        2 + 2 + 3,
        "manifests, configs, 3 layers"
    );
    let names = |n: &str| vec![n.to_string()];
    store
        .import_pulled(&first, &names("a:1"), "docker://r/a:1", |_| {})
        .unwrap();
    store
        .import_pulled(&second, &names("b:1"), "docker://r/b:1", |_| {})
        .unwrap();
    let removed = store.remove("a:1").unwrap();
    assert_eq!(removed.blobs, 3, "a's manifest, config and own layer");
    assert_eq!(
        blob_count(&store),
        4,
        "b's blobs, the shared layer among them"
    );
    assert!(store.resolve("b:1").is_ok());
    // A blob no image uses (a pull that failed after it) goes with a prune.
    put_blob(store.root(), "application/octet-stream", b"orphan");
    let pruned = store.prune().unwrap();
    assert_eq!((pruned.images.len(), pruned.blobs.len()), (0, 1));
    store.remove("b:1").unwrap();
    assert_eq!(blob_count(&store), 0);
    fs::remove_dir_all(&state).unwrap();
}

#[test]
fn a_registry_index_gives_its_amd64_entry_and_never_a_lone_foreign_one() {
    let index = |manifests: Vec<serde_json::Value>| -> oci_spec::image::ImageIndex {
        serde_json::from_value(serde_json::json!({"schemaVersion": 2, "manifests": manifests}))
            .unwrap()
    };
    let mut amd64 = descriptor(Some("linux/amd64"));
    amd64["digest"] = format!("sha256:{}", "a".repeat(64)).into();
    let chosen = source::choose_platform(
        &index(vec![descriptor(Some("linux/arm64")), amd64]),
        "r/x index",
    )
    .unwrap();
    assert_eq!(
        chosen.digest().to_string(),
        format!("sha256:{}", "a".repeat(64))
    );
    let err = source::choose_platform(&index(vec![descriptor(Some("linux/arm64"))]), "r/x index")
        .expect_err("arm64 only");
    assert!(err.to_string().contains("linux/arm64"), "{err}");
    // No platforms at all: the only entry is the image.
    assert!(source::choose_platform(&index(vec![descriptor(None)]), "r/x index").is_ok());
}
