//! Brute-force brake for credential endpoints: an address whose requests were refused with 401
//! too often within a window is answered 429 until the window passes. Counting 401s (rather
//! than parsing credentials) covers every way to fail, including the scripts' own refusals.

use crate::security::expiring::ExpiringMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Tracked addresses before the first sweep of expired ones.
const SWEEP_FLOOR: usize = 10_000;

pub struct AuthLimiter {
    window: Duration,
    max_failures: u32,
    failures: Mutex<ExpiringMap<IpAddr, (Instant, u32)>>,
}

impl AuthLimiter {
    pub fn new(max_failures: u32, window: Duration) -> Self {
        AuthLimiter {
            window,
            max_failures,
            failures: Mutex::new(ExpiringMap::new(SWEEP_FLOOR)),
        }
    }

    /// Seconds until `ip` may try again, or `None` if it may now.
    pub fn retry_after(&self, ip: IpAddr, now: Instant) -> Option<u64> {
        let failures = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        let (start, count) = failures.get(&ip)?;
        let elapsed = now.saturating_duration_since(*start);
        (*count >= self.max_failures && elapsed < self.window)
            .then(|| (self.window - elapsed).as_secs().max(1))
    }

    pub fn record_failure(&self, ip: IpAddr, now: Instant) {
        let mut failures = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        let window = self.window;
        failures.sweep_if_due(|_, (start, _)| now.saturating_duration_since(*start) < window);
        let entry = failures.map().entry(ip).or_insert((now, 0));
        if now.saturating_duration_since(entry.0) >= self.window {
            *entry = (now, 0);
        }
        entry.1 = entry.1.saturating_add(1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_after_the_limit_until_the_window_passes() {
        let l = AuthLimiter::new(2, Duration::from_secs(60));
        let ip: IpAddr = "10.0.0.1".parse().unwrap();
        let other: IpAddr = "10.0.0.2".parse().unwrap();
        let t0 = Instant::now();
        assert_eq!(l.retry_after(ip, t0), None);
        l.record_failure(ip, t0);
        assert_eq!(l.retry_after(ip, t0), None);
        l.record_failure(ip, t0 + Duration::from_secs(1));
        assert_eq!(l.retry_after(ip, t0 + Duration::from_secs(10)), Some(50));
        assert_eq!(l.retry_after(other, t0), None);
        assert_eq!(l.retry_after(ip, t0 + Duration::from_secs(60)), None);
        l.record_failure(ip, t0 + Duration::from_secs(61));
        assert_eq!(l.retry_after(ip, t0 + Duration::from_secs(61)), None);
    }
}
