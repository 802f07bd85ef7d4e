//! A minimal [`log`] backend: one line per record on stderr, which for PID 1
//! is `/dev/console` (the guest's serial console the VMM captures).
//!
//! # Design
//!
//! Lines are prefixed `unipod-agent:` so they stand out among kernel messages
//! and container output. Write errors are ignored: a broken console must not
//! take PID 1 down (`eprintln!` would panic).

#![forbid(unsafe_code)]

use std::io::Write;

use log::{Level, LevelFilter, Log, Metadata, Record};

struct ConsoleLogger;

impl Log for ConsoleLogger {
    fn enabled(&self, metadata: &Metadata) -> bool {
        metadata.level() <= log::max_level()
    }

    fn log(&self, record: &Record) {
        if !self.enabled(record.metadata()) {
            return;
        }
        let level = match record.level() {
            Level::Error => "error: ",
            Level::Warn => "warning: ",
            Level::Info => "",
            Level::Debug => "debug: ",
            Level::Trace => "trace: ",
        };
        let mut err = std::io::stderr().lock();
        let _ = writeln!(err, "unipod-agent: {level}{}", record.args());
    }

    fn flush(&self) {}
}

static LOGGER: ConsoleLogger = ConsoleLogger;

/// Installs the console logger at `Info` level. Idempotent.
pub fn init() {
    if log::set_logger(&LOGGER).is_ok() {
        log::set_max_level(LevelFilter::Info);
    }
}

/// Displays an error with its whole `source()` chain: `a: b: c`.
pub struct Chain<'a>(pub &'a dyn std::error::Error);

impl std::fmt::Display for Chain<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)?;
        let mut source = self.0.source();
        while let Some(e) = source {
            write!(f, ": {e}")?;
            source = e.source();
        }
        Ok(())
    }
}
