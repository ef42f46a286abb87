//! A self-check of a backend's kernels: each runs on a small fixed problem and is compared with
//! the same math in plain loops on the host. A GPU or driver that miscompiles a kernel (on wgpu
//! a shader that fails to compile leaves its output unwritten, with no error) fails the check,
//! instead of training or encoding on garbage.

use burn::tensor::{Int, Tensor, TensorData};

use super::{LatentGroups, SaeBackend, sparse_decode, sparse_dot, sparse_transpose_matmul};
use crate::error::{Result, SaeError};
use crate::host::{int_to_host, to_host};
use crate::select::top_k_among;

/// Relative tolerance of the float kernels against the host (sums in another order).
const TOLERANCE: f32 = 1e-5;

/// Runs every kernel of `B` on `device` against the host; the first that disagrees is a
/// [`SaeError::KernelMismatch`]. Costs the kernels' compilation: meant for a program's start.
pub fn check_kernels<B: SaeBackend>(device: &B::Device) -> Result<()> {
    // More columns than a top-k cube has units, and ties (ReLU'd zeros, repeated values).
    let (rows, cols, k, m) = (3, 70, 5, 4);
    let pattern = |n: usize, step: usize| -> Vec<f32> {
        (0..n)
            .map(|i| ((i * step % 23) as f32 - 8.0).max(0.0) / 8.0)
            .collect()
    };
    let (values, weights, dense) = (
        pattern(rows * cols, 37),
        pattern(cols * m, 11),
        pattern(rows * m, 5),
    );
    let tensor = |values: &[f32], shape: [usize; 2]| {
        Tensor::<B, 2>::from_data(TensorData::new(values.to_vec(), shape), device)
    };

    let picked = super::top_k_rows(tensor(&values, [rows, cols]), k);
    let indices = top_k_among(&values, cols, k, None).indices;
    if int_to_host(picked) != indices {
        return Err(SaeError::KernelMismatch("top_k_rows"));
    }

    // The host's math, slot by slot: slot `s` is token `s / k`'s pick of latent `indices[s]`.
    let slot = |s: usize| (s / k, indices[s] as usize);
    let selected: Vec<f32> = (0..rows * k)
        .map(|s| {
            let (t, l) = slot(s);
            values[t * cols + l]
        })
        .collect();
    let (mut decoded, mut dots, mut grouped) = (
        vec![0.0; rows * m],
        vec![0.0; rows * k],
        vec![0.0; cols * m],
    );
    for s in 0..rows * k {
        let (t, l) = slot(s);
        for c in 0..m {
            decoded[t * m + c] += selected[s] * weights[l * m + c];
            dots[s] += dense[t * m + c] * weights[l * m + c];
            grouped[l * m + c] += selected[s] * dense[t * m + c];
        }
    }

    let on_device =
        Tensor::<B, 2, Int>::from_data(TensorData::new(indices.clone(), [rows, k]), device);
    let (selected, weights, dense) = (
        tensor(&selected, [rows, k]),
        tensor(&weights, [cols, m]),
        tensor(&dense, [rows, m]),
    );
    let groups = LatentGroups::of_host(&indices, k, cols, device);
    agree(
        "sparse_decode",
        sparse_decode(selected.clone(), on_device.clone(), weights.clone()),
        &decoded,
    )?;
    agree(
        "sparse_dot",
        sparse_dot(dense.clone(), on_device, weights),
        &dots,
    )?;
    agree(
        "sparse_transpose_matmul",
        sparse_transpose_matmul(selected, &groups, dense),
        &grouped,
    )
}

/// A kernel's output against the host's values.
fn agree<B: SaeBackend>(kernel: &'static str, got: Tensor<B, 2>, expected: &[f32]) -> Result<()> {
    if close(&to_host(got), expected) {
        Ok(())
    } else {
        Err(SaeError::KernelMismatch(kernel))
    }
}

/// Same length, and each value within [`TOLERANCE`] of the expected one, relative to its size
/// (absolute below 1).
fn close(got: &[f32], expected: &[f32]) -> bool {
    got.len() == expected.len()
        && got
            .iter()
            .zip(expected)
            .all(|(g, e)| (g - e).abs() <= TOLERANCE * e.abs().max(1.0))
}

#[cfg(test)]
mod tests {
    use super::close;

    #[test]
    fn close_allows_rounding_and_rejects_a_wrong_or_missing_value() {
        assert!(close(&[1000.0, 0.5], &[1000.005, 0.500_004]));
        assert!(!close(&[1000.0, 0.5], &[1000.02, 0.5]));
        assert!(!close(&[0.0, 0.5], &[0.0, 0.500_02]));
        assert!(!close(&[f32::NAN], &[1.0]));
        assert!(!close(&[1.0], &[1.0, 2.0]));
    }
}
