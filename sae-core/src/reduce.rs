//! Sums over `f32` slices that the compiler can vectorise: a plain `iter().sum()` is one
//! dependent chain of additions (float addition is not associative, so it stays scalar), which
//! made the SAE step's per-slot dot products latency-bound. These keep [`LANES`] independent
//! partial sums, added together at the end, so the result is the same on every machine and
//! vector width.

/// Independent partial sums per reduction.
pub const LANES: usize = 16;

/// `sum_i a_i b_i` over the common length of `a` and `b`.
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    let n = a.len().min(b.len());
    let (a, b) = (&a[..n], &b[..n]);
    let mut acc = [0f32; LANES];
    let mut a_blocks = a.chunks_exact(LANES);
    let mut b_blocks = b.chunks_exact(LANES);
    for (x, y) in (&mut a_blocks).zip(&mut b_blocks) {
        for i in 0..LANES {
            acc[i] += x[i] * y[i];
        }
    }
    for (i, (x, y)) in a_blocks
        .remainder()
        .iter()
        .zip(b_blocks.remainder())
        .enumerate()
    {
        acc[i] += x * y;
    }
    finish(acc)
}

/// `sum_i a_i^2`.
pub fn norm_sq(a: &[f32]) -> f32 {
    dot(a, a)
}

/// The lanes added pairwise (a fixed order).
fn finish(mut acc: [f32; LANES]) -> f32 {
    let mut width = LANES / 2;
    while width > 0 {
        for i in 0..width {
            acc[i] += acc[i + width];
        }
        width /= 2;
    }
    acc[0]
}

#[cfg(test)]
mod tests {
    use super::*;

    // Values k/8 for small k are exact in f32 and so are their products and partial sums, so
    // the result must equal the f64 sum exactly, tail (lengths not a multiple of 16) included.
    #[test]
    fn dot_is_exact_on_exactly_representable_values() {
        for n in [0, 1, 15, 16, 17, 576, 1000] {
            let a: Vec<f32> = (0..n).map(|i| ((i % 13) as f32 - 6.0) / 8.0).collect();
            let b: Vec<f32> = (0..n).map(|i| ((i % 7) as f32 - 3.0) / 4.0).collect();
            let expected: f64 = a.iter().zip(&b).map(|(x, y)| f64::from(x * y)).sum();
            assert_eq!(f64::from(dot(&a, &b)), expected, "n = {n}");
            let sq: f64 = a.iter().map(|x| f64::from(x * x)).sum();
            assert_eq!(f64::from(norm_sq(&a)), sq, "n = {n}");
        }
    }

    // Unequal lengths: only the common prefix counts (1*4 + 2*5 = 14).
    #[test]
    fn dot_uses_the_common_length() {
        assert_eq!(dot(&[1.0, 2.0, 3.0], &[4.0, 5.0]), 14.0);
    }
}
