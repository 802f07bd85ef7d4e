//! The one place that picks the architecture. Everything outside `arch/`
//! uses the items re-exported here.

#[cfg(target_arch = "x86_64")]
mod x86_64;
#[cfg(target_arch = "x86_64")]
pub use self::x86_64::*;
