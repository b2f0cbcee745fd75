//! Rate-limited logging for anything a guest can trigger.
//!
//! `warn_ratelimited!` logs at most [`BURST`] messages per call site per
//! [`WINDOW_SECS`] seconds and reports how many it dropped, so a hostile guest
//! cannot flood the host's log.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// Messages allowed per call site per window.
pub const BURST: u64 = 10;
/// Window length in seconds.
pub const WINDOW_SECS: u64 = 5;

/// Per-call-site state. Create with [`RateLimit::new`] in a `static`.
#[derive(Debug)]
pub struct RateLimit {
    window: AtomicU64,
    count: AtomicU64,
    dropped: AtomicU64,
}

impl RateLimit {
    /// A limiter with nothing logged yet.
    pub const fn new() -> Self {
        Self {
            window: AtomicU64::new(0),
            count: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
        }
    }

    /// Returns `Some(dropped_since_last)` if this message may be logged.
    pub fn check(&self) -> Option<u64> {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let window = now / WINDOW_SECS;
        if self.window.swap(window, Ordering::Relaxed) != window {
            self.count.store(0, Ordering::Relaxed);
        }
        if self.count.fetch_add(1, Ordering::Relaxed) < BURST {
            Some(self.dropped.swap(0, Ordering::Relaxed))
        } else {
            self.dropped.fetch_add(1, Ordering::Relaxed);
            None
        }
    }
}

impl Default for RateLimit {
    fn default() -> Self {
        Self::new()
    }
}

/// `log::warn!`, limited per call site. Use for every guest-triggerable message.
#[macro_export]
macro_rules! warn_ratelimited {
    ($($arg:tt)+) => {{
        static LIMIT: $crate::ratelimit::RateLimit = $crate::ratelimit::RateLimit::new();
        if let Some(dropped) = LIMIT.check() {
            if dropped > 0 {
                log::warn!("({dropped} similar messages suppressed)");
            }
            log::warn!($($arg)+);
        }
    }};
}

/// `log::debug!`, limited per call site: for guest behaviour that is normal
/// on real hardware too (a kernel probing legacy ports nothing answers).
#[macro_export]
macro_rules! debug_ratelimited {
    ($($arg:tt)+) => {{
        static LIMIT: $crate::ratelimit::RateLimit = $crate::ratelimit::RateLimit::new();
        if log::log_enabled!(log::Level::Debug) && let Some(dropped) = LIMIT.check() {
            if dropped > 0 {
                log::debug!("({dropped} similar messages suppressed)");
            }
            log::debug!($($arg)+);
        }
    }};
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allows_a_burst_then_drops() {
        let l = RateLimit::new();
        let allowed = (0..100).filter(|_| l.check().is_some()).count() as u64;
        // A window boundary may fall inside the loop; then up to 2 bursts pass.
        assert!((BURST..=2 * BURST).contains(&allowed), "allowed {allowed}");
    }
}
