//! An I/O error on a named file, shared by the error types of the pod code
//! so each names the file and what it was doing the same way.

use std::io;
use std::path::PathBuf;

/// "cannot {action} {path}", caused by an I/O error.
#[derive(Debug, thiserror::Error)]
#[error("cannot {action} {}", path.display())]
pub struct FileError {
    /// "read", "write", "remove", ...
    pub action: &'static str,
    /// The file or directory.
    pub path: PathBuf,
    /// Why.
    #[source]
    pub source: io::Error,
}

impl FileError {
    /// A `map_err` adapter: `fs::read(&p).map_err(FileError::at("read", &p))`.
    pub fn at(action: &'static str, path: impl Into<PathBuf>) -> impl FnOnce(io::Error) -> Self {
        let path = path.into();
        move |source| Self {
            action,
            path,
            source,
        }
    }
}
