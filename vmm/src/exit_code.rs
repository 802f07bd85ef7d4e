//! The exit codes of `unipod`'s commands, in one place.
//!
//! # Design
//! A leaf: the VMM (`unipod boot`) sets the first group, and the pod engine
//! reads them back from its VMM child (a refused snapshot, a crashed
//! guest); the pod commands set the second. The help texts in
//! `unipod --help` describe them to users.

/// `unipod boot`: the guest shut down cleanly.
pub const EXIT_OK: i32 = 0;
/// `unipod boot`: unipod failed to set up or run the VM.
pub const EXIT_SETUP_ERROR: i32 = 1;
/// Bad usage (clap's own code), for every command.
pub const EXIT_USAGE: i32 = 2;
/// `unipod boot`: the guest crashed.
pub const EXIT_GUEST_CRASHED: i32 = 3;
/// `unipod boot`: the snapshot given to `--restore` cannot be used.
pub const EXIT_SNAPSHOT_REJECTED: i32 = 4;

/// `unipod run MANIFEST`: the pod Failed.
pub const EXIT_POD_FAILED: i32 = 1;
/// `unipod run`: unipod itself failed (VM, agent or setup), as `docker run`.
pub const EXIT_RUN_ERROR: i32 = 125;
/// `unipod run`: interrupted by the user (128 + SIGINT).
pub const EXIT_INTERRUPTED: i32 = 130;
