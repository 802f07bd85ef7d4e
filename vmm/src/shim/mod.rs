//! The containerd shim v2 (`containerd-shim-unipod-v2`, runtime
//! `io.containerd.unipod.v2`): containerd's task API mapped onto a pod VM
//! and its guest agent.
//!
//! # Design
//! - **One shim and one VM per pod.** `start` groups containers by the CRI
//!   annotations (see [`spec::pod_id`]): a CRI container reuses its
//!   sandbox's shim socket, anything else gets its own. The first Create
//!   (the sandbox, or a `ctr run` container) starts the VM.
//! - **Rootfs.** Each container's snapshot is packed into an erofs image
//!   ([`rootfs`]) that the guest mounts read-only, as for `unipod run`.
//!   The first container's image is the VM's first disk. A later one with
//!   the same bytes shares its disk; another image is hot-attached to the
//!   VM's next empty disk slot over the VMM's API socket ([`crate::api`]),
//!   and the agent waits for the guest to see its size before mounting it.
//! - **Processes.** A task is an agent container, an exec an agent exec;
//!   each gets a short agent name (`c1`, `x2`) since containerd's ids may
//!   exceed the agent's 63 characters. Output events are written to
//!   containerd's stdout/stderr FIFOs by the dispatcher thread, in order,
//!   before the exit is published.
//! - **Events** follow runc's shim: `/tasks/create` in Create, `/tasks/start`
//!   and `/tasks/exec-started` in Start, `/tasks/exec-added` in Exec,
//!   `/tasks/exit` when the agent reports the exit (never before the start
//!   event), `/tasks/oom`, `/tasks/delete` in Delete.
//! - **The VM dies** (VMM killed, guest crashed): every live process exits
//!   with 255, containerd deletes the tasks and the shim shuts down.
//! - The shim reaps only its own children (no subreaper): the crate's
//!   reaper would race `Child::wait` on the VMM.
//!
//! # Limitations
//! - A pod VM holds at most `MAX_IMAGES_PER_POD` different images over its
//!   life: a slot keeps its image until the VM ends, even once no container
//!   uses it.
//! - Checkpoint and Update answer NotImplemented.
//! - Pause freezes the container's cgroup in the guest (execs included);
//!   the VM itself keeps running.
//!
//! # Task calls beyond start and stop
//! - **Stats** reads the container's guest cgroup and answers with
//!   containerd's cgroup v2 `Metrics` (CPU, memory, OOM kills, pids).
//! - **Pause/Resume** write the guest cgroup's `cgroup.freeze` and wait
//!   for the kernel to confirm it; they publish `/tasks/paused` and
//!   `/tasks/resumed`.
//! - **A tty or stdin** works for a task's main process as for an exec;
//!   ResizePty sets the guest pty's window size.

pub mod rootfs;
pub mod runtime_spec;
mod service;
pub mod spec;

pub use service::Service;

/// The runtime name containerd knows the shim by.
pub const RUNTIME_ID: &str = "io.containerd.unipod.v2";

/// Runs the shim binary: `start`, `delete`, or the task service.
pub fn main() {
    containerd_shim::run::<Service>(
        RUNTIME_ID,
        Some(containerd_shim::Config {
            no_reaper: true,
            no_sub_reaper: true,
            ..Default::default()
        }),
    );
}
