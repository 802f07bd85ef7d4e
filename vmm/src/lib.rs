//! unipod's VMM: a KVM virtual machine monitor built on the rust-vmm crates.
//!
//! # Design
//! Follows rust-vmm's vmm-reference: [`config::VmConfig`] is plain data,
//! validated without I/O, and converted once into the live [`vmm::Vmm`],
//! which owns a [`vstate::vm::Vm`] and a [`device_manager::DeviceManager`].
//! Architecture-specific code lives behind [`arch`]; nothing else uses
//! `#[cfg(target_arch)]`.

pub mod api;
pub mod arch;
pub mod boot;
pub mod cli;
pub mod config;
pub mod device_manager;
pub mod devices;
pub mod error_chain;
pub mod exit_code;
pub mod file_error;
pub mod image;
pub mod net;
pub mod pod;
pub mod seccomp;
pub mod shim;
pub mod snapshot;
pub mod vmm;
pub mod vstate;
