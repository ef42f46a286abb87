//! The errors that parity checks against reference outputs use; the relative one is the
//! fixtures' README's `max |a - b| / max |b|`. Both are NaN where either side holds a NaN: a
//! plain `f32::max` fold skips NaNs, and a NaN output would pass every bound.

/// `max |a - b|` over two equally long slices, NaN where `a` or `b` holds a NaN.
///
/// # Panics
/// If the lengths differ.
pub fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len(), "lengths differ");
    max_magnitude(a.iter().zip(b).map(|(x, y)| x - y))
}

/// `max |a - b| / max |b|` over two equally long slices, NaN where `a` or `b` holds a NaN.
///
/// # Panics
/// If the lengths differ.
pub fn max_rel_diff(a: &[f32], b: &[f32]) -> f32 {
    let scale = max_magnitude(b.iter().copied());
    max_abs_diff(a, b) / scale.max(f32::MIN_POSITIVE)
}

/// The largest magnitude of `values` (0 if there are none), NaN if one of them is NaN.
fn max_magnitude(values: impl Iterator<Item = f32>) -> f32 {
    values
        .map(f32::abs)
        .fold(0.0, |m, v| if v.is_nan() || v > m { v } else { m })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_to_the_largest_reference_value() {
        // max |a - b| = 0.5 at the second entry, max |b| = 4.
        assert_eq!(max_abs_diff(&[1.0, -3.5, 2.0], &[1.0, -4.0, 2.25]), 0.5);
        assert_eq!(max_rel_diff(&[1.0, -3.5, 2.0], &[1.0, -4.0, 2.25]), 0.125);
    }

    #[test]
    fn a_nan_on_either_side_is_nan() {
        assert!(max_rel_diff(&[f32::NAN, 1.0], &[1.0, 1.0]).is_nan());
        // After a larger finite difference, where `f32::max` would keep that one.
        assert!(max_rel_diff(&[3.0, f32::NAN], &[1.0, 1.0]).is_nan());
        assert!(max_rel_diff(&[1.0, 1.0], &[1.0, f32::NAN]).is_nan());
        assert!(max_abs_diff(&[1.0, 1.0], &[1.0, f32::NAN]).is_nan());
    }
}
