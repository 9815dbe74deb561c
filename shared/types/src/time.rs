//! Clock helpers and the Exosphere datetime rendering.
//!
//! Exosphere writes `created_at` / `updated_at` as naive datetimes and renders
//! them as ISO-8601 without a timezone suffix (spec §0). Epoch integers such
//! as `enqueue_after` are Unix milliseconds.

use chrono::{DateTime, Timelike, Utc};

/// A UTC time (what schedules compute with).
pub type UtcTime = DateTime<Utc>;

/// `t` as RFC 3339 in UTC, to the second (`2026-06-01T10:00:00Z`).
pub fn rfc3339(t: UtcTime) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

/// The current time as Unix milliseconds (what Python's
/// `int(time.time() * 1000)` gives).
pub fn now_ms() -> i64 {
    Utc::now().timestamp_millis()
}

/// Where handlers read the time: the system clock in services, a
/// [`ManualClock`] in tests that schedule, lease, retry or fire CRON
/// occurrences without sleeping.
pub trait Clock: Send + Sync + std::fmt::Debug {
    /// The current time as Unix milliseconds.
    fn now_ms(&self) -> i64;
}

/// The system clock ([`now_ms`]).
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ms(&self) -> i64 {
        now_ms()
    }
}

/// A clock that moves only when told to.
#[derive(Debug)]
pub struct ManualClock(std::sync::atomic::AtomicI64);

impl ManualClock {
    /// A clock showing `ms` (Unix milliseconds).
    pub fn at(ms: i64) -> Self {
        Self(std::sync::atomic::AtomicI64::new(ms))
    }

    /// Moves the clock forward by `ms`.
    pub fn advance(&self, ms: i64) {
        self.0.fetch_add(ms, std::sync::atomic::Ordering::SeqCst);
    }

    /// Sets the clock to `ms` (Unix milliseconds).
    pub fn set(&self, ms: i64) {
        self.0.store(ms, std::sync::atomic::Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now_ms(&self) -> i64 {
        self.0.load(std::sync::atomic::Ordering::SeqCst)
    }
}

/// Converts Unix milliseconds to a UTC datetime.
///
/// Values outside chrono's representable range saturate to
/// [`DateTime::<Utc>::MIN_UTC`] / [`DateTime::<Utc>::MAX_UTC`].
pub fn from_ms(ms: i64) -> DateTime<Utc> {
    match DateTime::<Utc>::from_timestamp_millis(ms) {
        Some(t) => t,
        None if ms < 0 => DateTime::<Utc>::MIN_UTC,
        None => DateTime::<Utc>::MAX_UTC,
    }
}

/// Renders `t` the way Exosphere's JSON does (Python `datetime.isoformat()` on
/// a naive value): `YYYY-MM-DDTHH:MM:SS`, followed by `.ffffff` (6 digits of
/// microseconds) only when the microsecond part is not zero. No timezone
/// suffix.
///
/// ```
/// # use chrono::{TimeZone, Utc};
/// let t = Utc.with_ymd_and_hms(2025, 1, 1, 10, 0, 0).unwrap();
/// assert_eq!(exo_types::time::format_naive_iso(t), "2025-01-01T10:00:00");
/// ```
pub fn format_naive_iso(t: DateTime<Utc>) -> String {
    let base = t.format("%Y-%m-%dT%H:%M:%S").to_string();
    // Python keeps microseconds; a leap-second nanosecond value (>= 1e9) is
    // folded back into the 0..1e6 range.
    let micros = (t.nanosecond() % 1_000_000_000) / 1_000;
    if micros == 0 {
        base
    } else {
        format!("{base}.{micros:06}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn formats_with_and_without_fraction() {
        let t = Utc.with_ymd_and_hms(2025, 1, 1, 10, 0, 0).unwrap();
        assert_eq!(format_naive_iso(t), "2025-01-01T10:00:00");
        let t = from_ms(t.timestamp_millis() + 123);
        assert_eq!(format_naive_iso(t), "2025-01-01T10:00:00.123000");
        let t =
            Utc.with_ymd_and_hms(2025, 1, 1, 10, 0, 0).unwrap() + chrono::Duration::microseconds(7);
        assert_eq!(format_naive_iso(t), "2025-01-01T10:00:00.000007");
        // Sub-microsecond parts are dropped, like Python.
        let t = Utc.with_ymd_and_hms(2025, 1, 1, 10, 0, 0).unwrap()
            + chrono::Duration::nanoseconds(999);
        assert_eq!(format_naive_iso(t), "2025-01-01T10:00:00");
    }

    #[test]
    fn ms_round_trip() {
        assert_eq!(
            from_ms(0),
            Utc.with_ymd_and_hms(1970, 1, 1, 0, 0, 0).unwrap()
        );
        assert_eq!(
            from_ms(1_735_725_600_123).timestamp_millis(),
            1_735_725_600_123
        );
        assert_eq!(from_ms(-1).timestamp_millis(), -1);
        assert_eq!(from_ms(i64::MAX), DateTime::<Utc>::MAX_UTC);
        assert_eq!(from_ms(i64::MIN), DateTime::<Utc>::MIN_UTC);
    }

    #[test]
    fn now_is_recent() {
        // 2024-01-01 as a sanity floor.
        assert!(now_ms() > 1_704_067_200_000);
    }
}
