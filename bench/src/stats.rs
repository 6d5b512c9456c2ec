//! Latency histograms (HdrHistogram, nanoseconds, 3 significant digits) and
//! their summaries.

use hdrhistogram::Histogram;
use serde::Serialize;

/// An empty histogram of nanoseconds that grows as needed.
#[must_use]
pub fn histogram() -> Histogram<u64> {
    match Histogram::new(3) {
        Ok(h) => h,
        // Three significant digits are always a valid precision.
        Err(_) => unreachable!("hdrhistogram refused 3 significant digits"),
    }
}

/// Percentiles of a latency histogram, in microseconds.
#[derive(Debug, Clone, Copy, Default, Serialize, PartialEq)]
pub struct Percentiles {
    /// Samples.
    pub count: u64,
    /// Mean.
    pub mean_us: f64,
    /// Median.
    pub p50_us: f64,
    /// 90th percentile.
    pub p90_us: f64,
    /// 99th percentile.
    pub p99_us: f64,
    /// 99.9th percentile.
    pub p999_us: f64,
    /// Largest.
    pub max_us: f64,
}

fn us(ns: u64) -> f64 {
    ns as f64 / 1000.0
}

impl Percentiles {
    /// Summarise `h` (nanoseconds).
    #[must_use]
    pub fn of(h: &Histogram<u64>) -> Self {
        if h.is_empty() {
            return Self::default();
        }
        Self {
            count: h.len(),
            mean_us: h.mean() / 1000.0,
            p50_us: us(h.value_at_quantile(0.5)),
            p90_us: us(h.value_at_quantile(0.9)),
            p99_us: us(h.value_at_quantile(0.99)),
            p999_us: us(h.value_at_quantile(0.999)),
            max_us: us(h.max()),
        }
    }

    /// `self − base`, percentile by percentile: the latency a path adds to
    /// a baseline path measured at the same rate.
    #[must_use]
    pub fn minus(&self, base: &Percentiles) -> Percentiles {
        Percentiles {
            count: self.count,
            mean_us: self.mean_us - base.mean_us,
            p50_us: self.p50_us - base.p50_us,
            p90_us: self.p90_us - base.p90_us,
            p99_us: self.p99_us - base.p99_us,
            p999_us: self.p999_us - base.p999_us,
            max_us: self.max_us - base.max_us,
        }
    }
}

/// `a / b`, or `None` when `b` is zero or either is not finite.
#[must_use]
pub fn ratio(a: f64, b: f64) -> Option<f64> {
    let r = a / b;
    (b != 0.0 && r.is_finite()).then_some(r)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_in_microseconds() {
        let mut h = histogram();
        for v in 1..=1000u64 {
            h.record(v * 1000).unwrap();
        }
        let p = Percentiles::of(&h);
        assert_eq!(p.count, 1000);
        assert!((p.p50_us - 500.0).abs() < 1.0, "{p:?}");
        assert!((p.p999_us - 999.0).abs() < 1.5, "{p:?}");
        assert_eq!(Percentiles::of(&histogram()), Percentiles::default());
        assert!(p.minus(&p).p99_us.abs() < f64::EPSILON);
        assert_eq!(ratio(1.0, 0.0), None);
        assert_eq!(ratio(3.0, 2.0), Some(1.5));
    }
}
