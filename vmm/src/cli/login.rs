//! `unipod login` and `unipod logout`: registry credentials in the auth file
//! podman and skopeo use (see `image::registry::auth`).

use std::io::{BufRead as _, IsTerminal as _, Write as _};

use crate::cli::image::RegistryFlags;
use crate::image::registry::{self, auth};
use crate::image::ImageError;

/// Exit code: the credentials were refused, or the auth file could not be
/// written.
pub const EXIT_LOGIN_FAILED: i32 = 1;

/// Help shown after `unipod login --help` and `unipod logout --help`.
pub const LOGIN_AFTER_HELP: &str = "\
Credentials are stored as podman stores them: --authfile, else
$REGISTRY_AUTH_FILE, else $XDG_RUNTIME_DIR/containers/auth.json
(/run/containers/UID/auth.json without XDG_RUNTIME_DIR), mode 0600.
'unipod image pull' and pods read them from there, and from
~/.config/containers/auth.json and ~/.docker/config.json.

Exit codes:
  0  done
  1  the registry refused the credentials, or the file could not be written
  2  bad command-line usage";

/// `unipod login` arguments.
#[derive(Debug, clap::Args)]
pub struct LoginArgs {
    /// The registry: a host, or host:port, optionally with a namespace
    /// (quay.io/org) for credentials that only apply there.
    #[arg(value_name = "REGISTRY")]
    pub registry: String,
    /// The user name.
    #[arg(long, short = 'u', value_name = "USER")]
    pub username: String,
    /// The password (visible to other users in the process list: prefer
    /// --password-stdin).
    #[arg(
        long,
        short = 'p',
        value_name = "PASSWORD",
        conflicts_with = "password_stdin"
    )]
    pub password: Option<String>,
    /// Read the password from standard input (one line).
    #[arg(long)]
    pub password_stdin: bool,
    /// How to reach the registry, and the auth file.
    #[command(flatten)]
    pub flags: RegistryFlags,
}

/// `unipod logout` arguments.
#[derive(Debug, clap::Args)]
pub struct LogoutArgs {
    /// The registry (or registry/namespace) to forget.
    #[arg(value_name = "REGISTRY", required_unless_present = "all")]
    pub registry: Option<String>,
    /// Forget every registry in the auth file.
    #[arg(long, short = 'a')]
    pub all: bool,
    /// The auth file, instead of $REGISTRY_AUTH_FILE and the default.
    #[arg(long, value_name = "FILE")]
    pub authfile: Option<std::path::PathBuf>,
}

/// Runs `unipod login`: checks the credentials against the registry, then
/// stores them. Returns the exit code.
pub fn login(args: &LoginArgs) -> Result<i32, ImageError> {
    let password = match (&args.password, args.password_stdin) {
        (Some(password), _) => password.clone(),
        (None, true) => read_line_from_stdin()?,
        (None, false) if std::io::stdin().is_terminal() => prompt_password()?,
        (None, false) => {
            eprintln!("unipod: error: give the password with --password-stdin (or -p)");
            return Ok(crate::cli::EXIT_USAGE);
        }
    };
    let file = auth::file_to_write(args.flags.authfile.as_deref());
    let credentials = auth::Credentials {
        username: args.username.clone(),
        password,
        file: file.clone(),
    };
    let host = args.registry.split('/').next().unwrap_or(&args.registry);
    registry::check_login(host, &credentials, &args.flags.pull_options())?;
    auth::store(
        &file,
        &args.registry,
        &credentials.username,
        &credentials.password,
    )?;
    println!("Login Succeeded (credentials in {})", file.display());
    Ok(0)
}

/// Runs `unipod logout`. Returns the exit code.
pub fn logout(args: &LogoutArgs) -> Result<i32, ImageError> {
    let file = auth::file_to_write(args.authfile.as_deref());
    if args.all {
        auth::remove_all(&file)?;
        println!("Removed every login from {}", file.display());
        return Ok(0);
    }
    let registry = args.registry.as_deref().expect("clap requires it");
    if auth::remove(&file, registry)? {
        println!(
            "Removed login credentials for {registry} from {}",
            file.display()
        );
        Ok(0)
    } else {
        eprintln!(
            "unipod: error: not logged in to {registry} (no entry in {})",
            file.display()
        );
        Ok(EXIT_LOGIN_FAILED)
    }
}

fn read_line_from_stdin() -> Result<String, ImageError> {
    let mut line = String::new();
    std::io::stdin()
        .lock()
        .read_line(&mut line)
        .map_err(|e| ImageError::Login {
            registry: String::new(),
            reason: format!("cannot read the password from standard input: {e}"),
        })?;
    Ok(line.trim_end_matches(['\r', '\n']).to_string())
}

/// Asks for the password on the terminal with echo off.
fn prompt_password() -> Result<String, ImageError> {
    use nix::sys::termios::{tcgetattr, tcsetattr, LocalFlags, SetArg};
    let stdin = std::io::stdin();
    eprint!("Password: ");
    let _ = std::io::stderr().flush();
    let saved = tcgetattr(&stdin).ok();
    if let Some(saved) = &saved {
        let mut quiet = saved.clone();
        quiet.local_flags.remove(LocalFlags::ECHO);
        let _ = tcsetattr(&stdin, SetArg::TCSANOW, &quiet);
    }
    let line = read_line_from_stdin();
    if let Some(saved) = &saved {
        let _ = tcsetattr(&stdin, SetArg::TCSANOW, saved);
    }
    eprintln!();
    line
}
