//! Graph retry policy and its delay formulas (spec §7.2).
//!
//! `delay_ms(n)` gives the delay, in integer milliseconds, before retry
//! generation `n` (the new state's `retry_count`, ≥ 1) may run. Unlike the
//! upstream Python (unbounded integers), every computation saturates at
//! `i64::MAX` before the `max_delay` cap, so huge exponents never overflow.

use crate::validation::{FieldError, LocPart};
use serde::{Deserialize, Serialize};

/// How the delay grows with the retry count.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum RetryStrategy {
    /// `f · e^(n−1)`.
    #[default]
    Exponential,
    /// `U(0, f · e^(n−1))`.
    ExponentialFullJitter,
    /// `b/2 + U(0, b/2)` with `b = f · e^(n−1)`.
    ExponentialEqualJitter,
    /// `f · n`.
    Linear,
    /// `U(0, f · n)`.
    LinearFullJitter,
    /// `b/2 + U(0, b/2)` with `b = f · n`.
    LinearEqualJitter,
    /// `f`.
    Fixed,
    /// `U(0, f)`.
    FixedFullJitter,
    /// `b/2 + U(0, b/2)` with `b = f`.
    FixedEqualJitter,
}

impl RetryStrategy {
    /// All strategies, in declaration order.
    pub const ALL: [RetryStrategy; 9] = [
        RetryStrategy::Exponential,
        RetryStrategy::ExponentialFullJitter,
        RetryStrategy::ExponentialEqualJitter,
        RetryStrategy::Linear,
        RetryStrategy::LinearFullJitter,
        RetryStrategy::LinearEqualJitter,
        RetryStrategy::Fixed,
        RetryStrategy::FixedFullJitter,
        RetryStrategy::FixedEqualJitter,
    ];

    /// The wire name (`EXPONENTIAL_FULL_JITTER`, …), as serialised.
    pub fn as_str(self) -> &'static str {
        use RetryStrategy::*;
        match self {
            Exponential => "EXPONENTIAL",
            ExponentialFullJitter => "EXPONENTIAL_FULL_JITTER",
            ExponentialEqualJitter => "EXPONENTIAL_EQUAL_JITTER",
            Linear => "LINEAR",
            LinearFullJitter => "LINEAR_FULL_JITTER",
            LinearEqualJitter => "LINEAR_EQUAL_JITTER",
            Fixed => "FIXED",
            FixedFullJitter => "FIXED_FULL_JITTER",
            FixedEqualJitter => "FIXED_EQUAL_JITTER",
        }
    }

    /// The jitter applied on top of the base delay.
    pub fn jitter(self) -> Jitter {
        use RetryStrategy::*;
        match self {
            Exponential | Linear | Fixed => Jitter::None,
            ExponentialFullJitter | LinearFullJitter | FixedFullJitter => Jitter::Full,
            ExponentialEqualJitter | LinearEqualJitter | FixedEqualJitter => Jitter::Equal,
        }
    }
}

/// Jitter family of a [`RetryStrategy`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Jitter {
    /// Deterministic: the delay is the base.
    None,
    /// `int(U(0, b))`.
    Full,
    /// `int(b/2 + U(0, b/2))`.
    Equal,
}

/// Per-graph retry policy. `{}` deserialises to the defaults
/// (`3`, `EXPONENTIAL`, `2000`, `2`, `null`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct RetryPolicy {
    /// Maximum retry generation; `3` allows attempts 0, 1, 2 and 3. Must be ≥ 0.
    pub max_retries: i64,
    /// Delay formula.
    pub strategy: RetryStrategy,
    /// Base delay `f` in milliseconds. Must be > 0.
    pub backoff_factor: i64,
    /// Exponent base `e` for the exponential strategies. Must be > 0.
    pub exponent: i64,
    /// Upper bound applied after jitter, in milliseconds; `None` means no cap.
    /// Must be > 0 when set.
    pub max_delay: Option<i64>,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_retries: 3,
            strategy: RetryStrategy::Exponential,
            backoff_factor: 2000,
            exponent: 2,
            max_delay: None,
        }
    }
}

impl RetryPolicy {
    /// Field-level (HTTP 422) problems, with `loc` relative to the policy
    /// object (e.g. `["backoff_factor"]`) and pydantic's messages. The graph
    /// validation prefixes them with `"retry_policy"`.
    pub fn validate(&self) -> Vec<FieldError> {
        let mut errors = Vec::new();
        let at = |name: &str| [LocPart::Key(name.to_owned())];
        if self.max_retries < 0 {
            errors.push(FieldError::below(at("max_retries"), 0));
        }
        if self.backoff_factor <= 0 {
            errors.push(FieldError::not_greater_than(at("backoff_factor"), 0));
        }
        if self.exponent <= 0 {
            errors.push(FieldError::not_greater_than(at("exponent"), 0));
        }
        if matches!(self.max_delay, Some(d) if d <= 0) {
            errors.push(FieldError::not_greater_than(at("max_delay"), 0));
        }
        errors
    }

    /// Whether a state at generation `retry_count` may get another retry.
    pub fn allows_retry(&self, retry_count: i64) -> bool {
        retry_count < self.max_retries
    }

    /// The deterministic base delay `b` for generation `retry_count`
    /// (values < 1 are treated as 1), saturating at `i64::MAX`, before jitter
    /// and cap. Never negative.
    pub fn base_delay_ms(&self, retry_count: i64) -> i64 {
        use RetryStrategy::*;
        let n = retry_count.max(1);
        let f = self.backoff_factor;
        let base = match self.strategy {
            Exponential | ExponentialFullJitter | ExponentialEqualJitter => {
                let power = u32::try_from(n - 1).unwrap_or(u32::MAX);
                f.saturating_mul(self.exponent.saturating_pow(power))
            }
            Linear | LinearFullJitter | LinearEqualJitter => f.saturating_mul(n),
            Fixed | FixedFullJitter | FixedEqualJitter => f,
        };
        base.max(0)
    }

    /// The delay in milliseconds before retry generation `retry_count` (the
    /// new state's `retry_count`; values < 1 are treated as 1) may run.
    ///
    /// Jitter is drawn from `rng`; the `max_delay` cap is applied after
    /// jitter. The result is never negative and never exceeds `max_delay`
    /// when it is set (and positive).
    pub fn delay_ms(&self, retry_count: i64, rng: &mut impl rand::Rng) -> i64 {
        let base = self.base_delay_ms(retry_count);
        // `base as f64` is finite and ≥ 0, so the ranges below are valid.
        let b = base as f64;
        let jittered = match self.strategy.jitter() {
            Jitter::None => base,
            Jitter::Full => {
                let v = rng.random_range(0.0..=b) as i64;
                v.clamp(0, base)
            }
            Jitter::Equal => {
                let half = b / 2.0;
                let v = (half + rng.random_range(0.0..=half)) as i64;
                v.clamp(base / 2, base)
            }
        };
        let capped = match self.max_delay {
            Some(cap) => jittered.min(cap),
            None => jittered,
        };
        capped.max(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    fn policy(strategy: RetryStrategy, f: i64, e: i64, cap: Option<i64>) -> RetryPolicy {
        RetryPolicy {
            max_retries: 3,
            strategy,
            backoff_factor: f,
            exponent: e,
            max_delay: cap,
        }
    }

    #[test]
    fn defaults_give_2000_4000_8000() {
        let p = RetryPolicy::default();
        let mut rng = StdRng::seed_from_u64(1);
        let delays: Vec<i64> = (1..=3).map(|n| p.delay_ms(n, &mut rng)).collect();
        assert_eq!(delays, vec![2000, 4000, 8000]);
    }

    #[test]
    fn serde_defaults_and_names() {
        let p: RetryPolicy = serde_json::from_str("{}").unwrap();
        assert_eq!(p, RetryPolicy::default());
        assert_eq!(
            serde_json::to_value(&p).unwrap(),
            serde_json::json!({"max_retries":3,"strategy":"EXPONENTIAL","backoff_factor":2000,"exponent":2,"max_delay":null})
        );
        let p: RetryPolicy =
            serde_json::from_str(r#"{"strategy":"FIXED_EQUAL_JITTER","max_delay":5}"#).unwrap();
        assert_eq!(p.strategy, RetryStrategy::FixedEqualJitter);
        assert_eq!(p.max_delay, Some(5));
        assert_eq!(p.backoff_factor, 2000);
        let names: Vec<String> = RetryStrategy::ALL
            .iter()
            .map(|s| {
                let wire = serde_json::to_value(s).unwrap();
                assert_eq!(wire, s.as_str(), "as_str is the serialised name");
                wire.as_str().unwrap().to_owned()
            })
            .collect();
        assert_eq!(
            names,
            [
                "EXPONENTIAL",
                "EXPONENTIAL_FULL_JITTER",
                "EXPONENTIAL_EQUAL_JITTER",
                "LINEAR",
                "LINEAR_FULL_JITTER",
                "LINEAR_EQUAL_JITTER",
                "FIXED",
                "FIXED_FULL_JITTER",
                "FIXED_EQUAL_JITTER"
            ]
        );
        assert!(serde_json::from_str::<RetryStrategy>(r#""exponential""#).is_err());
    }

    #[test]
    fn deterministic_formulas() {
        let mut rng = StdRng::seed_from_u64(7);
        let p = policy(RetryStrategy::Linear, 100, 2, None);
        assert_eq!(p.delay_ms(1, &mut rng), 100);
        assert_eq!(p.delay_ms(4, &mut rng), 400);
        let p = policy(RetryStrategy::Fixed, 250, 2, None);
        assert_eq!(p.delay_ms(9, &mut rng), 250);
        let p = policy(RetryStrategy::Exponential, 10, 3, None);
        assert_eq!(p.delay_ms(3, &mut rng), 90);
        let p = policy(RetryStrategy::Exponential, 10, 3, Some(50));
        assert_eq!(p.delay_ms(3, &mut rng), 50);
    }

    #[test]
    fn retry_count_below_one_is_treated_as_one() {
        let mut rng = StdRng::seed_from_u64(7);
        let p = RetryPolicy::default();
        assert_eq!(p.delay_ms(0, &mut rng), 2000);
        assert_eq!(p.delay_ms(-5, &mut rng), 2000);
        assert_eq!(p.delay_ms(i64::MIN, &mut rng), 2000);
    }

    #[test]
    fn huge_values_saturate() {
        let mut rng = StdRng::seed_from_u64(7);
        let p = policy(RetryStrategy::Exponential, 2000, 2, None);
        assert_eq!(p.delay_ms(100, &mut rng), i64::MAX);
        assert_eq!(p.delay_ms(i64::MAX, &mut rng), i64::MAX);
        let p = policy(RetryStrategy::Exponential, 2000, 2, Some(60_000));
        assert_eq!(p.delay_ms(i64::MAX, &mut rng), 60_000);
        let p = policy(RetryStrategy::Linear, i64::MAX, 2, None);
        assert_eq!(p.delay_ms(2, &mut rng), i64::MAX);
        let p = policy(RetryStrategy::ExponentialFullJitter, 2000, 2, None);
        let d = p.delay_ms(1000, &mut rng);
        assert!((0..=i64::MAX).contains(&d));
        let p = policy(RetryStrategy::ExponentialEqualJitter, 2000, 2, None);
        assert!(p.delay_ms(1000, &mut rng) >= i64::MAX / 2);
    }

    #[test]
    fn allows_retry_uses_max_retries() {
        let p = RetryPolicy::default();
        assert!(p.allows_retry(0));
        assert!(p.allows_retry(2));
        assert!(!p.allows_retry(3));
        let p = RetryPolicy {
            max_retries: 0,
            ..RetryPolicy::default()
        };
        assert!(!p.allows_retry(0));
    }

    #[test]
    fn validation_messages() {
        assert!(RetryPolicy::default().validate().is_empty());
        let p = RetryPolicy {
            max_retries: -1,
            strategy: RetryStrategy::Fixed,
            backoff_factor: 0,
            exponent: 0,
            max_delay: Some(0),
        };
        let errs: Vec<(String, String)> = p
            .validate()
            .into_iter()
            .map(|e| (serde_json::to_string(&e.loc).unwrap(), e.msg))
            .collect();
        assert_eq!(
            errs,
            vec![
                (
                    r#"["max_retries"]"#.to_owned(),
                    "Input should be greater than or equal to 0".to_owned()
                ),
                (
                    r#"["backoff_factor"]"#.to_owned(),
                    "Input should be greater than 0".to_owned()
                ),
                (
                    r#"["exponent"]"#.to_owned(),
                    "Input should be greater than 0".to_owned()
                ),
                (
                    r#"["max_delay"]"#.to_owned(),
                    "Input should be greater than 0".to_owned()
                ),
            ]
        );
    }

    fn strategy() -> impl Strategy<Value = RetryStrategy> {
        proptest::sample::select(RetryStrategy::ALL.to_vec())
    }

    fn valid_policy() -> impl Strategy<Value = RetryPolicy> {
        (
            strategy(),
            1i64..=i64::MAX,
            1i64..=64,
            proptest::option::of(1i64..=i64::MAX),
        )
            .prop_map(|(s, f, e, cap)| policy(s, f, e, cap))
    }

    proptest! {
        #[test]
        fn delay_is_within_zero_and_cap(p in valid_policy(), n in any::<i64>(), seed in any::<u64>()) {
            let mut rng = StdRng::seed_from_u64(seed);
            let d = p.delay_ms(n, &mut rng);
            prop_assert!(d >= 0);
            if let Some(cap) = p.max_delay {
                prop_assert!(d <= cap);
            }
            prop_assert!(d <= p.base_delay_ms(n));
        }

        #[test]
        fn non_jitter_is_deterministic_and_monotone(
            p in valid_policy().prop_filter("no jitter", |p| p.strategy.jitter() == Jitter::None),
            n in 1i64..10_000,
            seed_a in any::<u64>(),
            seed_b in any::<u64>(),
        ) {
            let a = p.delay_ms(n, &mut StdRng::seed_from_u64(seed_a));
            let b = p.delay_ms(n, &mut StdRng::seed_from_u64(seed_b));
            prop_assert_eq!(a, b);
            let next = p.delay_ms(n + 1, &mut StdRng::seed_from_u64(seed_a));
            prop_assert!(next >= a);
        }

        #[test]
        fn full_jitter_is_within_zero_and_base(
            p in valid_policy().prop_filter("full", |p| p.strategy.jitter() == Jitter::Full),
            n in any::<i64>(),
            seed in any::<u64>(),
        ) {
            let p = RetryPolicy { max_delay: None, ..p };
            let d = p.delay_ms(n, &mut StdRng::seed_from_u64(seed));
            prop_assert!(0 <= d && d <= p.base_delay_ms(n));
        }

        #[test]
        fn equal_jitter_is_within_half_and_base(
            p in valid_policy().prop_filter("equal", |p| p.strategy.jitter() == Jitter::Equal),
            n in any::<i64>(),
            seed in any::<u64>(),
        ) {
            let p = RetryPolicy { max_delay: None, ..p };
            let base = p.base_delay_ms(n);
            let d = p.delay_ms(n, &mut StdRng::seed_from_u64(seed));
            prop_assert!(base / 2 <= d && d <= base, "d={} base={}", d, base);
        }

        #[test]
        fn small_bases_match_the_python_formulas(
            f in 1i64..10_000,
            e in 1i64..5,
            n in 1i64..8,
        ) {
            let mut rng = StdRng::seed_from_u64(0);
            let exp = policy(RetryStrategy::Exponential, f, e, None);
            prop_assert_eq!(exp.delay_ms(n, &mut rng), f * e.pow(n as u32 - 1));
            let lin = policy(RetryStrategy::Linear, f, e, None);
            prop_assert_eq!(lin.delay_ms(n, &mut rng), f * n);
            let fixed = policy(RetryStrategy::Fixed, f, e, None);
            prop_assert_eq!(fixed.delay_ms(n, &mut rng), f);
        }
    }
}
