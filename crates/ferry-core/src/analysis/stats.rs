//! Statistics for the judge: the Mann-Whitney U test (normal approximation
//! with tie correction), the standard normal CDF, and weighted samples
//! (histogram bucket midpoints, weighted mean). Numbers in, numbers out:
//! nothing here knows about checks or windows.

/// Latency buckets as weighted samples at each bucket's midpoint.
pub(super) fn midpoints(h: &[(f64, u64)]) -> Vec<(f64, u64)> {
    let mut lower = 0.0;
    let mut out = Vec::new();
    for (upper, c) in h {
        let v = if upper.is_finite() {
            (lower + upper) / 2.0
        } else {
            lower * 2.0
        };
        if *c > 0 {
            out.push((v, *c));
        }
        if upper.is_finite() {
            lower = *upper;
        }
    }
    out
}

pub(super) fn weighted_mean(s: &[(f64, u64)]) -> f64 {
    let n: u64 = s.iter().map(|(_, c)| c).sum();
    if n == 0 {
        return 0.0;
    }
    s.iter().map(|(v, c)| v * *c as f64).sum::<f64>() / n as f64
}

/// The Mann-Whitney U test's statistic and two-sided p-value.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct UTest {
    pub u: f64,
    pub z: f64,
    pub p_value: f64,
}

/// Mann-Whitney U over weighted samples `(value, count)`, with the normal
/// approximation and the tie correction. `None` with fewer than 8 samples
/// on either side.
pub fn mann_whitney(a: &[(f64, u64)], b: &[(f64, u64)]) -> Option<UTest> {
    let n1: u64 = a.iter().map(|(_, c)| c).sum();
    let n2: u64 = b.iter().map(|(_, c)| c).sum();
    if n1 < 8 || n2 < 8 {
        return None;
    }
    // Group all values; rank ties by their mid-rank.
    let mut all: Vec<(f64, u64, u64)> = Vec::new(); // value, count in a, count in b
    for (v, c) in a {
        all.push((*v, *c, 0));
    }
    for (v, c) in b {
        all.push((*v, 0, *c));
    }
    all.sort_by(|x, y| x.0.total_cmp(&y.0));
    let mut merged: Vec<(f64, u64, u64)> = Vec::new();
    for (v, ca, cb) in all {
        match merged.last_mut() {
            Some(last) if last.0 == v => {
                last.1 += ca;
                last.2 += cb;
            }
            _ => merged.push((v, ca, cb)),
        }
    }
    let n = (n1 + n2) as f64;
    let mut rank_sum_a = 0.0;
    let mut next_rank = 1.0;
    let mut tie_term = 0.0;
    for (_, ca, cb) in &merged {
        let t = (ca + cb) as f64;
        let mid = next_rank + (t - 1.0) / 2.0;
        rank_sum_a += mid * *ca as f64;
        next_rank += t;
        tie_term += t * t * t - t;
    }
    let (n1f, n2f) = (n1 as f64, n2 as f64);
    let u1 = rank_sum_a - n1f * (n1f + 1.0) / 2.0;
    let mean = n1f * n2f / 2.0;
    let var = n1f * n2f / 12.0 * ((n + 1.0) - tie_term / (n * (n - 1.0)));
    if var <= 0.0 {
        // Every sample is the same value: no difference.
        return Some(UTest {
            u: u1,
            z: 0.0,
            p_value: 1.0,
        });
    }
    let z = (u1 - mean) / var.sqrt();
    let p_value = (2.0 * (1.0 - normal_cdf(z.abs()))).clamp(0.0, 1.0);
    Some(UTest { u: u1, z, p_value })
}

/// Standard normal CDF (Abramowitz & Stegun 7.1.26 for erf; error < 1.5e-7).
fn normal_cdf(x: f64) -> f64 {
    let t = x / std::f64::consts::SQRT_2;
    let sign = if t < 0.0 { -1.0 } else { 1.0 };
    let t = t.abs();
    let k = 1.0 / (1.0 + 0.327_591_1 * t);
    let poly = k
        * (0.254_829_592
            + k * (-0.284_496_736
                + k * (1.421_413_741 + k * (-1.453_152_027 + k * 1.061_405_429))));
    let erf = 1.0 - poly * (-t * t).exp();
    0.5 * (1.0 + sign * erf)
}
