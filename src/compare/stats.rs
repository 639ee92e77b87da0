//! The statistics of a comparison: a 95% Wilson score interval for an accuracy (a proportion of
//! n examples; unlike the normal approximation it stays inside [0, 1] and is honest at small n,
//! Wilson 1927, as recommended by Brown, Cai & DasGupta 2001), and mean ± sample standard
//! deviation over seeds.

/// z of a two-sided 95% interval.
pub const Z95: f64 = 1.959_963_984_540_054;

/// The Wilson score interval of `successes` out of `n` at `z`; `None` for n = 0.
pub fn wilson(successes: f64, n: usize, z: f64) -> Option<(f64, f64)> {
    if n == 0 {
        return None;
    }
    let n = n as f64;
    let p = (successes / n).clamp(0.0, 1.0);
    let z2 = z * z;
    let centre = (p + z2 / (2.0 * n)) / (1.0 + z2 / n);
    let half = z / (1.0 + z2 / n) * (p * (1.0 - p) / n + z2 / (4.0 * n * n)).sqrt();
    Some(((centre - half).max(0.0), (centre + half).min(1.0)))
}

/// Mean and sample standard deviation (n − 1; 0 for one value) of the finite values; `None`
/// when there are none.
pub fn mean_sd(values: impl IntoIterator<Item = f64>) -> Option<(f64, f64)> {
    let v: Vec<f64> = values.into_iter().filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return None;
    }
    let n = v.len() as f64;
    let mean = v.iter().sum::<f64>() / n;
    let var = if v.len() > 1 {
        v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1.0)
    } else {
        0.0
    };
    Some((mean, var.sqrt()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: (f64, f64), b: (f64, f64)) -> bool {
        (a.0 - b.0).abs() < 5e-5 && (a.1 - b.1).abs() < 5e-5
    }

    /// Reference values from an independent evaluation of Wilson's formula in Python (what
    /// statsmodels' `proportion_confint(k, n, method="wilson")` computes).
    #[test]
    fn wilson_intervals_match_the_published_formula() {
        let i = |k: f64, n| wilson(k, n, Z95).unwrap();
        assert!(
            close(i(5.0, 10), (0.236_593, 0.763_407)),
            "{:?}",
            i(5.0, 10)
        );
        assert!(close(i(0.0, 10), (0.0, 0.277_533)), "{:?}", i(0.0, 10));
        assert!(close(i(10.0, 10), (0.722_467, 1.0)), "{:?}", i(10.0, 10));
        assert!(
            close(i(81.0, 100), (0.722_212, 0.874_852)),
            "{:?}",
            i(81.0, 100)
        );
        assert_eq!(wilson(0.0, 0, Z95), None);
    }

    #[test]
    fn mean_and_sd_use_n_minus_one_and_skip_non_finite_values() {
        assert_eq!(mean_sd([1.0, 2.0, 3.0]), Some((2.0, 1.0)));
        assert_eq!(mean_sd([4.0, f64::NAN]), Some((4.0, 0.0)));
        assert_eq!(mean_sd([]), None);
    }
}
