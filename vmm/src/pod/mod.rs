//! Host-side pod management: the pod engine that runs every pod (a
//! manifest's, a command's, the shim's), the Pod manifest, the link to the
//! guest agent and the pod phase. docs/DESIGN.md ("The pod engine") has
//! the map.
//!
//! # Design
//! `unipod run` starts the VMM as a child process, then
//! talks to the agent in the guest only through the VMM's hybrid-vsock Unix
//! socket. Keeping the VMM in its own process means a VMM crash is seen as
//! what it is (the pod fails with a reason), and the same path serves the
//! containerd shim later.

pub mod agent_client;
pub mod cleanup;
pub mod config_sources;
pub mod container_log;
pub mod control;
pub mod dry_run;
pub mod image_wait;
pub mod images;
pub mod kubectl;
pub mod lifecycle;
pub mod manifest;
pub mod objects;
pub mod options;
pub mod phase;
pub mod pod_vm;
pub mod port_forward;
pub mod run;
pub mod runtime_spec;
pub mod security_context;
pub mod spec;
pub mod start;
pub mod status;
pub mod supervisor;
pub mod vm_inputs;
pub mod vmm_api;
pub mod vmm_process;
pub mod warm_start;
