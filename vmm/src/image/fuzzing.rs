//! Entry points for the fuzz targets in fuzz/ (feature `fuzzing` only):
//! the image code that reads untrusted archives, without the erofs step.

use std::path::Path;

use super::archive::Archive;
use super::layer::{self, LayerName};
use super::{source, ImageError};

/// Applies the layer tar `tar` onto `root`, as an import does (without
/// ownership changes).
pub fn apply_layer(root: &Path, tar: &[u8]) -> Result<(), ImageError> {
    let name = LayerName {
        index: "1/1".into(),
        file: "fuzz".into(),
    };
    layer::apply(root, tar, &name, false).map(|_| ())
}

/// Opens the archive at `path` (a tar of an OCI layout or a `docker save`)
/// and reads its index, manifest and config, as an import does before it
/// applies layers. Returns the layer blob paths the plan names.
pub fn plan(path: &Path) -> Result<Vec<String>, ImageError> {
    let archive = Archive::open(path)?;
    let plan = source::plan(&archive, None)?;
    Ok(plan.layers.into_iter().map(|l| l.file).collect())
}
