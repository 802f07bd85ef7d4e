//! `unipod image`: import container images and list or remove them.

use std::path::PathBuf;
use std::time::{SystemTime, UNIX_EPOCH};

use clap::Subcommand;

use crate::image::registry::{self, ProgressSink, PullOptions};
use crate::image::{human_size, ImageError, ImageStore, StoredImage};
use crate::pod::start::state_root;

/// Exit code: an `image` command failed.
pub const EXIT_IMAGE_ERROR: i32 = 1;

/// Help shown after `unipod image --help`.
pub const IMAGE_AFTER_HELP: &str = "\
Images are stored in the state directory's images/, one directory per
manifest digest holding rootfs.erofs (the read-only root filesystem pods
boot with) and image.json (names, size, Entrypoint/Cmd/Env/WorkingDir/User);
images/names.json maps names to digests. Names are normalized the way
Docker shows them: 'busybox', 'busybox:latest' and
'docker.io/library/busybox:latest' are one name.

'unipod image pull REF' fetches an image from a registry (Docker Hub for
short names, or the registries registries.conf lists). Layers downloaded
are kept in images/blobs/sha256/ and shared between images; 'image rm'
and 'image prune' drop those no image uses. An image can also come from a
file, exported on a machine that has it:
  skopeo copy docker://busybox:latest oci:busybox:latest
  docker save -o busybox.tar busybox:latest

Exit codes:
  0  done
  1  the command failed (the message names the file or field and the fix)
  2  bad command-line usage

Set RUST_LOG=debug for more detail.";

/// `unipod image` arguments.
#[derive(Debug, clap::Args)]
pub struct ImageArgs {
    /// unipod's state directory (images live in its images/).
    /// Default: $UNIPOD_STATE_DIR, else /run/unipod as root, else
    /// $XDG_RUNTIME_DIR/unipod.
    #[arg(long, value_name = "DIR", global = true)]
    pub state_dir: Option<PathBuf>,
    /// What to do.
    #[command(subcommand)]
    pub command: ImageCommand,
}

/// `unipod image` subcommands.
#[derive(Debug, Subcommand)]
pub enum ImageCommand {
    /// Import an image from an OCI image layout or a 'docker save' archive.
    ///
    /// PATH is an OCI image layout directory (oci-layout, index.json,
    /// blobs/sha256/), a tar of one, or a tar written by 'docker save'
    /// (uncompressed: gunzip a .tar.gz first). Every blob is checked against
    /// its sha256 digest; the layers are unpacked (whiteouts and opaque
    /// directories applied, ownership and modes kept) and packed into a
    /// read-only erofs image with mkfs.erofs (apt install erofs-utils). An
    /// index with several platforms gives its linux/amd64 image. Importing
    /// an image that is already present unpacks nothing and only adds names.
    ///
    /// Example: unipod image import target/guest/oci/busybox
    Import {
        /// The image: OCI layout directory, or a tar of one or of 'docker save'.
        #[arg(value_name = "PATH")]
        path: PathBuf,
        /// Name the image REF (e.g. myapp:1.0) instead of the names the archive
        /// gives; also picks that image from an archive holding several.
        #[arg(long, value_name = "REF")]
        name: Option<String>,
    },
    /// Pull an image from a registry.
    ///
    /// REF is a name as Docker takes it: 'busybox' (docker.io/library/
    /// busybox:latest), 'nginx:1.27', 'quay.io/org/app:v1',
    /// '127.0.0.1:5000/app@sha256:...'. A short name is looked up on the
    /// unqualified-search-registries of registries.conf, else Docker Hub.
    /// Multi-platform images give their linux/amd64 image. The manifest,
    /// config and every layer are checked against their digests and sizes
    /// before use; layers download three at a time (a bar each on a
    /// terminal, lines otherwise) and layers already downloaded are reused.
    ///
    /// Registries: $CONTAINERS_REGISTRIES_CONF, else
    /// /etc/containers/registries.conf (containers-registries.conf(5)):
    /// mirrors are tried first, 'insecure = true' allows plain HTTP and
    /// unverified TLS, 'blocked = true' refuses. CA certificates:
    /// /etc/containers/certs.d/HOST:PORT/*.crt or /etc/docker/certs.d/.
    /// Credentials: --authfile, else $REGISTRY_AUTH_FILE, else
    /// $XDG_RUNTIME_DIR/containers/auth.json, ~/.config/containers/auth.json,
    /// ~/.docker/config.json (write them with 'unipod login').
    /// HTTPS_PROXY, HTTP_PROXY and NO_PROXY are honoured.
    ///
    /// Example: unipod image pull busybox:1.36
    Pull {
        /// The image to pull.
        #[arg(value_name = "REF")]
        reference: String,
        /// How to reach the registry.
        #[command(flatten)]
        registry: RegistryFlags,
    },
    /// List imported images, one line per name, newest first.
    #[command(visible_alias = "list")]
    Ls,
    /// Remove image names; an image goes when its last name does.
    ///
    /// REF is a name (busybox:latest), a digest (sha256:...), or the
    /// 12-digit digest prefix 'unipod image ls' shows. A digest removes the
    /// image with all its names.
    Rm {
        /// Names or digests to remove.
        #[arg(value_name = "REF", required = true)]
        refs: Vec<String>,
    },
    /// Remove images with no name, downloaded layers no image uses, and
    /// what interrupted imports and pulls left behind.
    Prune,
}

/// How to reach a registry: the flags podman and skopeo take.
#[derive(Debug, Clone, clap::Args)]
pub struct RegistryFlags {
    /// A directory of CA certificates (*.crt) for the registry, instead
    /// of /etc/containers/certs.d/HOST:PORT/.
    #[arg(long, value_name = "DIR")]
    pub cert_dir: Option<PathBuf>,
    /// Require HTTPS and verified certificates (false: allow plain HTTP
    /// and any certificate, as 'insecure = true' in registries.conf).
    #[arg(long, value_name = "BOOL", default_value_t = true, action = clap::ArgAction::Set)]
    pub tls_verify: bool,
    /// The auth file to read (and for login, write) credentials in,
    /// instead of $REGISTRY_AUTH_FILE and the default places.
    #[arg(long, value_name = "FILE")]
    pub authfile: Option<PathBuf>,
}

impl RegistryFlags {
    /// The pull options these flags give.
    pub fn pull_options(&self) -> PullOptions {
        PullOptions {
            cert_dir: self.cert_dir.clone(),
            tls_verify: self.tls_verify,
            auth_file: self.authfile.clone(),
            credentials: Vec::new(),
        }
    }
}

/// Runs `unipod image`; returns the exit code.
pub fn image(args: &ImageArgs) -> Result<i32, ImageError> {
    let store = ImageStore::open(&state_root(args.state_dir.as_deref()));
    match &args.command {
        ImageCommand::Import { path, name } => {
            let imported =
                store.import(path, name.as_deref(), |line| eprintln!("[image] {line}"))?;
            print_image(&imported.image);
        }
        ImageCommand::Pull {
            reference,
            registry,
        } => {
            let progress = ProgressSink::new("[pull] ");
            let pulled = registry::pull(&store, reference, &registry.pull_options(), &progress)?;
            print_image(&pulled.image.image);
            eprintln!(
                "[pull] {} from {}: {} downloaded in {:.1} s",
                reference,
                pulled.source,
                human_size(pulled.downloaded),
                pulled.elapsed.as_secs_f64()
            );
        }
        ImageCommand::Prune => {
            let pruned = store.prune()?;
            for digest in &pruned.images {
                println!("deleted {digest}");
            }
            println!(
                "removed {} image(s) and {} unused blob(s)",
                pruned.images.len(),
                pruned.blobs.len()
            );
        }
        ImageCommand::Ls => print_table(&store.list()?),
        ImageCommand::Rm { refs } => {
            for reference in refs {
                let removed = store.remove(reference)?;
                for name in &removed.names {
                    println!("untagged {name}");
                }
                if let Some(digest) = removed.image {
                    println!("deleted {digest}");
                }
                if removed.blobs > 0 {
                    println!("deleted {} unused layer blob(s)", removed.blobs);
                }
            }
        }
    }
    Ok(0)
}

/// What an import or a pull gives: digest, names, root file system.
fn print_image(image: &StoredImage) {
    println!("digest: {}", image.digest);
    println!("names:  {}", names_of(image));
    println!(
        "rootfs: {} ({})",
        image.rootfs.display(),
        human_size(image.size_bytes)
    );
}

fn names_of(image: &StoredImage) -> String {
    if image.names.is_empty() {
        "<none> (give one with --name)".into()
    } else {
        image.names.join(", ")
    }
}

fn print_table(images: &[StoredImage]) {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let rows: Vec<[String; 4]> = images
        .iter()
        .flat_map(|image| {
            let names = if image.names.is_empty() {
                vec!["<none>".to_string()]
            } else {
                image.names.clone()
            };
            let short = image
                .digest
                .strip_prefix("sha256:")
                .unwrap_or(&image.digest)
                .chars()
                .take(12)
                .collect::<String>();
            names.into_iter().map(move |name| {
                [
                    name,
                    short.clone(),
                    human_size(image.size_bytes),
                    human_age(now.saturating_sub(image.imported_unix)),
                ]
            })
        })
        .collect();
    let width = rows
        .iter()
        .map(|r| r[0].len())
        .max()
        .unwrap_or(0)
        .max("NAME".len());
    println!(
        "{:<width$}  {:<12}  {:>10}  IMPORTED",
        "NAME", "DIGEST", "SIZE"
    );
    for [name, digest, size, age] in rows {
        println!("{name:<width$}  {digest:<12}  {size:>10}  {age}");
    }
}

fn human_age(secs: u64) -> String {
    let (n, unit) = match secs {
        s if s < 60 => return "just now".into(),
        s if s < 3_600 => (s / 60, "minute"),
        s if s < 86_400 => (s / 3_600, "hour"),
        s => (s / 86_400, "day"),
    };
    format!("{n} {unit}{} ago", if n == 1 { "" } else { "s" })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::{Cli, Command, EXIT_USAGE};
    use clap::Parser;

    #[test]
    fn import_takes_a_path_a_name_and_a_state_dir() {
        let cli = Cli::try_parse_from([
            "unipod",
            "image",
            "import",
            "x.tar",
            "--name",
            "app:1",
            "--state-dir",
            "/s",
        ])
        .expect("valid");
        let Command::Image(args) = cli.command else {
            panic!("parsed as image")
        };
        assert_eq!(args.state_dir, Some(PathBuf::from("/s")));
        let ImageCommand::Import { path, name } = args.command else {
            panic!("parsed as import")
        };
        assert_eq!(
            (path, name.as_deref()),
            (PathBuf::from("x.tar"), Some("app:1"))
        );
    }

    #[test]
    fn missing_arguments_are_usage_errors() {
        for args in [
            &["unipod", "image", "import"][..],
            &["unipod", "image", "rm"],
        ] {
            let err = Cli::try_parse_from(args).expect_err("missing argument");
            assert_eq!(err.exit_code(), EXIT_USAGE, "{args:?}");
        }
    }

    #[test]
    fn ages_read_like_docker_images() {
        assert_eq!(human_age(5), "just now");
        assert_eq!(human_age(60), "1 minute ago");
        assert_eq!(human_age(7_200), "2 hours ago");
        assert_eq!(human_age(3 * 86_400), "3 days ago");
    }
}
