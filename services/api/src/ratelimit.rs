//! Requests per second per API key (the `governor` crate's GCRA): each
//! principal gets its own bucket, its key's `rate_limit_per_sec` or the
//! server's `EXO_API__RATE_LIMIT_PER_SEC`; over it, `429 Too Many Requests`
//! with `Retry-After` (seconds) and a message naming the key and its rate.

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use governor::clock::{Clock as _, DefaultClock};
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};

/// The buckets of one replica.
#[derive(Debug, Default)]
pub struct RateLimits {
    default_per_sec: u32,
    burst: u32,
    buckets: Mutex<HashMap<(String, u32), Arc<DefaultDirectRateLimiter>>>,
}

/// A request over its key's rate.
#[derive(Debug, Clone, PartialEq)]
pub struct Limited {
    /// The rate, requests per second.
    pub per_sec: u32,
    /// When the next request would be allowed.
    pub retry_after: Duration,
}

impl RateLimits {
    /// Buckets of `default_per_sec` (0: no limit unless a key has its own)
    /// and `burst` (0: the rate).
    pub fn new(default_per_sec: u32, burst: u32) -> Self {
        Self {
            default_per_sec,
            burst,
            buckets: Mutex::default(),
        }
    }

    /// Takes one request from `principal`'s bucket (`own`: its key's rate).
    pub fn take(&self, principal: &str, own: Option<u32>) -> Result<(), Limited> {
        let per_sec = own.unwrap_or(self.default_per_sec);
        let Some(rate) = NonZeroU32::new(per_sec) else {
            return Ok(());
        };
        let burst = NonZeroU32::new(self.burst).unwrap_or(rate);
        let bucket = {
            let mut map = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
            if map.len() > 100_000 {
                map.clear();
            }
            map.entry((principal.to_string(), per_sec))
                .or_insert_with(|| {
                    Arc::new(RateLimiter::direct(
                        Quota::per_second(rate).allow_burst(burst),
                    ))
                })
                .clone()
        };
        bucket.check().map_err(|not_until| Limited {
            per_sec,
            retry_after: not_until.wait_time_from(DefaultClock::default().now()),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_gets_its_burst_then_waits() {
        let limits = RateLimits::new(5, 0);
        for _ in 0..5 {
            assert!(limits.take("k", None).is_ok());
        }
        let limited = limits.take("k", None).unwrap_err();
        assert_eq!(limited.per_sec, 5);
        assert!(limited.retry_after <= Duration::from_millis(200));
        // Another key has its own bucket; a key's own rate wins.
        assert!(limits.take("other", None).is_ok());
        for _ in 0..50 {
            assert!(limits.take("fast", Some(50)).is_ok());
        }
        assert!(limits.take("fast", Some(50)).is_err());
        // No limit configured: never limited.
        let none = RateLimits::new(0, 0);
        assert!((0..10_000).all(|_| none.take("k", None).is_ok()));
    }
}
