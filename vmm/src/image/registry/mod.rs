//! Pulling images from registries over the OCI distribution API.
//!
//! `unipod image pull REF` (and a pod whose image is missing) resolves REF
//! with registries.conf ([`conf`]: search registries for short names,
//! mirrors, insecure registries, blocks), finds credentials in the auth
//! files podman and docker write ([`auth`]), and talks to each candidate in
//! turn with `oci-client` (`transfer.rs`) until one serves the image:
//!
//! 1. the manifest, or an index resolved to its linux/amd64 manifest, is
//!    fetched and checked against the digest that names it;
//! 2. the config and the layers are downloaded side by side (3 at a time)
//!    into the store's shared `blobs/sha256/`, each checked against its
//!    size and digest before it is kept; a blob already there is reused;
//! 3. the store imports the image from those blobs as it imports an OCI
//!    layout (layers unpacked and packed into erofs).
//!
//! A failed pull leaves no image and no partial blob; blobs that completed
//! stay for the next pull, and `unipod image prune` (or removing the last
//! image that uses them) drops them.
//!
//! `oci-client` is async: a pull runs on a current-thread tokio runtime of
//! its own; the rest of unipod stays on threads.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use futures_util::{StreamExt as _, TryStreamExt as _};
use oci_client::manifest::OciDescriptor;
use oci_spec::image::{Descriptor, ImageIndex, ImageManifest, MediaType};

pub mod auth;
pub mod conf;
mod transfer;

use self::conf::{RegistriesConf, Source};
use self::transfer::{Connect, Session};
use super::reference::{self, Parsed};
use super::{human_size, source, ImageError, ImageStore, ImportedImage};

/// Layers downloaded at once.
const PARALLEL_DOWNLOADS: usize = 3;

/// How to pull.
#[derive(Clone, Debug)]
pub struct PullOptions {
    /// `--cert-dir`: CA certificates (`*.crt`) for the registry, instead of
    /// certs.d's.
    pub cert_dir: Option<PathBuf>,
    /// `--tls-verify=false`: allow plain HTTP and unverified certificates.
    pub tls_verify: bool,
    /// `--authfile`: the only auth file to read.
    pub auth_file: Option<PathBuf>,
    /// Credentials that come before the auth files, by registry or
    /// repository key (a pod's `imagePullSecrets`).
    pub credentials: Vec<(String, auth::Credentials)>,
}

impl Default for PullOptions {
    fn default() -> Self {
        PullOptions {
            cert_dir: None,
            tls_verify: true,
            auth_file: None,
            credentials: Vec::new(),
        }
    }
}

/// A finished pull.
#[derive(Debug)]
pub struct Pulled {
    /// The image, with all its names.
    pub image: ImportedImage,
    /// Where it came from (`127.0.0.1:5000/library/busybox:1.28`).
    pub source: String,
    /// Bytes downloaded (0 when every blob was present).
    pub downloaded: u64,
    /// The image's size on the registry: config and layers, compressed.
    pub size: u64,
    /// How long the whole pull took.
    pub elapsed: Duration,
}

/// Pulls `reference` into `store`; `progress` shows what happens.
pub fn pull(
    store: &ImageStore,
    reference: &str,
    options: &PullOptions,
    progress: &ProgressSink,
) -> Result<Pulled, ImageError> {
    let started = Instant::now();
    let parsed = reference::parse(reference)?;
    let conf = RegistriesConf::load_default()?;
    let candidates: Vec<Parsed> = match &parsed.domain {
        Some(_) => vec![parsed.clone()],
        None => conf
            .search_registries()
            .iter()
            .map(|r| parsed.on(r))
            .collect(),
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(ImageError::io(
            "start the download runtime for",
            store.root(),
        ))?;
    let _pulling = store.pull_lock()?;
    let mut failures = Vec::new();
    let mut all_unreachable = true;
    for candidate in &candidates {
        for source in conf.sources(candidate)? {
            let place = display(&source.reference);
            progress.line(&format!("pulling {place}"));
            let attempt = runtime.block_on(pull_from(store, candidate, &source, options, progress));
            match attempt {
                Ok((image, downloaded, size)) => {
                    return Ok(Pulled {
                        image,
                        source: place,
                        downloaded,
                        size,
                        elapsed: started.elapsed(),
                    })
                }
                Err(PullError::Image(e)) => return Err(e),
                Err(failure @ (PullError::Source(_) | PullError::Unreachable(_))) => {
                    let reason = match failure {
                        PullError::Unreachable(reason) => reason,
                        PullError::Source(reason) => {
                            all_unreachable = false;
                            reason
                        }
                        PullError::Image(_) => unreachable!("matched above"),
                    };
                    if source.mirror {
                        progress.line(&format!("mirror {place} failed: {reason}"));
                    }
                    failures.push(reason);
                }
            }
        }
    }
    Err(ImageError::Pull {
        reference: reference.to_string(),
        unreachable: all_unreachable,
        reason: match failures.len() {
            1 => failures.remove(0),
            _ => format!("every source failed:\n  - {}", failures.join("\n  - ")),
        },
    })
}

/// Why one source could not give the image: the next may (`Source`, or
/// `Unreachable` when it could not even be reached), or the store failed
/// and no other source will do better (`Image`).
enum PullError {
    Source(String),
    Unreachable(String),
    Image(ImageError),
}

impl From<transfer::OpenError> for PullError {
    fn from(e: transfer::OpenError) -> Self {
        match e {
            transfer::OpenError::Unreachable(r) => PullError::Unreachable(r),
            transfer::OpenError::Refused(r) => PullError::Source(r),
        }
    }
}

impl From<ImageError> for PullError {
    fn from(e: ImageError) -> Self {
        PullError::Image(e)
    }
}

/// Pulls `wanted` from `source`; returns the image, the bytes downloaded
/// and the image's compressed size.
async fn pull_from(
    store: &ImageStore,
    wanted: &Parsed,
    source: &Source,
    options: &PullOptions,
    progress: &ProgressSink,
) -> Result<(ImportedImage, u64, u64), PullError> {
    let repository = format!(
        "{}/{}",
        source.reference.registry(),
        source.reference.repository
    );
    let credentials = match options
        .credentials
        .iter()
        .filter(|(key, _)| covers(key, &repository))
        .max_by_key(|(key, _)| key.len())
    {
        Some((_, c)) => Some(c.clone()),
        None => auth::find(
            &auth::files_to_read(options.auth_file.as_deref()),
            &repository,
        )?,
    };
    let session = Session::open(Connect {
        source,
        tls_verify: options.tls_verify,
        cert_dir: options.cert_dir.as_deref(),
        credentials: credentials.map(|c| (c.username, c.password, c.file)),
    })
    .await?;

    let (mut bytes, mut digest) = session
        .manifest(&session.reference)
        .await
        .map_err(PullError::Source)?;
    let mut media_type = media_type_of(&bytes);
    let index_file = format!("{} index", display(&source.reference));
    if is_index(&media_type) {
        let index: ImageIndex = serde_json::from_slice(&bytes).map_err(|e| {
            PullError::Source(format!("{index_file}: not a valid image index: {e}"))
        })?;
        let chosen = source::choose_platform(&index, &index_file)?;
        let pinned = session
            .reference
            .clone_with_digest(chosen.digest().to_string());
        (bytes, digest) = session.manifest(&pinned).await.map_err(PullError::Source)?;
        media_type = media_type_of(&bytes);
        if is_index(&media_type) {
            return Err(PullError::Source(format!(
                "{index_file}: its linux/amd64 entry is another index; unipod follows one level"
            )));
        }
    }
    let manifest: ImageManifest = serde_json::from_slice(&bytes).map_err(|e| {
        PullError::Source(format!(
            "{}: not a valid image manifest: {e}",
            display(&source.reference)
        ))
    })?;
    write_small_blob(store, &digest, &bytes)?;

    let image_present = store.has_image(&digest);
    let mut downloaded = 0;
    let config = manifest.config();
    downloaded += session
        .fetch_blob(store, &oci_descriptor(config), "config", progress)
        .await
        .map_err(PullError::Source)?;
    if !image_present {
        let count = manifest.layers().len();
        let total: u64 = manifest.layers().iter().map(|l| l.size()).sum();
        progress.line(&format!("{count} layers, {} to fetch", human_size(total)));
        let jobs = manifest.layers().iter().enumerate().map(|(i, layer)| {
            let label = format!(
                "layer {}/{count} {}",
                i + 1,
                &layer.digest().to_string()["sha256:".len()..][..12]
            );
            let session = &session;
            async move {
                session
                    .fetch_blob(store, &oci_descriptor(layer), &label, progress)
                    .await
            }
        });
        let sizes: Vec<u64> = futures_util::stream::iter(jobs)
            .buffer_unordered(PARALLEL_DOWNLOADS)
            .try_collect()
            .await
            .map_err(PullError::Source)?;
        downloaded += sizes.iter().sum::<u64>();
    }
    let descriptor = Descriptor::new(
        MediaType::from(media_type.as_str()),
        bytes.len() as u64,
        digest
            .parse::<oci_spec::image::Digest>()
            .map_err(|e| PullError::Source(format!("manifest digest {digest}: {e}")))?,
    );
    let name = wanted.normalized();
    let image = store.import_pulled(
        &descriptor,
        std::slice::from_ref(&name),
        &format!("docker://{}", display(&source.reference)),
        |line| progress.line(line),
    )?;
    let size = config.size() + manifest.layers().iter().map(|l| l.size()).sum::<u64>();
    Ok((image, downloaded, size))
}

/// Checks `credentials` against `registry` (`host[:port]`), as `unipod
/// login` does before it stores them.
pub fn check_login(
    registry: &str,
    credentials: &auth::Credentials,
    options: &PullOptions,
) -> Result<(), ImageError> {
    let failed = |reason| ImageError::Login {
        registry: registry.to_string(),
        reason,
    };
    let probe = reference::parse(&format!("{registry}/unipod/login-check:latest"))?;
    let conf = RegistriesConf::load_default()?;
    let insecure = conf
        .sources(&probe)?
        .last()
        .is_some_and(|source| source.insecure);
    let source = Source {
        reference: probe,
        insecure,
        mirror: false,
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| failed(format!("cannot start the network runtime: {e}")))?;
    runtime.block_on(async {
        let session = Session::open(Connect {
            source: &source,
            tls_verify: options.tls_verify,
            cert_dir: options.cert_dir.as_deref(),
            credentials: Some((
                credentials.username.clone(),
                credentials.password.clone(),
                credentials.file.clone(),
            )),
        })
        .await
        .map_err(|e| failed(e.reason()))?;
        session.check_credentials().await.map_err(failed)
    })
}

/// Writes the small, already verified blob `data` into the store.
fn write_small_blob(store: &ImageStore, digest: &str, data: &[u8]) -> Result<(), ImageError> {
    let path = store.blob_file(digest)?;
    if path.is_file() {
        return Ok(());
    }
    let tmp = store.blob_download_dir(digest)?;
    let file = tmp.path.join("blob");
    std::fs::write(&file, data).map_err(ImageError::io("write", &file))?;
    store.keep_blob(digest, tmp, &file)
}

/// The media type a manifest declares (`mediaType`), or what its shape
/// says when it declares none.
fn media_type_of(bytes: &[u8]) -> String {
    let value: serde_json::Value = serde_json::from_slice(bytes).unwrap_or_default();
    match value.get("mediaType").and_then(|m| m.as_str()) {
        Some(m) => m.to_string(),
        None if value.get("manifests").is_some() => {
            "application/vnd.oci.image.index.v1+json".into()
        }
        None => "application/vnd.oci.image.manifest.v1+json".into(),
    }
}

fn is_index(media_type: &str) -> bool {
    media_type.ends_with("image.index.v1+json") || media_type.ends_with("manifest.list.v2+json")
}

fn oci_descriptor(descriptor: &Descriptor) -> OciDescriptor {
    OciDescriptor {
        media_type: descriptor.media_type().to_string(),
        digest: descriptor.digest().to_string(),
        size: i64::try_from(descriptor.size()).unwrap_or(i64::MAX),
        ..OciDescriptor::default()
    }
}

/// `host/repository:tag` or `@digest`, as a user would write it.
fn display(reference: &Parsed) -> String {
    let mut out = format!("{}/{}", reference.registry(), reference.repository);
    if let Some(tag) = reference.tag_or_latest() {
        out = format!("{out}:{tag}");
    }
    if let Some(digest) = &reference.digest {
        out = format!("{out}@{digest}");
    }
    out
}

/// Whether the credentials key `key` covers `repository`.
fn covers(key: &str, repository: &str) -> bool {
    repository == key
        || repository
            .strip_prefix(key)
            .is_some_and(|rest| rest.starts_with('/'))
}

/// Where a pull reports: a bar per layer on a terminal, else plain lines.
pub struct ProgressSink {
    bars: Option<indicatif::MultiProgress>,
    prefix: &'static str,
}

impl ProgressSink {
    /// Bars when stderr is a terminal; lines prefixed `prefix` otherwise.
    pub fn new(prefix: &'static str) -> ProgressSink {
        use std::io::IsTerminal as _;
        ProgressSink {
            bars: std::io::stderr()
                .is_terminal()
                .then(indicatif::MultiProgress::new),
            prefix,
        }
    }

    /// Plain lines only (tests, logs).
    pub fn lines(prefix: &'static str) -> ProgressSink {
        ProgressSink { bars: None, prefix }
    }

    /// Reports one step.
    pub fn line(&self, text: &str) {
        let line = format!("{}{text}", self.prefix);
        match &self.bars {
            Some(bars) => {
                let _ = bars.println(line);
            }
            None => eprintln!("{line}"),
        }
    }

    fn bar(&self, label: &str, size: u64) -> indicatif::ProgressBar {
        match &self.bars {
            Some(bars) => {
                let bar = bars.add(indicatif::ProgressBar::new(size));
                bar.set_style(
                    indicatif::ProgressStyle::with_template(
                        "{prefix:28} [{bar:30}] {bytes:>10}/{total_bytes:10} {bytes_per_sec:>12}",
                    )
                    .expect("the template is valid")
                    .progress_chars("=> "),
                );
                bar.set_prefix(label.to_string());
                bar
            }
            None => {
                self.line(&format!("{label}: downloading {}", human_size(size)));
                indicatif::ProgressBar::hidden()
            }
        }
    }

    fn done(&self, bar: &indicatif::ProgressBar, text: &str) {
        if self.bars.is_some() {
            bar.finish_and_clear();
        }
        self.line(text);
    }
}
