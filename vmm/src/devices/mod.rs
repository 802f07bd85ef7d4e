//! Emulated devices and the buses that route vCPU I/O exits to them.

pub mod bus;
pub mod legacy;
pub mod log_limit;
pub mod virtio;

pub use bus::{Bus, BusDevice, BusError};
