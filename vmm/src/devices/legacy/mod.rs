//! Legacy platform devices: the 8250 serial console, the i8042 (for reset)
//! and the boot-timer marker.

pub mod boot_timer;
pub mod i8042;
pub mod serial;

pub use boot_timer::BootTimer;
pub use i8042::I8042;
pub use serial::{ConsoleWriter, SerialConsole};
