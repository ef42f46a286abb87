//! What the first batch sets: the decoder bias (geometric median or mean of the activations)
//! and the activation scale (mean norm brought to `sqrt(d_in)`). Host-side, on `[n, d]` rows.

use crate::config::BiasInit;

/// The starting `b_dec` for `rows` (`n` rows of width `d`, row-major).
pub fn decoder_bias(init: BiasInit, rows: &[f32], d: usize) -> Vec<f32> {
    match init {
        BiasInit::GeometricMedian => geometric_median(rows, d, 100, 1e-5),
        BiasInit::Mean => mean(rows, d).into_iter().map(|v| v as f32).collect(),
        BiasInit::Zeros => vec![0.0; d],
    }
}

/// The factor that brings the mean L2 norm of the rows to `sqrt(d)` (1 for all-zero rows).
pub fn norm_scale(rows: &[f32], d: usize) -> f32 {
    let n = rows.len() / d;
    let mean_norm = rows
        .chunks_exact(d)
        .map(|r| {
            r.iter()
                .map(|&v| f64::from(v) * f64::from(v))
                .sum::<f64>()
                .sqrt()
        })
        .sum::<f64>()
        / n.max(1) as f64;
    if mean_norm > 0.0 {
        ((d as f64).sqrt() / mean_norm) as f32
    } else {
        1.0
    }
}

/// Per-column mean, in f64.
fn mean(rows: &[f32], d: usize) -> Vec<f64> {
    let n = (rows.len() / d).max(1) as f64;
    let mut sum = vec![0f64; d];
    for row in rows.chunks_exact(d) {
        sum.iter_mut()
            .zip(row)
            .for_each(|(s, &v)| *s += f64::from(v));
    }
    sum.into_iter().map(|s| s / n).collect()
}

/// Weiszfeld's algorithm from the mean: reweight each point by the inverse of its distance to
/// the guess until the guess moves less than `tol` (at most `max_iter` times).
pub fn geometric_median(rows: &[f32], d: usize, max_iter: usize, tol: f64) -> Vec<f32> {
    let mut guess = mean(rows, d);
    for _ in 0..max_iter {
        let mut next = vec![0f64; d];
        let mut total = 0f64;
        for row in rows.chunks_exact(d) {
            let dist = row
                .iter()
                .zip(&guess)
                .map(|(&v, g)| (f64::from(v) - g).powi(2))
                .sum::<f64>()
                .sqrt();
            // A point on the guess would get an infinite weight: it is the median's neighbourhood.
            let w = 1.0 / dist.max(1e-12);
            total += w;
            next.iter_mut()
                .zip(row)
                .for_each(|(n, &v)| *n += w * f64::from(v));
        }
        next.iter_mut().for_each(|n| *n /= total);
        let moved = next
            .iter()
            .zip(&guess)
            .map(|(a, b)| (a - b).powi(2))
            .sum::<f64>()
            .sqrt();
        guess = next;
        if moved < tol {
            break;
        }
    }
    guess.into_iter().map(|v| v as f32).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    // In one dimension the geometric median is the ordinary median.
    #[test]
    fn median_of_points_on_a_line() {
        let rows = [0.0f32, 1.0, 2.0, 10.0, 100.0];
        let m = geometric_median(&rows, 1, 1000, 1e-9);
        assert!((m[0] - 2.0).abs() < 1e-3, "{m:?}");
    }

    // The geometric median of an equilateral triangle's corners is its centre (the Fermat
    // point); with a far outlier added, the median stays near the cluster while the mean moves.
    #[test]
    fn fermat_point_and_robustness() {
        let h = 3f32.sqrt() / 2.0;
        let tri = [0.0, 0.0, 1.0, 0.0, 0.5, h];
        let m = geometric_median(&tri, 2, 1000, 1e-12);
        assert!(
            (m[0] - 0.5).abs() < 1e-5 && (m[1] - h / 3.0).abs() < 1e-5,
            "{m:?}"
        );
        let mut with_outlier = vec![0.0f32; 0];
        for _ in 0..5 {
            with_outlier.extend_from_slice(&[1.0, 1.0]);
        }
        with_outlier.extend_from_slice(&[1000.0, 1000.0]);
        let m = geometric_median(&with_outlier, 2, 1000, 1e-9);
        assert!((m[0] - 1.0).abs() < 1e-3, "{m:?}");
        assert!((mean(&with_outlier, 2)[0] - 1005.0 / 6.0).abs() < 1e-9);
    }

    // Rows [3, 4] and [0, 0]: mean norm 2.5, so the scale is sqrt(2) / 2.5.
    #[test]
    fn scale_brings_the_mean_norm_to_sqrt_d() {
        let s = norm_scale(&[3.0, 4.0, 0.0, 0.0], 2);
        assert!((s - 2f32.sqrt() / 2.5).abs() < 1e-7);
    }
}
