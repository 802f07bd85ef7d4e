//! Reading an image's metadata: which manifest, config and layers to
//! import, checked against their digests before they are parsed.
//!
//! Two input formats:
//! - **OCI image layout**: `index.json` lists manifests (or nested indexes,
//!   as `docker save` 25+ writes); unipod picks linux/amd64, else the only
//!   one. Names come from the `io.containerd.image.name` annotation, else
//!   `org.opencontainers.image.ref.name` unless that is a bare tag (skopeo's
//!   `oci:DIR:latest` writes just `latest`; `--name` names such an image).
//! - **`docker save`**: `manifest.json` lists images by config file and
//!   layer tars, named by `RepoTags`. It has no manifest digest; unipod uses
//!   the digest of the OCI manifest it would have (see [`synthesize_manifest`]).

use oci_spec::image::{Descriptor, ImageConfiguration, ImageIndex, ImageManifest};
use serde::{Deserialize, Serialize};

use super::archive::Archive;
use super::store::ImageConfig;
use super::{reference, sha256_hex, sha256_of, ImageError};

const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
const ANNOTATION_CONTAINERD_NAME: &str = "io.containerd.image.name";
const ANNOTATION_REF_NAME: &str = "org.opencontainers.image.ref.name";
/// How deep indexes may nest.
const MAX_INDEX_DEPTH: usize = 4;

/// What to import: the image's identity, config and layers.
#[derive(Debug)]
pub(super) struct Plan {
    /// `sha256:<hex>` of the manifest.
    pub manifest_digest: String,
    /// `sha256:<hex>` of the config blob.
    pub config_digest: String,
    /// The runtime config.
    pub config: ImageConfig,
    /// The layers, base first.
    pub layers: Vec<Layer>,
    /// Normalized names the archive gives the image.
    pub names: Vec<String>,
    /// "OCI image layout" or "docker save archive".
    pub format: &'static str,
}

/// One layer blob.
#[derive(Debug)]
pub(super) struct Layer {
    /// Its path in the archive.
    pub file: String,
    /// Its size in bytes, as the manifest says (or the archive, for docker
    /// save's legacy format).
    pub size: u64,
    /// `sha256:<hex>` of the blob as stored, when known.
    pub digest: Option<String>,
    /// `sha256:<hex>` of the uncompressed tar (the config's diff id).
    pub diff_id: String,
}

/// Reads the image metadata in `archive`. `name`, normalized, chooses among
/// several images when the archive holds more than one.
pub(super) fn plan(archive: &Archive, name: Option<&str>) -> Result<Plan, ImageError> {
    if archive.contains("index.json") {
        oci_plan(archive, name)
    } else if archive.contains("manifest.json") {
        docker_plan(archive, name)
    } else {
        Err(ImageError::UnknownFormat {
            path: archive.path().to_path_buf(),
        })
    }
}

/// A manifest the index offers.
struct Candidate {
    descriptor: Descriptor,
    names: Vec<String>,
}

fn oci_plan(archive: &Archive, name: Option<&str>) -> Result<Plan, ImageError> {
    if let Some(layout) = archive.read_small("oci-layout")? {
        let value: serde_json::Value =
            serde_json::from_slice(&layout).map_err(|source| ImageError::Json {
                file: "oci-layout".into(),
                what: "OCI layout file",
                source,
            })?;
        let version = value.get("imageLayoutVersion").and_then(|v| v.as_str());
        if version != Some("1.0.0") {
            return Err(ImageError::Invalid {
                file: "oci-layout".into(),
                field: "imageLayoutVersion".into(),
                reason: format!("{version:?} is not 1.0.0, the version unipod reads"),
            });
        }
    }
    let data = archive
        .read_small("index.json")?
        .ok_or_else(|| ImageError::UnknownFormat {
            path: archive.path().to_path_buf(),
        })?;
    let index: ImageIndex = serde_json::from_slice(&data).map_err(|source| ImageError::Json {
        file: "index.json".into(),
        what: "OCI image index",
        source,
    })?;
    let mut candidates = Vec::new();
    collect_candidates(archive, &index, "index.json", &[], 0, &mut candidates)?;
    let chosen = choose(candidates, name, "index.json")?;
    manifest_plan(
        archive,
        &chosen.descriptor,
        "index.json",
        chosen.names,
        "OCI image layout",
    )
}

/// The plan of the image whose manifest `descriptor` (found in `referrer`)
/// names, its blobs read from `archive`'s `blobs/sha256/`.
pub(super) fn manifest_plan(
    archive: &Archive,
    descriptor: &Descriptor,
    referrer: &str,
    names: Vec<String>,
    format: &'static str,
) -> Result<Plan, ImageError> {
    let digest = descriptor.digest().to_string();
    let blob = blob_path(&digest, referrer)?;
    let data = read_blob(archive, &blob, descriptor, referrer)?;
    let manifest: ImageManifest =
        serde_json::from_slice(&data).map_err(|source| ImageError::Json {
            file: blob.clone(),
            what: "OCI image manifest",
            source,
        })?;
    let config_blob = blob_path(manifest.config().digest().as_ref(), &blob)?;
    let config_data = read_blob(archive, &config_blob, manifest.config(), &blob)?;
    let config = parse_config(&config_data, &config_blob)?;
    let diff_ids = config.rootfs().diff_ids();
    if diff_ids.len() != manifest.layers().len() {
        return Err(ImageError::Invalid {
            file: config_blob,
            field: "rootfs.diff_ids".into(),
            reason: format!(
                "lists {} layers but the manifest {} has {}; the image is inconsistent",
                diff_ids.len(),
                blob,
                manifest.layers().len()
            ),
        });
    }
    let count = manifest.layers().len();
    let mut layers = Vec::with_capacity(count);
    for (i, (layer, diff_id)) in manifest.layers().iter().zip(diff_ids).enumerate() {
        let what = format!("{blob} layers[{i}]");
        let digest = layer.digest().to_string();
        sha256_hex(diff_id, &format!("{config_blob} rootfs.diff_ids[{i}]"))?;
        layers.push(Layer {
            file: blob_path(&digest, &what)?,
            size: layer.size(),
            digest: Some(digest),
            diff_id: diff_id.clone(),
        });
    }
    Ok(Plan {
        manifest_digest: digest,
        config_digest: manifest.config().digest().to_string(),
        config: image_config(&config),
        layers,
        names,
        format,
    })
}

/// Adds the manifests `index` lists to `out`, descending into nested
/// indexes; `names` are those the enclosing descriptors give.
fn collect_candidates(
    archive: &Archive,
    index: &ImageIndex,
    file: &str,
    names: &[String],
    depth: usize,
    out: &mut Vec<Candidate>,
) -> Result<(), ImageError> {
    for (i, descriptor) in index.manifests().iter().enumerate() {
        let mut names = names.to_vec();
        names.extend(annotated_names(descriptor));
        let media_type = descriptor.media_type().to_string();
        if media_type == OCI_INDEX || media_type == DOCKER_LIST {
            if depth >= MAX_INDEX_DEPTH {
                return Err(ImageError::Invalid {
                    file: file.to_string(),
                    field: format!("manifests[{i}]"),
                    reason: format!("indexes nest more than {MAX_INDEX_DEPTH} deep"),
                });
            }
            let blob = blob_path(descriptor.digest().as_ref(), file)?;
            let data = read_blob(archive, &blob, descriptor, file)?;
            let nested: ImageIndex =
                serde_json::from_slice(&data).map_err(|source| ImageError::Json {
                    file: blob.clone(),
                    what: "OCI image index",
                    source,
                })?;
            collect_candidates(archive, &nested, &blob, &names, depth + 1, out)?;
        } else if media_type == OCI_MANIFEST || media_type == DOCKER_MANIFEST {
            out.push(Candidate {
                descriptor: descriptor.clone(),
                names,
            });
        } else {
            log::debug!("{file}: manifests[{i}]: skipping media type {media_type}");
        }
    }
    Ok(())
}

/// The names a descriptor's annotations give, normalized. containerd's full
/// name wins over `ref.name`, which is ignored when it is a bare tag.
fn annotated_names(descriptor: &Descriptor) -> Vec<String> {
    let Some(annotations) = descriptor.annotations() else {
        return Vec::new();
    };
    let name = match (
        annotations.get(ANNOTATION_CONTAINERD_NAME),
        annotations.get(ANNOTATION_REF_NAME),
    ) {
        (Some(name), _) => Some(name),
        // skopeo's oci:DIR:TAG writes the tag alone: "latest" is no name.
        (None, Some(tag)) if !tag.contains(['/', ':']) => {
            log::warn!(
                "index.json: {ANNOTATION_REF_NAME} is \"{tag}\", a tag without a repository; \
                 name the image with --name REF"
            );
            None
        }
        (None, name) => name,
    };
    match name.map(|n| reference::normalize(n)) {
        Some(Ok(name)) => vec![name],
        Some(Err(e)) => {
            log::warn!("ignoring the image name annotation: {e}");
            Vec::new()
        }
        None => Vec::new(),
    }
}

/// The linux/amd64 manifest a registry's index (`file`) lists, or the only
/// manifest of an index that gives no platforms.
pub(super) fn choose_platform(index: &ImageIndex, file: &str) -> Result<Descriptor, ImageError> {
    let candidates: Vec<Candidate> = index
        .manifests()
        .iter()
        .filter(|d| {
            let media_type = d.media_type().to_string();
            media_type == OCI_MANIFEST || media_type == DOCKER_MANIFEST
        })
        .map(|d| Candidate {
            descriptor: d.clone(),
            names: Vec::new(),
        })
        .collect();
    let has_platforms = candidates.iter().any(|c| c.descriptor.platform().is_some());
    if has_platforms && candidates.len() == 1 {
        // choose() takes a lone entry whatever its platform: a registry's
        // arm64-only image must not run here.
        let only = &candidates[0].descriptor;
        let platform = only.platform().as_ref().expect("has a platform");
        if platform.os().to_string() != "linux" || platform.architecture().to_string() != "amd64" {
            return Err(ImageError::NoAmd64 {
                file: file.to_string(),
                platforms: format!("{}/{}", platform.os(), platform.architecture()),
            });
        }
    }
    choose(candidates, None, file).map(|c| c.descriptor)
}

/// Picks the manifest to import: the one `name` designates, else the only
/// one, else the linux/amd64 one.
fn choose(
    mut candidates: Vec<Candidate>,
    name: Option<&str>,
    file: &str,
) -> Result<Candidate, ImageError> {
    if candidates.is_empty() {
        return Err(ImageError::Invalid {
            file: file.to_string(),
            field: "manifests".into(),
            reason: "lists no image manifest; export the image again".into(),
        });
    }
    if let Some(name) = name {
        if candidates.iter().any(|c| c.names.iter().any(|n| n == name)) {
            candidates.retain(|c| c.names.iter().any(|n| n == name));
        }
    }
    if candidates.len() == 1 {
        return Ok(candidates.remove(0));
    }
    let platform = |c: &Candidate| {
        c.descriptor.platform().as_ref().map(|p| {
            let mut s = format!("{}/{}", p.os(), p.architecture());
            if let Some(variant) = p.variant() {
                s.push('/');
                s.push_str(variant);
            }
            s
        })
    };
    if let Some(i) = candidates
        .iter()
        .position(|c| platform(c).is_some_and(|p| p.starts_with("linux/amd64")))
    {
        return Ok(candidates.remove(i));
    }
    if candidates.iter().all(|c| c.descriptor.platform().is_none()) {
        let names: Vec<String> = candidates
            .iter()
            .map(|c| {
                c.names
                    .first()
                    .cloned()
                    .unwrap_or_else(|| "<unnamed>".into())
            })
            .collect();
        return Err(ImageError::Ambiguous {
            file: file.to_string(),
            count: candidates.len(),
            names: names.join(", "),
        });
    }
    let mut platforms: Vec<String> = candidates
        .iter()
        .map(|c| platform(c).unwrap_or_else(|| "unknown".into()))
        .collect();
    platforms.dedup();
    Err(ImageError::NoAmd64 {
        file: file.to_string(),
        platforms: platforms.join(", "),
    })
}

/// `blobs/sha256/<hex>` for `digest`, which `what` names.
fn blob_path(digest: &str, what: &str) -> Result<String, ImageError> {
    Ok(format!("blobs/sha256/{}", sha256_hex(digest, what)?))
}

/// Reads the small blob at `file`, checking it against `descriptor`, which
/// `what` holds.
fn read_blob(
    archive: &Archive,
    file: &str,
    descriptor: &Descriptor,
    what: &str,
) -> Result<Vec<u8>, ImageError> {
    let data = archive
        .read_small(file)?
        .ok_or_else(|| ImageError::MissingBlob {
            file: file.to_string(),
            what: what.to_string(),
        })?;
    check_digest(&data, file, descriptor.digest().as_ref(), what)?;
    if data.len() as u64 != descriptor.size() {
        return Err(ImageError::Invalid {
            file: file.to_string(),
            field: "size".into(),
            reason: format!(
                "{} bytes but {what} says {}; the blob is corrupt or was modified: export the \
                 image again",
                data.len(),
                descriptor.size()
            ),
        });
    }
    Ok(data)
}

fn check_digest(data: &[u8], file: &str, expected: &str, what: &str) -> Result<(), ImageError> {
    let actual = sha256_of(data);
    if actual != expected {
        return Err(ImageError::DigestMismatch {
            file: file.to_string(),
            what: what.to_string(),
            expected: expected.to_string(),
            actual,
        });
    }
    Ok(())
}

fn parse_config(data: &[u8], file: &str) -> Result<ImageConfiguration, ImageError> {
    let config: ImageConfiguration =
        serde_json::from_slice(data).map_err(|source| ImageError::Json {
            file: file.to_string(),
            what: "OCI image config",
            source,
        })?;
    let platform = format!("{}/{}", config.os(), config.architecture());
    if platform != "linux/amd64" {
        return Err(ImageError::Invalid {
            file: file.to_string(),
            field: "os/architecture".into(),
            reason: format!(
                "the image is for {platform}; unipod runs linux/amd64 images only: export the \
                 linux/amd64 image"
            ),
        });
    }
    Ok(config)
}

/// The runtime fields of an OCI config.
fn image_config(config: &ImageConfiguration) -> ImageConfig {
    let Some(c) = config.config() else {
        return ImageConfig::default();
    };
    let non_empty = |s: &Option<String>| s.clone().filter(|s| !s.is_empty());
    ImageConfig {
        entrypoint: c.entrypoint().clone().unwrap_or_default(),
        cmd: c.cmd().clone().unwrap_or_default(),
        env: c.env().clone().unwrap_or_default(),
        working_dir: non_empty(c.working_dir()),
        user: non_empty(c.user()),
        stop_signal: non_empty(c.stop_signal()),
    }
}

/// One image of a `docker save` manifest.json. Unknown fields are allowed:
/// newer Docker versions add some (`LayerSources`) that unipod does not need.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub(super) struct DockerSaveEntry {
    /// The config file: `<hex>.json` or `blobs/sha256/<hex>`.
    pub config: String,
    /// `repo:tag` names; null when saved by image id.
    #[serde(default)]
    pub repo_tags: Option<Vec<String>>,
    /// Layer tars, base first: `<id>/layer.tar` or `blobs/sha256/<hex>`.
    pub layers: Vec<String>,
}

/// Parses a `docker save` manifest.json.
pub(super) fn parse_docker_manifest(data: &[u8]) -> Result<Vec<DockerSaveEntry>, ImageError> {
    serde_json::from_slice(data).map_err(|source| ImageError::Json {
        file: "manifest.json".into(),
        what: "docker save manifest",
        source,
    })
}

fn docker_plan(archive: &Archive, name: Option<&str>) -> Result<Plan, ImageError> {
    let data = archive
        .read_small("manifest.json")?
        .ok_or_else(|| ImageError::UnknownFormat {
            path: archive.path().to_path_buf(),
        })?;
    let mut entries = parse_docker_manifest(&data)?;
    let names_of = |e: &DockerSaveEntry| -> Vec<String> {
        e.repo_tags
            .iter()
            .flatten()
            .filter_map(|t| match reference::normalize(t) {
                Ok(n) => Some(n),
                Err(e) => {
                    log::warn!("manifest.json: ignoring RepoTags entry: {e}");
                    None
                }
            })
            .collect()
    };
    if let Some(name) = name {
        if entries
            .iter()
            .any(|e| names_of(e).iter().any(|n| n == name))
        {
            entries.retain(|e| names_of(e).iter().any(|n| n == name));
        }
    }
    let entry = match entries.len() {
        0 => {
            return Err(ImageError::Invalid {
                file: "manifest.json".into(),
                field: "[]".into(),
                reason: "lists no image; export the image again".into(),
            })
        }
        1 => entries.remove(0),
        count => {
            let names: Vec<String> = entries
                .iter()
                .map(|e| {
                    names_of(e)
                        .first()
                        .cloned()
                        .unwrap_or_else(|| e.config.clone())
                })
                .collect();
            return Err(ImageError::Ambiguous {
                file: "manifest.json".into(),
                count,
                names: names.join(", "),
            });
        }
    };
    let config_data =
        archive
            .read_small(&entry.config)?
            .ok_or_else(|| ImageError::MissingBlob {
                file: entry.config.clone(),
                what: "manifest.json Config".into(),
            })?;
    let config_digest = sha256_of(&config_data);
    // The config's name is its digest (the image id): check it.
    if let Some(expected) = digest_in_name(&entry.config) {
        check_digest(&config_data, &entry.config, &expected, "its file name")?;
    } else {
        log::warn!(
            "manifest.json: Config {} is not named by its digest; it cannot be verified",
            entry.config
        );
    }
    let config = parse_config(&config_data, &entry.config)?;
    let diff_ids = config.rootfs().diff_ids();
    if diff_ids.len() != entry.layers.len() {
        return Err(ImageError::Invalid {
            file: entry.config.clone(),
            field: "rootfs.diff_ids".into(),
            reason: format!(
                "lists {} layers but manifest.json has {}; the archive is inconsistent",
                diff_ids.len(),
                entry.layers.len()
            ),
        });
    }
    let mut layers = Vec::with_capacity(diff_ids.len());
    for (i, (file, diff_id)) in entry.layers.iter().zip(diff_ids).enumerate() {
        sha256_hex(diff_id, &format!("{} rootfs.diff_ids[{i}]", entry.config))?;
        let (_, size) = archive
            .open_file(file)?
            .ok_or_else(|| ImageError::MissingBlob {
                file: file.clone(),
                what: format!("manifest.json Layers[{i}]"),
            })?;
        layers.push(Layer {
            file: file.clone(),
            size,
            digest: digest_in_name(file),
            diff_id: diff_id.clone(),
        });
    }
    let manifest = synthesize_manifest(&config_digest, config_data.len() as u64, &layers);
    Ok(Plan {
        manifest_digest: sha256_of(&manifest),
        config_digest,
        config: image_config(&config),
        layers,
        names: names_of(&entry),
        format: "docker save archive",
    })
}

/// `sha256:<hex>` when `file` is `blobs/sha256/<hex>` or `<hex>.json`.
fn digest_in_name(file: &str) -> Option<String> {
    let base = file.rsplit('/').next()?;
    let hex = base.strip_suffix(".json").unwrap_or(base);
    let in_blobs = file.strip_suffix(base)?.ends_with("sha256/");
    (super::is_sha256_hex(hex) && (in_blobs || base.ends_with(".json")))
        .then(|| format!("sha256:{hex}"))
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct SynthDescriptor<'a> {
    media_type: &'a str,
    digest: &'a str,
    size: u64,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct SynthManifest<'a> {
    schema_version: u32,
    media_type: &'a str,
    config: SynthDescriptor<'a>,
    layers: Vec<SynthDescriptor<'a>>,
}

/// The OCI manifest of a legacy `docker save` image, whose digest stands
/// for the manifest digest the image does not have. It depends only on the
/// config (which names the layers' diff ids) and the layer sizes, so the
/// same archive always gives the same digest.
fn synthesize_manifest(config_digest: &str, config_size: u64, layers: &[Layer]) -> Vec<u8> {
    let manifest = SynthManifest {
        schema_version: 2,
        media_type: OCI_MANIFEST,
        config: SynthDescriptor {
            media_type: "application/vnd.oci.image.config.v1+json",
            digest: config_digest,
            size: config_size,
        },
        layers: layers
            .iter()
            .map(|l| SynthDescriptor {
                media_type: "application/vnd.oci.image.layer.v1.tar",
                digest: &l.diff_id,
                size: l.size,
            })
            .collect(),
    };
    serde_json::to_vec(&manifest).expect("a struct of strings and numbers serializes")
}
