//! The image store: `<state dir>/images/`, one directory per manifest digest
//! and a names index (see the [module docs](super) for the layout).
//!
//! # Design
//! - An import builds everything in `.tmp-<hex12>-<pid>-<n>/` and renames it
//!   to `<hex>/` at the end: an image directory is complete or absent. The
//!   temporary directory is removed on every error path (a guard's `Drop`);
//!   one left by a killed import is removed by the next import once its
//!   process is gone.
//! - `names.json` is the source of truth for names; each `image.json` keeps
//!   a copy for people and tools reading the directory. Both change only
//!   under an exclusive `flock` on `images/.lock`, taken for short
//!   read-modify-write steps (never while unpacking), so concurrent imports
//!   and removals serialize without losing each other's names.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{self, File};
use std::io::{BufReader, Read};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use flate2::bufread::MultiGzDecoder;
use nix::fcntl::{Flock, FlockArg};
use oci_spec::image::Descriptor;
use serde::{Deserialize, Serialize};

use super::archive::{compression_of, Archive};
use super::layer::{self, LayerName};
use super::source::{self, Layer};
use super::{erofs, human_size, is_sha256_hex, reference, sha256_hex, HashingReader, ImageError};

const NAMES_FILE: &str = "names.json";
const LOCK_FILE: &str = ".lock";
const TEMP_PREFIX: &str = ".tmp-";
const IMAGE_FILE: &str = "image.json";
const ROOTFS_FILE: &str = "rootfs.erofs";
/// Downloaded blobs, shared by the images pulled: `blobs/sha256/<hex>`, so
/// that the store's root reads as an OCI layout's blob directory.
const BLOBS_DIR: &str = "blobs/sha256";
/// Held shared by pulls, exclusive by blob garbage collection.
const PULL_LOCK_FILE: &str = ".pull-lock";

/// What an image's config says about running it (the OCI config's
/// `Entrypoint`, `Cmd`, `Env`, `WorkingDir` and `User`). Empty lists and
/// `None` mean the image does not say.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImageConfig {
    /// The command prefix (`ENTRYPOINT`).
    pub entrypoint: Vec<String>,
    /// The default arguments, or command when there is no entrypoint (`CMD`).
    pub cmd: Vec<String>,
    /// `NAME=value` pairs.
    pub env: Vec<String>,
    /// The working directory.
    pub working_dir: Option<String>,
    /// `user`, `uid`, `user:group` or `uid:gid`.
    pub user: Option<String>,
    /// The signal that stops it (`SIGQUIT`, `QUIT` or `3`); SIGTERM when
    /// `None`. Absent in images imported before it was recorded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop_signal: Option<String>,
}

/// An imported image.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredImage {
    /// `sha256:<hex>` of its manifest.
    pub digest: String,
    /// The normalized names (`busybox:latest`) it is known by; may be empty.
    pub names: Vec<String>,
    /// Its read-only erofs root filesystem.
    pub rootfs: PathBuf,
    /// How to run it.
    pub config: ImageConfig,
    /// Size of `rootfs` in bytes.
    pub size_bytes: u64,
    /// When it was imported (seconds since the epoch).
    pub imported_unix: u64,
}

/// The result of [`ImageStore::import`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImportedImage {
    /// The image, with all its names.
    pub image: StoredImage,
    /// Whether it was imported before (nothing was unpacked; only names
    /// were added).
    pub already_present: bool,
}

/// The result of [`ImageStore::remove`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Removed {
    /// Names removed.
    pub names: Vec<String>,
    /// The digest of the image removed, if it was (when no names remain).
    pub image: Option<String>,
    /// How many downloaded blobs went with it (those no other image uses).
    pub blobs: usize,
}

/// The result of [`ImageStore::prune`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Pruned {
    /// The digests of the images removed (those with no name).
    pub images: Vec<String>,
    /// The digests of the blobs removed.
    pub blobs: Vec<String>,
}

/// `image.json`.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct ImageRecord {
    digest: String,
    names: Vec<String>,
    size_bytes: u64,
    imported_unix: u64,
    config: ImageConfig,
    /// "OCI image layout" or "docker save archive".
    format: String,
    /// The path it was imported from, or the registry reference it was
    /// pulled from.
    source: PathBuf,
    layers: usize,
    /// The blobs in `blobs/sha256/` it was built from (pulled images only):
    /// they stay while an image uses them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    blobs: Vec<String>,
}

/// Normalized name to `sha256:<hex>`.
type Names = BTreeMap<String, String>;

/// The images of one state directory.
#[derive(Clone, Debug)]
pub struct ImageStore {
    root: PathBuf,
}

/// A temporary import or download directory, removed on drop unless kept.
pub(super) struct TempDir {
    pub(super) path: PathBuf,
    keep: bool,
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if !self.keep {
            if let Err(e) = fs::remove_dir_all(&self.path) {
                if e.kind() != std::io::ErrorKind::NotFound {
                    log::warn!("cannot remove {}: {e}", self.path.display());
                }
            }
        }
    }
}

impl ImageStore {
    /// The store under `state_dir` (its `images/`). Does no I/O: the
    /// directory is created by the first import.
    pub fn open(state_dir: &Path) -> ImageStore {
        ImageStore {
            root: state_dir.join("images"),
        }
    }

    /// The store's directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Imports the image at `path` (an OCI image layout directory, or a tar
    /// of one or of `docker save`), adding `name` (or, without it, the names
    /// the archive gives) to it. `progress` receives a line per long step.
    /// An image already in the store is not unpacked again.
    pub fn import(
        &self,
        path: &Path,
        name: Option<&str>,
        progress: impl FnMut(&str),
    ) -> Result<ImportedImage, ImageError> {
        let name = name.map(reference::normalize).transpose()?;
        let archive = Archive::open(path)?;
        let plan = source::plan(&archive, name.as_deref())?;
        let names = match name {
            Some(name) => vec![name],
            None => plan.names.clone(),
        };
        let source = fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
        self.import_plan(&archive, plan, &names, source, None, progress)
    }

    /// Imports the image whose manifest `manifest` names from the blobs a
    /// pull put in `blobs/sha256/`, naming it `names`; `source` is the
    /// reference it was pulled from.
    pub(super) fn import_pulled(
        &self,
        manifest: &Descriptor,
        names: &[String],
        source: &str,
        progress: impl FnMut(&str),
    ) -> Result<ImportedImage, ImageError> {
        let archive = Archive::open(&self.root)?;
        let plan =
            source::manifest_plan(&archive, manifest, source, names.to_vec(), "registry pull")?;
        let mut blobs = vec![plan.manifest_digest.clone(), plan.config_digest.clone()];
        blobs.extend(plan.layers.iter().filter_map(|l| l.digest.clone()));
        self.import_plan(
            &archive,
            plan,
            names,
            PathBuf::from(source),
            Some(blobs),
            progress,
        )
    }

    /// Unpacks `plan`'s layers from `archive` and packs them, unless the
    /// image is present already; then adds `names`. `pulled_blobs`: the
    /// store's own blobs the image is made of, each checked against its
    /// digest when it was downloaded (so not hashed again before unpacking).
    fn import_plan(
        &self,
        archive: &Archive,
        plan: source::Plan,
        names: &[String],
        source: PathBuf,
        pulled_blobs: Option<Vec<String>>,
        mut progress: impl FnMut(&str),
    ) -> Result<ImportedImage, ImageError> {
        let verified = pulled_blobs.is_some();
        let digest = plan.manifest_digest.clone();
        let hex = sha256_hex(&digest, "the manifest")?.to_string();
        fs::create_dir_all(&self.root).map_err(ImageError::io("create", &self.root))?;
        let final_dir = self.root.join(&hex);
        if final_dir.join(IMAGE_FILE).is_file() {
            progress(&format!("{digest} is already present; nothing to unpack"));
            return self.finish_import(&digest, names, None);
        }
        self.remove_stale_temps();

        let tmp = self.temp_dir(&hex)?;
        let staging = tmp.path.join("rootfs");
        fs::create_dir(&staging).map_err(ImageError::io("create", &staging))?;
        fs::set_permissions(&staging, fs::Permissions::from_mode(0o755))
            .map_err(ImageError::io("chmod", &staging))?;
        let chown = nix::unistd::geteuid().is_root();
        if !chown {
            progress(&format!(
                "not running as root: the image's files will belong to uid {}, not to their owners",
                nix::unistd::geteuid()
            ));
        }
        let count = plan.layers.len();
        for (i, layer) in plan.layers.iter().enumerate() {
            let name = LayerName {
                index: format!("{}/{count}", i + 1),
                file: layer.file.clone(),
            };
            progress(&format!(
                "unpacking layer {} ({})",
                name.index,
                human_size(layer.size)
            ));
            unpack_layer(archive, layer, i, &name, &staging, chown, verified)?;
        }
        let rootfs = tmp.path.join(ROOTFS_FILE);
        progress(&format!(
            "mkfs.erofs: packing the root filesystem into {ROOTFS_FILE}"
        ));
        erofs::mkfs(&staging, &rootfs, &hex)?;
        fs::remove_dir_all(&staging).map_err(ImageError::io("remove", &staging))?;
        let size_bytes = fs::metadata(&rootfs)
            .map_err(ImageError::io("read", &rootfs))?
            .len();
        let record = ImageRecord {
            digest: digest.clone(),
            names: Vec::new(),
            size_bytes,
            imported_unix: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
            config: plan.config,
            format: plan.format.to_string(),
            source,
            layers: count,
            blobs: pulled_blobs.unwrap_or_default(),
        };
        write_json(&tmp.path.join(IMAGE_FILE), &record)?;
        self.finish_import(&digest, names, Some(tmp))
    }

    /// Whether the image with manifest `digest` is in the store.
    pub(super) fn has_image(&self, digest: &str) -> bool {
        sha256_hex(digest, "the manifest")
            .is_ok_and(|hex| self.root.join(hex).join(IMAGE_FILE).is_file())
    }

    /// Where the blob `digest` lives once downloaded (it may not exist).
    pub(super) fn blob_file(&self, digest: &str) -> Result<PathBuf, ImageError> {
        Ok(self
            .root
            .join(BLOBS_DIR)
            .join(sha256_hex(digest, "the blob")?))
    }

    /// A new temporary directory for a download of blob `digest`; moved
    /// into place with [`ImageStore::keep_blob`].
    pub(super) fn blob_download_dir(&self, digest: &str) -> Result<TempDir, ImageError> {
        fs::create_dir_all(self.root.join(BLOBS_DIR))
            .map_err(ImageError::io("create", self.root.join(BLOBS_DIR)))?;
        self.temp_dir(sha256_hex(digest, "the blob")?)
    }

    /// Moves the verified download `file` (in `dir`) to blob `digest`'s
    /// place.
    pub(super) fn keep_blob(
        &self,
        digest: &str,
        dir: TempDir,
        file: &Path,
    ) -> Result<(), ImageError> {
        let dest = self.blob_file(digest)?;
        fs::rename(file, &dest).map_err(ImageError::io("rename", file))?;
        drop(dir);
        Ok(())
    }

    /// Takes the lock that keeps blob garbage collection away while a pull
    /// downloads and imports (shared: pulls run side by side).
    pub(super) fn pull_lock(&self) -> Result<Flock<File>, ImageError> {
        self.flock(PULL_LOCK_FILE, FlockArg::LockShared)
    }

    /// Removes images no name refers to, blobs no image uses, and what
    /// interrupted imports and pulls left; returns the removed digests.
    pub fn prune(&self) -> Result<Pruned, ImageError> {
        let _lock = self.lock()?;
        let index = self.read_names()?;
        let mut pruned = Pruned::default();
        for hex in self.image_dirs() {
            let digest = format!("sha256:{hex}");
            if !index.values().any(|d| *d == digest) {
                self.remove_image_dir(&hex)?;
                pruned.images.push(digest);
            }
        }
        self.remove_stale_temps();
        pruned.blobs = self.remove_unused_blobs()?;
        Ok(pruned)
    }

    /// The hex digests of the images in the store.
    fn image_dirs(&self) -> Vec<String> {
        match fs::read_dir(&self.root) {
            Ok(entries) => entries
                .filter_map(|e| e.ok()?.file_name().into_string().ok())
                .filter(|n| is_sha256_hex(n) && self.root.join(n).join(IMAGE_FILE).is_file())
                .collect(),
            Err(_) => Vec::new(),
        }
    }

    /// Removes the image directory `hex`: renamed first, so the image
    /// vanishes at once even if removing its files is interrupted.
    fn remove_image_dir(&self, hex: &str) -> Result<(), ImageError> {
        let dir = self.root.join(hex);
        let doomed = self.temp_dir(hex)?;
        fs::remove_dir(&doomed.path).map_err(ImageError::io("remove", &doomed.path))?;
        fs::rename(&dir, &doomed.path).map_err(ImageError::io("remove", &dir))?;
        Ok(())
    }

    /// Removes the blobs no image was built from, unless a pull is under
    /// way (it holds [`ImageStore::pull_lock`]); returns their digests.
    /// Hold the lock.
    fn remove_unused_blobs(&self) -> Result<Vec<String>, ImageError> {
        let dir = self.root.join(BLOBS_DIR);
        let Ok(entries) = fs::read_dir(&dir) else {
            return Ok(Vec::new());
        };
        let Ok(_no_pull) = self.flock(PULL_LOCK_FILE, FlockArg::LockExclusiveNonblock) else {
            log::info!("a pull is under way: unused blobs are left for the next removal");
            return Ok(Vec::new());
        };
        let mut used = BTreeSet::new();
        for hex in self.image_dirs() {
            let record: ImageRecord = read_json(&self.root.join(&hex).join(IMAGE_FILE))?;
            used.extend(record.blobs);
        }
        let mut removed = Vec::new();
        for entry in entries.flatten() {
            let Some(hex) = entry.file_name().into_string().ok() else {
                continue;
            };
            let digest = format!("sha256:{hex}");
            if !used.contains(&digest) {
                fs::remove_file(entry.path()).map_err(ImageError::io("remove", entry.path()))?;
                removed.push(digest);
            }
        }
        Ok(removed)
    }

    /// Under the lock: moves `tmp` (a complete image directory) into place
    /// unless another import got there first, then adds `names`.
    fn finish_import(
        &self,
        digest: &str,
        names: &[String],
        tmp: Option<TempDir>,
    ) -> Result<ImportedImage, ImageError> {
        let hex = sha256_hex(digest, "the manifest")?;
        let final_dir = self.root.join(hex);
        let _lock = self.lock()?;
        let mut already_present = true;
        if let Some(mut tmp) = tmp {
            if !final_dir.exists() {
                fs::rename(&tmp.path, &final_dir).map_err(ImageError::io("rename", &tmp.path))?;
                tmp.keep = true;
                already_present = false;
            }
        }
        let mut index = self.read_names()?;
        let mut touched = BTreeSet::from([digest.to_string()]);
        for name in names {
            if let Some(old) = index.insert(name.clone(), digest.to_string()) {
                touched.insert(old);
            }
        }
        self.write_names(&index, &touched)?;
        Ok(ImportedImage {
            image: self.load(hex, &index)?,
            already_present,
        })
    }

    /// Adds `names` to the image `digest`, as a repeated import does.
    #[cfg(test)]
    pub(super) fn add_names_for_test(
        &self,
        digest: &str,
        names: &[String],
    ) -> Result<(), ImageError> {
        self.finish_import(digest, names, None).map(|_| ())
    }

    /// All imported images, most recently imported first.
    pub fn list(&self) -> Result<Vec<StoredImage>, ImageError> {
        let index = self.read_names()?;
        let entries = match fs::read_dir(&self.root) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(ImageError::io("read", &self.root)(e)),
        };
        let mut images = Vec::new();
        for entry in entries {
            let entry = entry.map_err(ImageError::io("read", &self.root))?;
            let name = entry.file_name();
            let Some(hex) = name.to_str().filter(|n| is_sha256_hex(n)) else {
                continue;
            };
            if entry.path().join(IMAGE_FILE).is_file() {
                images.push(self.load(hex, &index)?);
            }
        }
        images.sort_by(|a, b| {
            b.imported_unix
                .cmp(&a.imported_unix)
                .then_with(|| a.digest.cmp(&b.digest))
        });
        Ok(images)
    }

    /// The image `reference` designates: a name (`busybox`,
    /// `docker.io/library/busybox:latest`, ...), a digest (`sha256:<hex>`),
    /// or a prefix of one (12 or more hex digits, as `unipod image ls`
    /// shows them).
    pub fn resolve(&self, reference: &str) -> Result<StoredImage, ImageError> {
        let index = self.read_names()?;
        let hex = self.find(reference, &index)?;
        self.load(&hex, &index)
    }

    /// Removes `reference`: a name loses that name, and the image goes when
    /// it has no name left; a digest removes the image and all its names.
    pub fn remove(&self, reference: &str) -> Result<Removed, ImageError> {
        let _lock = self.lock()?;
        let mut index = self.read_names()?;
        let mut removed = Removed::default();
        let by_name = reference::normalize(reference)
            .ok()
            .filter(|n| index.contains_key(n));
        let digest = match by_name {
            Some(name) => {
                let digest = index.remove(&name).expect("the name is in the index");
                removed.names.push(name);
                digest
            }
            None => {
                let hex = self.find(reference, &index)?;
                let digest = format!("sha256:{hex}");
                index.retain(|name, d| {
                    let keep = *d != digest;
                    if !keep {
                        removed.names.push(name.clone());
                    }
                    keep
                });
                digest
            }
        };
        let hex = sha256_hex(&digest, NAMES_FILE)?.to_string();
        if !index.values().any(|d| *d == digest) && self.root.join(&hex).exists() {
            self.remove_image_dir(&hex)?;
            removed.image = Some(digest.clone());
        }
        self.write_names(&index, &BTreeSet::from([digest]))?;
        if removed.image.is_some() {
            removed.blobs = self.remove_unused_blobs()?.len();
        }
        Ok(removed)
    }

    /// The hex digest of the image `reference` designates.
    fn find(&self, reference: &str, index: &Names) -> Result<String, ImageError> {
        let not_imported = || ImageError::NotImported {
            reference: reference.to_string(),
        };
        if let Some(hex) = reference.strip_prefix("sha256:") {
            return self.find_digest(reference, hex);
        }
        match reference::normalize(reference) {
            Ok(name) => {
                if let Some(digest) = index.get(&name) {
                    let hex = sha256_hex(digest, NAMES_FILE)?;
                    if self.root.join(hex).join(IMAGE_FILE).is_file() {
                        return Ok(hex.to_string());
                    }
                    return Err(not_imported());
                }
                if let Some((_, digest)) = name.split_once('@') {
                    return self.find_digest(reference, &digest["sha256:".len()..]);
                }
            }
            Err(e) if !is_hex(reference) => return Err(e),
            Err(_) => {}
        }
        if reference.len() >= 12 && is_hex(reference) {
            return self.find_digest(reference, reference);
        }
        Err(not_imported())
    }

    /// The one image whose hex digest starts with `prefix`.
    fn find_digest(&self, reference: &str, prefix: &str) -> Result<String, ImageError> {
        let not_imported = || ImageError::NotImported {
            reference: reference.to_string(),
        };
        if prefix.is_empty() || !is_hex(prefix) {
            return Err(not_imported());
        }
        let mut found: Vec<String> = match fs::read_dir(&self.root) {
            Ok(entries) => entries
                .filter_map(|e| e.ok()?.file_name().into_string().ok())
                .filter(|n| is_sha256_hex(n) && n.starts_with(prefix))
                .filter(|n| self.root.join(n).join(IMAGE_FILE).is_file())
                .collect(),
            Err(_) => Vec::new(),
        };
        match found.len() {
            0 => Err(not_imported()),
            1 => Ok(found.remove(0)),
            _ => Err(ImageError::AmbiguousDigest {
                reference: reference.to_string(),
                digests: found
                    .iter()
                    .map(|h| format!("sha256:{}", &h[..12]))
                    .collect::<Vec<_>>()
                    .join(", "),
            }),
        }
    }

    fn load(&self, hex: &str, index: &Names) -> Result<StoredImage, ImageError> {
        let dir = self.root.join(hex);
        let record: ImageRecord = read_json(&dir.join(IMAGE_FILE))?;
        let digest = format!("sha256:{hex}");
        Ok(StoredImage {
            names: index
                .iter()
                .filter(|(_, d)| **d == digest)
                .map(|(n, _)| n.clone())
                .collect(),
            digest,
            rootfs: dir.join(ROOTFS_FILE),
            config: record.config,
            size_bytes: record.size_bytes,
            imported_unix: record.imported_unix,
        })
    }

    fn lock(&self) -> Result<Flock<File>, ImageError> {
        self.flock(LOCK_FILE, FlockArg::LockExclusive)
    }

    fn flock(&self, name: &str, how: FlockArg) -> Result<Flock<File>, ImageError> {
        fs::create_dir_all(&self.root).map_err(ImageError::io("create", &self.root))?;
        let path = self.root.join(name);
        let file = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(ImageError::io("open", &path))?;
        Flock::lock(file, how).map_err(|(_, e)| ImageError::io("lock", &path)(e.into()))
    }

    fn read_names(&self) -> Result<Names, ImageError> {
        let path = self.root.join(NAMES_FILE);
        match fs::read(&path) {
            Ok(data) => serde_json::from_slice(&data).map_err(|source| ImageError::Store {
                path: path.clone(),
                source,
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Names::new()),
            Err(e) => Err(ImageError::io("read", &path)(e)),
        }
    }

    /// Writes `index` and refreshes the names in the `image.json` of each
    /// of `touched` (digests). Hold the lock.
    fn write_names(&self, index: &Names, touched: &BTreeSet<String>) -> Result<(), ImageError> {
        write_json(&self.root.join(NAMES_FILE), index)?;
        for digest in touched {
            let Ok(hex) = sha256_hex(digest, NAMES_FILE) else {
                continue;
            };
            let path = self.root.join(hex).join(IMAGE_FILE);
            if !path.is_file() {
                continue;
            }
            let mut record: ImageRecord = read_json(&path)?;
            record.names = index
                .iter()
                .filter(|(_, d)| *d == digest)
                .map(|(n, _)| n.clone())
                .collect();
            write_json(&path, &record)?;
        }
        Ok(())
    }

    /// A new, empty temporary directory for an import of `hex`.
    fn temp_dir(&self, hex: &str) -> Result<TempDir, ImageError> {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let path = self.root.join(format!(
            "{TEMP_PREFIX}{}-{}-{}",
            &hex[..12],
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = fs::remove_dir_all(&path);
        fs::create_dir(&path).map_err(ImageError::io("create", &path))?;
        Ok(TempDir { path, keep: false })
    }

    /// Removes temporary directories whose import process is gone.
    pub(super) fn remove_stale_temps(&self) {
        let Ok(entries) = fs::read_dir(&self.root) else {
            return;
        };
        for entry in entries.flatten() {
            let name = entry.file_name();
            let Some(rest) = name.to_str().and_then(|n| n.strip_prefix(TEMP_PREFIX)) else {
                continue;
            };
            let pid = rest.split('-').nth(1).and_then(|p| p.parse::<i32>().ok());
            let gone = pid.is_some_and(|pid| {
                nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None)
                    == Err(nix::errno::Errno::ESRCH)
            });
            if gone {
                log::info!(
                    "removing {} left by an interrupted import",
                    name.to_string_lossy()
                );
                let _ = fs::remove_dir_all(entry.path());
            }
        }
    }
}

/// Checks and unpacks layer `i` onto `staging`.
///
/// The blob is read twice: once to check its digest (and, for an
/// uncompressed layer, its diff id) before anything in it is parsed, then
/// to unpack it while hashing the uncompressed stream for the diff id. A
/// blob `verified` at download is read once, after its first bytes (its
/// compression): the unpack still checks the diff id.
fn unpack_layer(
    archive: &Archive,
    layer: &Layer,
    i: usize,
    name: &LayerName,
    staging: &Path,
    chown: bool,
    verified: bool,
) -> Result<(), ImageError> {
    let open = || {
        archive
            .open_file(&layer.file)?
            .map(|(reader, _)| reader)
            .ok_or_else(|| ImageError::MissingBlob {
                file: layer.file.clone(),
                what: format!("layer {}", name.index),
            })
    };
    let read_error = |e| ImageError::io("read", archive.path().join(&layer.file))(e);
    let mismatch = |what: String, expected: &str, actual: &str| ImageError::DigestMismatch {
        file: layer.file.clone(),
        what,
        expected: expected.to_string(),
        actual: actual.to_string(),
    };

    let mut blob = HashingReader::new(open()?);
    let mut magic = [0u8; 6];
    let n = super::archive::read_up_to(&mut blob, &mut magic).map_err(read_error)?;
    let compression = compression_of(&magic[..n]);
    let digest = if verified {
        layer.digest.clone()
    } else {
        Some(blob.finish().map_err(read_error)?.0)
    };
    if let (Some(expected), Some(digest)) = (&layer.digest, &digest) {
        if digest != expected {
            return Err(mismatch(
                format!("the manifest (layer {})", name.index),
                expected,
                digest,
            ));
        }
    }
    match compression {
        None => {
            let digest = digest.unwrap_or_default();
            if digest != layer.diff_id {
                return Err(mismatch(
                    format!("the config (rootfs.diff_ids[{i}])"),
                    &layer.diff_id,
                    &digest,
                ));
            }
        }
        Some("gzip" | "zstd") => {}
        Some(compression) => {
            return Err(ImageError::UnsupportedCompression {
                layer: name.index.clone(),
                file: layer.file.clone(),
                compression,
            })
        }
    };

    let reader = open()?;
    let stream: Box<dyn Read> = match compression {
        Some("gzip") => Box::new(MultiGzDecoder::new(BufReader::new(reader))),
        Some(_) => Box::new(zstd::stream::read::Decoder::new(reader).map_err(read_error)?),
        None => reader,
    };
    let mut tar = HashingReader::new(stream);
    let stats = layer::apply(staging, &mut tar, name, chown)?;
    let (diff_id, bytes) = tar.finish().map_err(|e| ImageError::Unpack {
        layer: name.index.clone(),
        file: layer.file.clone(),
        entry: String::new(),
        source: e,
    })?;
    if diff_id != layer.diff_id {
        return Err(mismatch(
            format!("the config (rootfs.diff_ids[{i}], uncompressed)"),
            &layer.diff_id,
            &diff_id,
        ));
    }
    log::debug!(
        "layer {}: {} entries, {} whiteouts, {} devices skipped, {bytes} bytes of tar",
        name.index,
        stats.written,
        stats.whiteouts,
        stats.devices_skipped
    );
    Ok(())
}

fn is_hex(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

fn read_json<T: for<'de> Deserialize<'de>>(path: &Path) -> Result<T, ImageError> {
    let data = fs::read(path).map_err(ImageError::io("read", path))?;
    serde_json::from_slice(&data).map_err(|source| ImageError::Store {
        path: path.to_path_buf(),
        source,
    })
}

/// Writes `value` to `path` atomically (a temporary file renamed over it).
fn write_json<T: Serialize>(path: &Path, value: &T) -> Result<(), ImageError> {
    let mut data = serde_json::to_vec_pretty(value).expect("store records serialize");
    data.push(b'\n');
    let tmp = path.with_extension(format!("json.tmp-{}", std::process::id()));
    fs::write(&tmp, &data).map_err(ImageError::io("write", &tmp))?;
    fs::rename(&tmp, path).map_err(|e| {
        let _ = fs::remove_file(&tmp);
        ImageError::io("write", path)(e)
    })
}
