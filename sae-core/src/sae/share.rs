//! A batch spread over ranks (data-parallel training): each rank holds some of the batch's
//! rows, and its losses are normalised by the whole batch, so that the ranks' losses and
//! gradients add up to those of the whole batch on one device.

/// The whole batch a rank's rows belong to.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BatchShare {
    /// `sum((x - mean_0(x))^2)` over the whole batch: the FVU's denominator.
    pub total_variance: f64,
    /// The whole batch's rows: the denominator of per-token means (L1, L0 penalties).
    pub tokens: usize,
}

/// The sum of each column of `[rows, d]` row-major `x`, in f64.
pub fn column_sums(x: &[f32], d: usize) -> Vec<f64> {
    let mut sums = vec![0f64; d];
    for row in x.chunks_exact(d) {
        sums.iter_mut()
            .zip(row)
            .for_each(|(s, &v)| *s += f64::from(v));
    }
    sums
}

/// `sum((x - mean)^2)` over the rows of `[rows, d]` row-major `x`, in f64.
pub fn squared_deviation(x: &[f32], mean: &[f64]) -> f64 {
    x.chunks_exact(mean.len())
        .map(|row| {
            row.iter()
                .zip(mean)
                .map(|(&v, m)| (f64::from(v) - m).powi(2))
                .sum::<f64>()
        })
        .sum()
}

/// `sum((x - mean_0(x))^2)` of `[n, d]` row-major `x`, in f64: sparsify's FVU denominator.
pub fn total_variance(x: &[f32], n: usize, d: usize) -> f64 {
    let mean: Vec<f64> = column_sums(x, d).iter().map(|s| s / n as f64).collect();
    squared_deviation(x, &mean)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn total_variance_by_hand() {
        // Columns (1, 3) and (2, 6): means 2 and 4, deviations 1+1 and 4+4.
        let x = [1.0, 2.0, 3.0, 6.0];
        assert_eq!(total_variance(&x, 2, 2), 10.0);
        // Split over two ranks: the column sums add up, then the deviations from the mean.
        let sums: Vec<f64> = (column_sums(&x[..2], 2).iter())
            .zip(column_sums(&x[2..], 2))
            .map(|(a, b)| (a + b) / 2.0)
            .collect();
        let split = squared_deviation(&x[..2], &sums) + squared_deviation(&x[2..], &sums);
        assert_eq!(split, 10.0);
    }
}
