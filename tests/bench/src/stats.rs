//! Percentiles and small summaries.

use serde::Serialize;

/// Summary of a sample of durations, in milliseconds.
#[derive(Debug, Clone, Copy, Default, Serialize, PartialEq)]
pub struct Summary {
    /// Number of samples.
    pub n: usize,
    /// Mean.
    pub mean: f64,
    /// Median.
    pub p50: f64,
    /// 90th percentile.
    pub p90: f64,
    /// 99th percentile.
    pub p99: f64,
    /// Smallest sample.
    pub min: f64,
    /// Largest sample.
    pub max: f64,
}

impl Summary {
    /// Summarises samples given in microseconds, reporting milliseconds.
    pub fn of_us(samples: &[i64]) -> Self {
        let ms: Vec<f64> = samples.iter().map(|&us| us as f64 / 1000.0).collect();
        Self::of(&ms)
    }

    /// Summarises samples (any unit; the result is in the same unit).
    pub fn of(samples: &[f64]) -> Self {
        if samples.is_empty() {
            return Self::default();
        }
        let mut v = samples.to_vec();
        v.sort_by(f64::total_cmp);
        let mean = v.iter().sum::<f64>() / v.len() as f64;
        Self {
            n: v.len(),
            mean: round3(mean),
            p50: round3(percentile(&v, 50.0)),
            p90: round3(percentile(&v, 90.0)),
            p99: round3(percentile(&v, 99.0)),
            min: round3(v[0]),
            max: round3(v[v.len() - 1]),
        }
    }

    /// `p50 / p99 (max)` for tables.
    pub fn short(&self) -> String {
        if self.n == 0 {
            return "n/a".to_string();
        }
        format!(
            "p50 {} / p99 {} / max {} ms (n={})",
            fmt_ms(self.p50),
            fmt_ms(self.p99),
            fmt_ms(self.max),
            self.n
        )
    }
}

/// Nearest-rank percentile of sorted values.
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// Rounds to three decimals (µs resolution for milliseconds).
pub fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

/// Milliseconds with a precision that suits the magnitude.
pub fn fmt_ms(x: f64) -> String {
    if x.abs() >= 100.0 {
        format!("{x:.0}")
    } else if x.abs() >= 10.0 {
        format!("{x:.1}")
    } else {
        format!("{x:.2}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&v, 50.0), 50.0);
        assert_eq!(percentile(&v, 99.0), 99.0);
        assert_eq!(percentile(&v, 100.0), 100.0);
        assert_eq!(percentile(&[3.0], 99.0), 3.0);
        let s = Summary::of_us(&[1000, 3000, 2000]);
        assert_eq!((s.n, s.p50, s.max, s.mean), (3, 2.0, 3.0, 2.0));
        assert_eq!(Summary::of(&[]).n, 0);
    }
}
