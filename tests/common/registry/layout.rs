//! OCI layouts and containers configuration files for the pull tests.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use super::sha256_digest;

/// An OCI layout whose index lists two platforms, made by
/// [`multi_platform_layout`].
#[derive(Clone, Debug)]
pub struct MultiPlatformLayout {
    /// The layout directory.
    pub dir: PathBuf,
    /// The image index's digest.
    pub index: String,
    /// The linux/arm64 manifest's digest (listed first).
    pub arm64: String,
    /// The linux/amd64 manifest's digest (the source's manifest).
    pub amd64: String,
}

/// Writes to `dest` an OCI layout whose index.json names one image index
/// listing a linux/arm64/v8 manifest (the first image of `src` with its
/// config's architecture changed, sharing its layers) and then the first
/// image of `src` itself as linux/amd64.
pub fn multi_platform_layout(src: &Path, dest: &Path) -> MultiPlatformLayout {
    let blobs = dest.join("blobs/sha256");
    fs::create_dir_all(&blobs).expect("create blobs dir");
    for entry in fs::read_dir(src.join("blobs/sha256")).expect("read source blobs") {
        let entry = entry.expect("blob entry");
        fs::copy(entry.path(), blobs.join(entry.file_name())).expect("copy blob");
    }
    fs::copy(src.join("oci-layout"), dest.join("oci-layout")).expect("copy oci-layout");
    let read = |digest: &str| {
        fs::read(blobs.join(digest.strip_prefix("sha256:").expect("sha256 digest")))
            .expect("read blob")
    };
    let write = |bytes: &[u8]| -> (String, usize) {
        let digest = sha256_digest(bytes);
        fs::write(blobs.join(&digest[7..]), bytes).expect("write blob");
        (digest, bytes.len())
    };
    let index: serde_json::Value =
        serde_json::from_slice(&fs::read(src.join("index.json")).expect("read index.json"))
            .expect("index.json is JSON");
    let amd64 = index["manifests"][0]["digest"]
        .as_str()
        .expect("index.json names a manifest")
        .to_string();
    let amd64_bytes = read(&amd64);
    let mut manifest: serde_json::Value =
        serde_json::from_slice(&amd64_bytes).expect("the manifest is JSON");
    let mut config: serde_json::Value = serde_json::from_slice(&read(
        manifest["config"]["digest"].as_str().expect("a config"),
    ))
    .expect("the config is JSON");
    assert_eq!(config["architecture"], "amd64", "the source is amd64");
    config["architecture"] = "arm64".into();
    config["variant"] = "v8".into();
    let (config_digest, config_size) = write(config.to_string().as_bytes());
    manifest["config"]["digest"] = config_digest.into();
    manifest["config"]["size"] = config_size.into();
    let (arm64, arm64_size) = write(manifest.to_string().as_bytes());
    let manifest_type = "application/vnd.oci.image.manifest.v1+json";
    let index_type = "application/vnd.oci.image.index.v1+json";
    let image_index = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": index_type,
        "manifests": [
            {"mediaType": manifest_type, "digest": arm64, "size": arm64_size,
             "platform": {"architecture": "arm64", "os": "linux", "variant": "v8"}},
            {"mediaType": manifest_type, "digest": amd64, "size": amd64_bytes.len(),
             "platform": {"architecture": "amd64", "os": "linux"}},
        ],
    });
    let (index_digest, index_size) = write(image_index.to_string().as_bytes());
    let top = serde_json::json!({
        "schemaVersion": 2,
        "manifests": [{"mediaType": index_type, "digest": index_digest, "size": index_size}],
    });
    fs::write(dest.join("index.json"), top.to_string()).expect("write index.json");
    MultiPlatformLayout {
        dir: dest.to_path_buf(),
        index: index_digest,
        arm64,
        amd64,
    }
}

/// A registries.conf(5) (v2) with no search registries and each of
/// `insecure_hosts` allowed over plain HTTP.
pub fn registries_conf_insecure(insecure_hosts: &[&str]) -> String {
    let mut conf = String::from("unqualified-search-registries = []\n");
    for host in insecure_hosts {
        conf.push_str(&format!(
            "\n[[registry]]\nprefix = \"{host}\"\nlocation = \"{host}\"\ninsecure = true\n"
        ));
    }
    conf
}

/// A registries.conf(5) (v2) that resolves short names on docker.io and
/// sends docker.io to the plain-HTTP mirror `mirror`. docker.io's own
/// location is `fallback` (a loopback port nobody listens on), so that no
/// pull can leave the machine, and a pull that does not use the mirror
/// fails.
pub fn registries_conf_docker_io_mirror(mirror: &str, fallback: &str) -> String {
    format!(
        "unqualified-search-registries = [\"docker.io\"]\n\n\
         [[registry]]\nprefix = \"docker.io\"\nlocation = \"{fallback}\"\ninsecure = true\n\n\
         [[registry.mirror]]\nlocation = \"{mirror}\"\ninsecure = true\n"
    )
}

/// Writes `text` to `path` readable only by its owner (auth files).
pub fn write_private(path: &Path, text: &str) {
    fs::write(path, text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    fs::set_permissions(path, fs::Permissions::from_mode(0o600)).expect("chmod 600");
}
