//! The files of an image input, whether it is a directory or a tar.
//!
//! A tar is indexed once (each member's data offset and size) and members
//! are then read straight out of it, so a multi-GiB `docker save` archive is
//! never copied. Member names are normalized (`./index.json` and
//! `index.json` are one file); symlinks and hard links inside the tar (old
//! `docker save` links a repeated layer to its first copy) are followed
//! within the archive only.

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, BufReader, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use super::ImageError;

/// JSON files (index, manifests, configs) larger than this are refused.
pub(super) const MAX_JSON_BYTES: u64 = 16 << 20;

/// How many links a member name may go through.
const MAX_LINKS: usize = 8;

/// A file opened in an [`Archive`]: its reader and size.
pub(super) type Opened = (Box<dyn Read>, u64);

/// An image input: a directory or an uncompressed tar.
pub(super) enum Archive {
    /// A directory on the host.
    Dir(PathBuf),
    /// A tar file and its members.
    Tar {
        /// The tar file.
        path: PathBuf,
        /// Normalized member name to member.
        members: HashMap<String, Member>,
    },
}

/// A member of a tar input.
#[derive(Debug)]
pub(super) enum Member {
    /// A regular file: where its data starts, and its size.
    File { offset: u64, size: u64 },
    /// A symlink or hard link to another member (normalized name).
    Link(String),
}

impl Archive {
    /// Opens `path`, a directory or a tar.
    pub(super) fn open(path: &Path) -> Result<Archive, ImageError> {
        let meta = match std::fs::metadata(path) {
            Ok(meta) => meta,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(ImageError::NotFound {
                    path: path.to_path_buf(),
                })
            }
            Err(e) => return Err(ImageError::io("read", path)(e)),
        };
        if meta.is_dir() {
            return Ok(Archive::Dir(path.to_path_buf()));
        }
        let mut file = File::open(path).map_err(ImageError::io("open", path))?;
        let mut magic = [0u8; 6];
        let n = read_up_to(&mut file, &mut magic).map_err(ImageError::io("read", path))?;
        if let Some(compression) = compression_of(&magic[..n]) {
            return Err(ImageError::CompressedArchive {
                path: path.to_path_buf(),
                compression,
            });
        }
        file.rewind().map_err(ImageError::io("read", path))?;
        let members = index_tar(BufReader::new(file)).map_err(|_| ImageError::UnknownFormat {
            path: path.to_path_buf(),
        })?;
        Ok(Archive::Tar {
            path: path.to_path_buf(),
            members,
        })
    }

    /// The input's path on the host.
    pub(super) fn path(&self) -> &Path {
        match self {
            Archive::Dir(path) | Archive::Tar { path, .. } => path,
        }
    }

    /// Whether the archive has a file `name`.
    pub(super) fn contains(&self, name: &str) -> bool {
        match self {
            Archive::Dir(dir) => normalize(name).is_some_and(|n| dir.join(n).is_file()),
            Archive::Tar { members, .. } => self.resolve(members, name).is_some(),
        }
    }

    /// Opens file `name` (a path relative to the archive root); returns a
    /// reader and its size, or `None` when there is no such file. Names
    /// that leave the root (`../x`) are never found.
    pub(super) fn open_file(&self, name: &str) -> Result<Option<Opened>, ImageError> {
        match self {
            Archive::Dir(dir) => {
                let Some(name) = normalize(name) else {
                    return Ok(None);
                };
                let path = dir.join(name);
                let file = match File::open(&path) {
                    Ok(file) => file,
                    Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
                    Err(e) => return Err(ImageError::io("open", path)(e)),
                };
                let meta = file.metadata().map_err(ImageError::io("read", &path))?;
                if !meta.is_file() {
                    return Ok(None);
                }
                Ok(Some((Box::new(BufReader::new(file)), meta.len())))
            }
            Archive::Tar { path, members } => {
                let Some((offset, size)) = self.resolve(members, name) else {
                    return Ok(None);
                };
                let mut file = File::open(path).map_err(ImageError::io("open", path))?;
                file.seek(SeekFrom::Start(offset))
                    .map_err(ImageError::io("read", path))?;
                Ok(Some((Box::new(BufReader::new(file).take(size)), size)))
            }
        }
    }

    /// Reads the whole of the small (JSON) file `name`; `None` if absent.
    pub(super) fn read_small(&self, name: &str) -> Result<Option<Vec<u8>>, ImageError> {
        let Some((reader, size)) = self.open_file(name)? else {
            return Ok(None);
        };
        if size > MAX_JSON_BYTES {
            return Err(ImageError::Invalid {
                file: name.to_string(),
                field: "size".into(),
                reason: format!("{size} bytes; refusing JSON larger than {MAX_JSON_BYTES} bytes"),
            });
        }
        let mut data = Vec::with_capacity(usize::try_from(size).unwrap_or(0));
        reader
            .take(MAX_JSON_BYTES)
            .read_to_end(&mut data)
            .map_err(ImageError::io("read", self.path().join(name)))?;
        Ok(Some(data))
    }

    /// The data offset and size of tar member `name`, following links.
    fn resolve(&self, members: &HashMap<String, Member>, name: &str) -> Option<(u64, u64)> {
        let mut name = normalize(name)?;
        for _ in 0..=MAX_LINKS {
            match members.get(&name)? {
                Member::File { offset, size } => return Some((*offset, *size)),
                Member::Link(target) => name = target.clone(),
            }
        }
        None
    }
}

/// The compression `magic` (a file's first bytes) announces, if any.
pub(super) fn compression_of(magic: &[u8]) -> Option<&'static str> {
    match magic {
        [0x1f, 0x8b, ..] => Some("gzip"),
        [0x28, 0xb5, 0x2f, 0xfd, ..] => Some("zstd"),
        [0xfd, b'7', b'z', b'X', b'Z', 0x00, ..] => Some("xz"),
        [b'B', b'Z', b'h', ..] => Some("bzip2"),
        _ => None,
    }
}

/// Reads until `buf` is full or the stream ends; returns the count.
pub(super) fn read_up_to(reader: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match reader.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

/// `name` with `.` and empty components dropped, or `None` if it has a
/// `..` component (it would leave the archive root).
fn normalize(name: &str) -> Option<String> {
    let mut parts = Vec::new();
    for part in name.split('/') {
        match part {
            "" | "." => {}
            ".." => return None,
            part => parts.push(part),
        }
    }
    (!parts.is_empty()).then(|| parts.join("/"))
}

/// Lists a tar's regular files and links. Errors if it is not a tar.
fn index_tar<R: Read + Seek>(reader: R) -> io::Result<HashMap<String, Member>> {
    let mut archive = tar::Archive::new(reader);
    let mut members = HashMap::new();
    let mut any = false;
    for entry in archive.entries_with_seek()? {
        let entry = entry?;
        any = true;
        let raw = entry.path_bytes();
        let Some(name) = std::str::from_utf8(&raw).ok().and_then(normalize) else {
            continue;
        };
        let kind = entry.header().entry_type();
        let member = if kind.is_file() || kind.is_contiguous() {
            Member::File {
                offset: entry.raw_file_position(),
                size: entry.size(),
            }
        } else if kind.is_symlink() || kind.is_hard_link() {
            let Some(target) = entry.link_name_bytes() else {
                continue;
            };
            let Ok(target) = std::str::from_utf8(&target) else {
                continue;
            };
            // A symlink is relative to its own directory; a hard link names
            // a member from the root.
            let target = if kind.is_symlink() && !target.starts_with('/') {
                let dir = name.rsplit_once('/').map_or("", |(dir, _)| dir);
                format!("{dir}/{target}")
            } else {
                target.to_string()
            };
            let Some(target) = normalize_lexically(&target) else {
                continue;
            };
            Member::Link(target)
        } else {
            continue;
        };
        members.insert(name, member);
    }
    if !any {
        return Err(io::Error::new(io::ErrorKind::InvalidData, "empty tar"));
    }
    Ok(members)
}

/// `path` with `..` applied lexically; `None` if it climbs above the root.
fn normalize_lexically(path: &str) -> Option<String> {
    let mut parts: Vec<&str> = Vec::new();
    for part in path.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                parts.pop()?;
            }
            part => parts.push(part),
        }
    }
    Some(parts.join("/"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn member_names_are_normalized_and_never_leave_the_root() {
        assert_eq!(normalize("./index.json").as_deref(), Some("index.json"));
        assert_eq!(
            normalize("blobs//sha256/x").as_deref(),
            Some("blobs/sha256/x")
        );
        assert_eq!(normalize("../etc/passwd"), None);
        assert_eq!(normalize("a/../../b"), None);
        assert_eq!(normalize_lexically("a/b/../c").as_deref(), Some("a/c"));
        assert_eq!(normalize_lexically("a/../../c"), None);
    }

    #[test]
    fn compressed_inputs_are_recognized_by_their_magic() {
        assert_eq!(compression_of(&[0x1f, 0x8b, 8, 0]), Some("gzip"));
        assert_eq!(compression_of(&[0x28, 0xb5, 0x2f, 0xfd]), Some("zstd"));
        assert_eq!(compression_of(b"ustar\0"), None);
        assert_eq!(compression_of(&[]), None);
    }
}
