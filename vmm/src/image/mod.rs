//! Container images: OCI image layouts, `docker save` archives and images
//! pulled from registries ([`registry`]), turned into read-only erofs
//! filesystems that a pod's guest mounts as its root.
//!
//! `unipod image import PATH` reads an image from disk (`unipod image pull`
//! downloads one into `blobs/` first), checks every blob against its sha256
//! digest, applies the layers in order into a staging directory and packs
//! that directory with `mkfs.erofs` into one file. [`ImageStore`] keeps the result under
//! `<state dir>/images/`, keyed by the image's manifest digest:
//!
//! ```text
//! images/
//!   names.json                  {"busybox:latest": "sha256:<hex>", ...}
//!   .lock                       flock'd while names.json or an image dir changes
//!   <hex>/rootfs.erofs          the image's filesystem, read-only
//!   <hex>/image.json            digest, names, size, import time, config, blobs
//!   blobs/sha256/<hex>          blobs pulled from registries, shared by images
//!   .pull-lock                  flock'd shared by pulls (blob GC waits)
//!   .tmp-<hex12>-<pid>-<n>/     an import in progress (renamed to <hex>/)
//! ```
//!
//! # Design
//! - **Inputs** (`archive.rs`, `source.rs`): a directory or a tar, holding an OCI
//!   image layout (`oci-layout`, `index.json`, `blobs/sha256/`) or a `docker
//!   save` archive (`manifest.json`, `<id>/layer.tar` or `blobs/`). A tar is
//!   indexed in place (entry offsets) and blobs are read straight out of it:
//!   nothing is copied before it is needed.
//! - **Trust**: the manifest, the config and every layer blob are hashed and
//!   compared with the digest that names them *before* they are parsed or
//!   unpacked; each layer's uncompressed stream is also checked against the
//!   config's `rootfs.diff_ids`. `docker save`'s legacy format has no
//!   manifest; its digest is that of an equivalent OCI manifest that unipod
//!   writes from the (verified) config and its diff ids.
//! - **Layers** (`layer.rs`): applied by hand, with whiteouts, opaque
//!   directories, hard links and symlinks, and with no write ever leaving the
//!   staging root (see that module for why not a library).
//! - **Filesystem** (`erofs.rs`): uncompressed erofs, all timestamps 0 and a
//!   UUID taken from the digest, so the same image gives the same bytes.
//! - **Store** (`store.rs`): an import builds in a temporary directory and
//!   renames it into place, so readers never see half an image; names.json
//!   is rewritten under an exclusive `flock`, so concurrent imports do not
//!   lose each other's names.
//!
//! # Limitations
//! - linux/amd64 images only; xz and bzip2 layers are refused with the way
//!   to re-export them with gzip (gzip, zstd and plain tars are read).
//! - Device nodes in layers are skipped (the guest's /dev is a devtmpfs);
//!   extended attributes (file capabilities, for one) are not applied.
//! - File ownership is kept only when importing as root: an unprivileged
//!   import cannot chown, and its files belong to the importing user.

use std::io::{self, Read};
use std::path::PathBuf;

use sha2::{Digest as _, Sha256};

mod archive;
mod erofs;
#[cfg(feature = "fuzzing")]
pub mod fuzzing;
mod layer;
pub mod reference;
pub mod registry;
mod source;
mod store;

pub use store::{ImageConfig, ImageStore, ImportedImage, Pruned, Removed, StoredImage};

/// Packs an unpacked root file system `dir` into the new read-only erofs
/// image `out`, as image import does; `uuid_seed_hex` (hex digits) seeds the
/// file system UUID. Used by the containerd shim on rootfs mounts.
pub fn pack_rootfs_dir(
    dir: &std::path::Path,
    out: &std::path::Path,
    uuid_seed_hex: &str,
) -> Result<(), ImageError> {
    erofs::mkfs(dir, out, uuid_seed_hex)
}

/// Errors of image import and lookup. Each names the file, entry or field at
/// fault and, where there is one, the fix.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    /// A file or directory could not be read or written.
    #[error("cannot {action} {}", path.display())]
    Io {
        /// What unipod was doing ("read", "create", ...).
        action: &'static str,
        /// The file at fault.
        path: PathBuf,
        /// The system's error.
        #[source]
        source: io::Error,
    },
    /// The path given to `import` does not exist.
    #[error(
        "{}: no such file or directory; give an OCI image layout directory, or a tar of \
         one or of 'docker save'",
        path.display()
    )]
    NotFound {
        /// The path given.
        path: PathBuf,
    },
    /// The input is neither an OCI layout nor a `docker save` archive.
    #[error(
        "{}: not an OCI image layout (no index.json) nor a 'docker save' archive (no \
         manifest.json); give the directory or tar that 'skopeo copy ... oci:DIR' or \
         'docker save' wrote",
        path.display()
    )]
    UnknownFormat {
        /// The path given.
        path: PathBuf,
    },
    /// The input is a compressed tar, which cannot be read in place.
    #[error(
        "{}: the archive is {compression}-compressed; decompress it first (e.g. 'gunzip -k')",
        path.display()
    )]
    CompressedArchive {
        /// The path given.
        path: PathBuf,
        /// "gzip", "zstd", ...
        compression: &'static str,
    },
    /// A JSON file of the image could not be parsed.
    #[error("{file}: not a valid {what}")]
    Json {
        /// The file, relative to the image archive.
        file: String,
        /// What it should hold ("OCI image index", ...).
        what: &'static str,
        /// The parser's error.
        #[source]
        source: serde_json::Error,
    },
    /// A field of an image file has a value unipod cannot use.
    #[error("{file}: {field}: {reason}")]
    Invalid {
        /// The file, relative to the image archive.
        file: String,
        /// The field at fault.
        field: String,
        /// What is wrong and what to do.
        reason: String,
    },
    /// A blob named by a manifest or index is not in the archive.
    #[error("{file}: missing from the archive ({what} needs it); export the image again")]
    MissingBlob {
        /// The blob's path in the archive.
        file: String,
        /// Who refers to it ("layer 2/3", ...).
        what: String,
    },
    /// A blob's content does not match its digest.
    #[error(
        "{file}: content has digest {actual} but {what} says {expected}; the blob is \
         corrupt or was modified: export the image again"
    )]
    DigestMismatch {
        /// The blob's path in the archive.
        file: String,
        /// Who names the digest ("index.json", "layer 2/3", ...).
        what: String,
        /// The digest it should have.
        expected: String,
        /// The digest it has.
        actual: String,
    },
    /// A digest uses another algorithm than sha256, or is malformed.
    #[error("{what}: digest \"{digest}\" is not a sha256 digest (sha256:<64 hex>); unipod verifies sha256 only")]
    UnsupportedDigest {
        /// Where the digest was found.
        what: String,
        /// The digest.
        digest: String,
    },
    /// The index holds images for other platforms only.
    #[error(
        "{file}: holds images for {platforms} but none for linux/amd64, the only platform \
         unipod runs; export the linux/amd64 image (e.g. skopeo copy --override-arch amd64)"
    )]
    NoAmd64 {
        /// The index file.
        file: String,
        /// The platforms found, comma-separated.
        platforms: String,
    },
    /// The archive holds several images and nothing says which one.
    #[error("{file}: holds {count} images ({names}); choose one with --name REF")]
    Ambiguous {
        /// The index or manifest file.
        file: String,
        /// How many candidates.
        count: usize,
        /// Their names, comma-separated.
        names: String,
    },
    /// A layer is compressed with something unipod cannot decompress.
    #[error(
        "layer {layer} ({file}): {compression} layers are not supported; re-export the \
         image with gzip or uncompressed layers (e.g. skopeo copy --dest-compress-format gzip)"
    )]
    UnsupportedCompression {
        /// "2/3".
        layer: String,
        /// The blob's path in the archive.
        file: String,
        /// "zstd", ...
        compression: &'static str,
    },
    /// A layer entry would write outside the image root.
    #[error("layer {layer} ({file}): entry \"{entry}\" {reason}; refusing to unpack it")]
    UnsafeEntry {
        /// "2/3".
        layer: String,
        /// The blob's path in the archive.
        file: String,
        /// The tar entry's path.
        entry: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A layer entry could not be unpacked.
    #[error(
        "layer {layer} ({file}): cannot unpack {}",
        if entry.is_empty() { "the layer's tar stream".to_string() } else { format!("\"{entry}\"") }
    )]
    Unpack {
        /// "2/3".
        layer: String,
        /// The blob's path in the archive.
        file: String,
        /// The tar entry's path ("" for the tar stream itself).
        entry: String,
        /// The error.
        #[source]
        source: io::Error,
    },
    /// `mkfs.erofs` is not installed.
    #[error("mkfs.erofs not found; install it with 'apt install erofs-utils'")]
    MkfsMissing,
    /// `mkfs.erofs` failed.
    #[error("mkfs.erofs failed ({status}): {stderr}")]
    Mkfs {
        /// Its exit status.
        status: String,
        /// What it printed.
        stderr: String,
    },
    /// An image reference (name) is malformed.
    #[error("invalid image reference \"{reference}\": {reason}")]
    InvalidReference {
        /// The reference as given.
        reference: String,
        /// What is wrong.
        reason: &'static str,
    },
    /// No imported image has this name or digest.
    #[error(
        "image \"{reference}\" is not imported; import it with: unipod image import PATH \
         (an OCI layout or docker-save tar)"
    )]
    NotImported {
        /// The reference as given.
        reference: String,
    },
    /// A digest prefix matches several images.
    #[error("\"{reference}\" matches several images ({digests}); give more of the digest")]
    AmbiguousDigest {
        /// The prefix as given.
        reference: String,
        /// The matching digests, comma-separated.
        digests: String,
    },
    /// A pull failed at every source; `reason` says why, per source.
    #[error("cannot pull {reference}: {reason}")]
    Pull {
        /// The reference as given.
        reference: String,
        /// What went wrong, and the fix.
        reason: String,
        /// No source could even be reached (no network, unknown hosts).
        unreachable: bool,
    },
    /// registries.conf is malformed.
    #[error("{}: {reason}", path.display())]
    RegistriesConf {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// registries.conf blocks the registry.
    #[error(
        "cannot pull {reference}: registry {prefix} is blocked (blocked = true in {})",
        path.display()
    )]
    Blocked {
        /// The reference, normalized.
        reference: String,
        /// The prefix of the blocking entry.
        prefix: String,
        /// The registries.conf.
        path: PathBuf,
    },
    /// The image is absent and could not be pulled.
    #[error(
        "image \"{reference}\" is not imported; import it with: unipod image import PATH \
         (an OCI layout or docker-save tar), or make it pullable: {pull}"
    )]
    NotPulled {
        /// The reference as given.
        reference: String,
        /// Why the pull failed.
        pull: Box<ImageError>,
    },
    /// `imagePullPolicy: Never` and the image is absent.
    #[error(
        "container image \"{reference}\" is not present with pull policy of Never; pull it \
         with 'unipod image pull {reference}' (or import it), or change imagePullPolicy"
    )]
    NeverPull {
        /// The image reference.
        reference: String,
    },
    /// `unipod login` could not verify the credentials.
    #[error("cannot log in to {registry}: {reason}")]
    Login {
        /// `host[:port]`.
        registry: String,
        /// Why.
        reason: String,
    },
    /// An auth file is malformed.
    #[error("{}: {reason}", path.display())]
    AuthFile {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// A file of the image store is unreadable.
    #[error(
        "{}: unreadable image store file; remove it and import the image again",
        path.display()
    )]
    Store {
        /// The file.
        path: PathBuf,
        /// The parser's error.
        #[source]
        source: serde_json::Error,
    },
}

impl ImageError {
    /// A pull failed without reaching any registry: no network, unknown
    /// hosts, refused connections, or registries.conf blocks it.
    pub fn is_unreachable(&self) -> bool {
        match self {
            ImageError::Pull { unreachable, .. } => *unreachable,
            ImageError::Blocked { .. } => true,
            ImageError::NotPulled { pull, .. } => pull.is_unreachable(),
            _ => false,
        }
    }

    /// A pull was tried and failed: the kubelet's `ErrImagePull`, which a
    /// later pull may fix (not a malformed reference or `Never` policy).
    pub fn is_pull_failure(&self) -> bool {
        matches!(
            self,
            ImageError::Pull { .. } | ImageError::Blocked { .. } | ImageError::NotPulled { .. }
        )
    }

    /// What a failed pull says, without the advice on importing that
    /// [`ImageError::NotPulled`] wraps it in: the kubelet's `ErrImagePull`
    /// message.
    pub fn pull_reason(&self) -> String {
        match self {
            ImageError::NotPulled { pull, .. } => pull.to_string(),
            other => other.to_string(),
        }
    }

    fn io(action: &'static str, path: impl Into<PathBuf>) -> impl FnOnce(io::Error) -> ImageError {
        let path = path.into();
        move |source| ImageError::Io {
            action,
            path,
            source,
        }
    }
}

/// The hex part of a `sha256:<hex>` digest, checked to be 64 lowercase hex
/// digits (so that it is safe to use as a file name).
fn sha256_hex<'a>(digest: &'a str, what: &str) -> Result<&'a str, ImageError> {
    match digest.strip_prefix("sha256:") {
        Some(hex) if is_sha256_hex(hex) => Ok(hex),
        _ => Err(ImageError::UnsupportedDigest {
            what: what.to_string(),
            digest: digest.to_string(),
        }),
    }
}

/// Whether `s` is 64 lowercase hex digits.
fn is_sha256_hex(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// A reader that hashes what passes through it.
struct HashingReader<R> {
    inner: R,
    hasher: Sha256,
    bytes: u64,
}

impl<R: Read> HashingReader<R> {
    fn new(inner: R) -> Self {
        HashingReader {
            inner,
            hasher: Sha256::new(),
            bytes: 0,
        }
    }

    /// Reads the rest of the stream; returns `sha256:<hex>` of everything
    /// read, and the byte count.
    fn finish(mut self) -> io::Result<(String, u64)> {
        io::copy(&mut self, &mut io::sink())?;
        Ok((format!("sha256:{:x}", self.hasher.finalize()), self.bytes))
    }
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        self.bytes += n as u64;
        Ok(n)
    }
}

/// `sha256:<hex>` of `data`.
fn sha256_of(data: &[u8]) -> String {
    format!("sha256:{:x}", Sha256::digest(data))
}

/// A size for people: "812 B", "4.0 KiB", "1.2 MiB", "3.4 GiB".
pub fn human_size(bytes: u64) -> String {
    const UNITS: [&str; 4] = ["KiB", "MiB", "GiB", "TiB"];
    if bytes < 1024 {
        return format!("{bytes} B");
    }
    let mut value = bytes as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}

#[cfg(test)]
mod tests;
