//! Rate limiting for log lines a guest can trigger, so a misbehaving driver
//! cannot flood the host's logs (STYLE.md: guest-facing code is hostile).

#![forbid(unsafe_code)]

use std::time::{Duration, Instant};

/// Lines allowed per window.
const LINES_PER_WINDOW: u32 = 10;
const WINDOW: Duration = Duration::from_secs(1);

/// Allows ten lines a second, then counts what it drops and
/// says how many when the next window opens.
#[derive(Debug, Default)]
pub struct LogLimiter {
    window_start: Option<Instant>,
    in_window: u32,
    suppressed: u64,
}

impl LogLimiter {
    /// Whether the next line may be logged.
    pub fn allow(&mut self) -> bool {
        self.allow_at(Instant::now())
    }

    fn allow_at(&mut self, now: Instant) -> bool {
        let expired = self
            .window_start
            .is_none_or(|start| now.saturating_duration_since(start) >= WINDOW);
        if expired {
            if self.suppressed > 0 {
                log::warn!(
                    "{} more guest-triggered messages were suppressed",
                    self.suppressed
                );
            }
            self.window_start = Some(now);
            self.in_window = 0;
            self.suppressed = 0;
        }
        if self.in_window < LINES_PER_WINDOW {
            self.in_window += 1;
            true
        } else {
            self.suppressed += 1;
            false
        }
    }
}

/// `log::warn!` through a [`LogLimiter`].
#[macro_export]
macro_rules! guest_warn {
    ($limiter:expr, $($arg:tt)+) => {
        if $limiter.allow() {
            log::warn!($($arg)+);
        }
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_is_cut_and_the_next_window_allows_again() {
        let mut l = LogLimiter::default();
        let t0 = Instant::now();
        let allowed = (0..100).filter(|_| l.allow_at(t0)).count();
        assert_eq!(allowed, LINES_PER_WINDOW as usize);
        assert_eq!(l.suppressed, 90);
        assert!(l.allow_at(t0 + WINDOW));
        assert_eq!(l.suppressed, 0);
    }
}
