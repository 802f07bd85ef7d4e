//! `unipod snapshot`: manage the warm-start snapshot cache.

use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use clap::Subcommand;

use crate::pod::run::RunError;
use crate::pod::start::{guest_inputs, state_root};
use crate::pod::warm_start::{self, WarmStartError};
use crate::snapshot::cache::SnapshotCache;

/// Exit code: a `snapshot` command failed.
pub const EXIT_SNAPSHOT_ERROR: i32 = 1;

/// `unipod snapshot` arguments.
#[derive(Debug, clap::Args)]
pub struct SnapshotArgs {
    /// unipod's state directory (snapshots live in its snapshots/).
    /// Default: $UNIPOD_STATE_DIR, else /run/unipod as root, else
    /// $XDG_RUNTIME_DIR/unipod.
    #[arg(long, value_name = "DIR", global = true)]
    pub state_dir: Option<PathBuf>,
    /// What to do.
    #[command(subcommand)]
    pub command: SnapshotCommand,
}

/// `unipod snapshot` subcommands.
#[derive(Debug, Subcommand)]
pub enum SnapshotCommand {
    /// List cached snapshots with their inputs and disk use.
    Ls,
    /// Remove snapshots by key (as 'ls' shows it), or all of them.
    Rm {
        /// Keys to remove.
        #[arg(value_name = "KEY", required_unless_present = "all")]
        keys: Vec<String>,
        /// Remove every snapshot.
        #[arg(long, conflicts_with = "keys")]
        all: bool,
    },
    /// Remove snapshots that can no longer be used: unreadable or from
    /// another format version, or whose kernel or initramfs changed or is
    /// gone; and leftovers of interrupted creations.
    Prune,
    /// Make the snapshot for a kernel, initramfs and memory size now, so
    /// the first 'unipod run' does not pay for it.
    Create {
        /// Guest kernel (default: the one 'unipod run' uses).
        #[arg(long, value_name = "PATH")]
        kernel: Option<PathBuf>,
        /// Agent initramfs (default: the one 'unipod run' uses).
        #[arg(long, value_name = "PATH")]
        initrd: Option<PathBuf>,
        /// Guest memory in MiB.
        #[arg(long, value_name = "N", default_value_t = crate::config::DEFAULT_MEM_MIB)]
        mem_mib: u32,
        /// How long the template VM may take to boot, in seconds.
        #[arg(long, value_name = "SECS", default_value_t = 300)]
        timeout_secs: u64,
    },
}

/// Errors of `unipod snapshot`.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotCliError {
    /// A guest artifact is missing.
    #[error(transparent)]
    Artifact(#[from] RunError),
    /// Making the snapshot failed.
    #[error(transparent)]
    Create(#[from] WarmStartError),
    /// Removing failed.
    #[error("cannot remove snapshot {0}")]
    Remove(String, #[source] std::io::Error),
    /// No such snapshot.
    #[error("no snapshot {0}; 'unipod snapshot ls' lists them")]
    NotFound(String),
}

/// Runs `unipod snapshot`; returns the exit code.
pub fn snapshot(args: &SnapshotArgs) -> Result<i32, SnapshotCliError> {
    let cache = SnapshotCache::new(&state_root(args.state_dir.as_deref()));
    match &args.command {
        SnapshotCommand::Ls => list(&cache),
        SnapshotCommand::Rm { keys, all } => {
            let keys: Vec<String> = if *all {
                cache.list().into_iter().map(|e| e.key).collect()
            } else {
                keys.clone()
            };
            let mut freed = 0;
            for key in &keys {
                match cache.remove(key) {
                    Ok(Some(bytes)) => freed += bytes,
                    Ok(None) => return Err(SnapshotCliError::NotFound(key.clone())),
                    Err(e) => return Err(SnapshotCliError::Remove(key.clone(), e)),
                }
                println!("removed {key}");
            }
            println!("freed {}", human_bytes(freed));
        }
        SnapshotCommand::Prune => {
            let mut freed = cache.remove_leftovers();
            for entry in cache.list() {
                let why = warm_start::stale(&entry, &cache);
                if let Some(why) = why {
                    if let Ok(Some(bytes)) = cache.remove(&entry.key) {
                        freed += bytes;
                        println!("removed {} ({why})", entry.key);
                    }
                }
            }
            println!("freed {}", human_bytes(freed));
        }
        SnapshotCommand::Create {
            kernel,
            initrd,
            mem_mib,
            timeout_secs,
        } => {
            let inputs = guest_inputs(kernel.as_deref(), initrd.as_deref(), *mem_mib)?;
            let key = warm_start::key(&inputs, &cache).map_err(WarmStartError::from)?;
            let deadline = Instant::now() + Duration::from_secs(*timeout_secs);
            let dir = warm_start::snapshot_for(&cache, &key, &inputs, deadline, &mut || Ok(()))?;
            println!("{key} {}", dir.display());
        }
    }
    Ok(0)
}

fn list(cache: &SnapshotCache) {
    let entries = cache.list();
    println!(
        "{:<18} {:>9} {:>8} {:>9}  INPUTS",
        "KEY", "DISK", "MEM", "AGE"
    );
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let mut total = 0;
    for e in &entries {
        total += e.disk_bytes;
        match &e.info {
            Ok(info) => println!(
                "{:<18} {:>9} {:>5}MiB {:>9}  {}{}",
                e.key,
                human_bytes(e.disk_bytes),
                info.mem_mib,
                human_age(now.saturating_sub(info.created_unix)),
                info.kernel.display(),
                info.initrd
                    .as_ref()
                    .map(|i| format!(" + {}", i.display()))
                    .unwrap_or_default()
            ),
            Err(why) => println!(
                "{:<18} {:>9} {:>8} {:>9}  unusable: {why}",
                e.key,
                human_bytes(e.disk_bytes),
                "-",
                "-"
            ),
        }
    }
    println!(
        "{} snapshot(s), {} on disk",
        entries.len(),
        human_bytes(total)
    );
}

fn human_bytes(bytes: u64) -> String {
    match bytes {
        b if b >= 1 << 30 => format!("{:.1}GiB", b as f64 / f64::from(1u32 << 30)),
        b if b >= 1 << 20 => format!("{:.1}MiB", b as f64 / f64::from(1u32 << 20)),
        b => format!("{}KiB", b >> 10),
    }
}

fn human_age(secs: u64) -> String {
    match secs {
        s if s >= 86_400 => format!("{}d", s / 86_400),
        s if s >= 3_600 => format!("{}h", s / 3_600),
        s if s >= 60 => format!("{}m", s / 60),
        s => format!("{s}s"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_and_ages_read_like_kubectl() {
        assert_eq!(human_bytes(23 << 20), "23.0MiB");
        assert_eq!(human_bytes(4096), "4KiB");
        assert_eq!(human_age(59), "59s");
        assert_eq!(human_age(3 * 3600 + 5), "3h");
    }
}
