//! `unipod`: the command-line front end. All logic lives in the `vmm` library.

use std::io::Write;
use std::time::Instant;

use clap::Parser;
use vmm::cli::{self, Cli, Command};
use vmm::pod::options::RunOptions;
use vmm::pod::{self, supervisor};

fn main() {
    let start = Instant::now();
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info"))
        .format(|buf, rec| match rec.level() {
            log::Level::Info => writeln!(buf, "unipod: {}", rec.args()),
            level => writeln!(
                buf,
                "unipod: {}: {}",
                level.as_str().to_lowercase(),
                rec.args()
            ),
        })
        .init();
    let mut cli = Cli::parse();
    if matches!(
        cli.command,
        Command::Get(_) | Command::Describe(_) | Command::Logs(_)
    ) {
        // These only print and have nothing to clean up: a reader that goes
        // away (`unipod logs -f | head`) ends them quietly, as it ends `ls`.
        // Rust ignores SIGPIPE, which made the next print panic instead.
        // SAFETY: single-threaded here, and SIG_DFL installs no handler code.
        unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    }
    if let Command::Run(args) = &mut cli.command {
        let raw: Vec<std::ffi::OsString> = std::env::args_os().collect();
        if let Err(e) = args.split_manifest(&raw) {
            eprintln!("unipod: error: {e}");
            std::process::exit(cli::EXIT_USAGE);
        }
    }
    let code = match &cli.command {
        Command::Boot(args) => {
            cli::boot(args, start).unwrap_or_else(|e| report_error(&e, e.exit_code()))
        }
        Command::Run(args) => {
            let options = RunOptions::from(args);
            if args.dry_run {
                pod::dry_run::dry_run(&options, &args.manifests)
            } else if args.manifests.is_empty() {
                pod::run::run(&options)
                    .unwrap_or_else(|e| report_error(&e, vmm::exit_code::EXIT_RUN_ERROR))
            } else {
                supervisor::run_manifest(&options, &args.manifests, args.supervisor, args.detach)
                    .unwrap_or_else(|e| report_error(&e, supervisor::error_code(&e)))
            }
        }
        Command::Apply(args) => cli::objects::apply(args)
            .unwrap_or_else(|e| report_error(&e, cli::objects::EXIT_FAILED)),
        Command::Delete(args) => {
            cli::pods::delete(args).unwrap_or_else(|e| report_error(&e, cli::pods::EXIT_FAILED))
        }
        Command::Wait(args) => {
            cli::wait::wait(args).unwrap_or_else(|e| report_error(&e, cli::pods::EXIT_FAILED))
        }
        Command::Get(args) => {
            cli::pods::get(args).unwrap_or_else(|e| report_error(&e, cli::pods::EXIT_FAILED))
        }
        Command::Describe(args) => {
            cli::pods::describe(args).unwrap_or_else(|e| report_error(&e, cli::pods::EXIT_FAILED))
        }
        Command::Logs(args) => {
            cli::pods::logs(args).unwrap_or_else(|e| report_error(&e, cli::pods::EXIT_FAILED))
        }
        Command::Exec(args) => {
            cli::pods::exec(args).unwrap_or_else(|e| report_error(&e, cli::pods::EXIT_EXEC_ERROR))
        }
        Command::Stop(args) => {
            cli::pods::stop(args).unwrap_or_else(|e| report_error(&e, cli::pods::EXIT_FAILED))
        }
        Command::Rm(args) => {
            cli::pods::rm(args).unwrap_or_else(|e| report_error(&e, cli::pods::EXIT_FAILED))
        }
        Command::Snapshot(args) => cli::snapshot::snapshot(args)
            .unwrap_or_else(|e| report_error(&e, cli::snapshot::EXIT_SNAPSHOT_ERROR)),
        Command::Image(args) => cli::image::image(args)
            .unwrap_or_else(|e| report_error(&e, cli::image::EXIT_IMAGE_ERROR)),
        Command::Login(args) => cli::login::login(args)
            .unwrap_or_else(|e| report_error(&e, cli::login::EXIT_LOGIN_FAILED)),
        Command::Logout(args) => cli::login::logout(args)
            .unwrap_or_else(|e| report_error(&e, cli::login::EXIT_LOGIN_FAILED)),
    };
    std::process::exit(code);
}

/// Prints `e` with its cause chain; returns `code`.
fn report_error(e: &dyn std::error::Error, code: i32) -> i32 {
    eprintln!("unipod: error: {}", cli::error_chain(e, "\n  caused by: "));
    code
}
