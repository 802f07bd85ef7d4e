//! Packing the unpacked image into an erofs filesystem with `mkfs.erofs`
//! (Debian's `erofs-utils`).
//!
//! # Design
//! - Uncompressed: the guest reads it through the page cache with no
//!   decompression work, and needs only `CONFIG_EROFS_FS`.
//! - Ownership and modes come from the staging directory (no `--all-root`,
//!   no `--force-uid`).
//! - Reproducible: `-T0` gives every inode (and the superblock) time 0, and
//!   the UUID is taken from the image digest, so one image always packs to
//!   the same bytes.

use std::path::Path;
use std::process::Command;

use super::ImageError;

/// Runs `mkfs.erofs` to pack `dir` into the new file `out`; `digest_hex`
/// seeds the filesystem UUID.
pub(super) fn mkfs(dir: &Path, out: &Path, digest_hex: &str) -> Result<(), ImageError> {
    run("mkfs.erofs", dir, out, digest_hex)
}

fn run(program: &str, dir: &Path, out: &Path, digest_hex: &str) -> Result<(), ImageError> {
    let output = Command::new(program)
        .arg("-T0")
        .arg(format!("-U{}", uuid_from(digest_hex)))
        .arg(out)
        .arg(dir)
        .output()
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => ImageError::MkfsMissing,
            _ => ImageError::Mkfs {
                status: "not started".into(),
                stderr: e.to_string(),
            },
        })?;
    if !output.status.success() {
        let mut text = String::from_utf8_lossy(&output.stderr).trim().to_string();
        if text.is_empty() {
            text = String::from_utf8_lossy(&output.stdout).trim().to_string();
        }
        return Err(ImageError::Mkfs {
            status: output.status.to_string(),
            stderr: text,
        });
    }
    Ok(())
}

/// A UUID (8-4-4-4-12) made of the first 32 hex digits of `hex`.
fn uuid_from(hex: &str) -> String {
    let h = format!("{hex:0<32}");
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_mkfs_erofs_says_which_package_to_install() {
        let err = run(
            "unipod-test-no-such-mkfs.erofs",
            Path::new("/"),
            Path::new("/nonexistent"),
            "0",
        )
        .expect_err("not installed");
        assert!(matches!(err, ImageError::MkfsMissing), "{err}");
        assert!(err.to_string().contains("apt install erofs-utils"), "{err}");
    }

    #[test]
    fn the_uuid_comes_from_the_digest() {
        assert_eq!(
            uuid_from(&"0123456789abcdef".repeat(4)),
            "01234567-89ab-cdef-0123-456789abcdef"
        );
    }
}
