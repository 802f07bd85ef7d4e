//! KVM state: the VM with its memory, the vCPUs, and how the VM ends.

pub mod exit;
pub mod memory;
pub mod profile;
pub mod vcpu;
pub mod vm;
