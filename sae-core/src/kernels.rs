//! The SAE's sparse kernels as a Burn backend extension. [`SaeBackend`] adds to a backend the
//! operations a TopK SAE needs beyond dense tensor algebra, so that training and inference
//! build no dense `[tokens, latents]` matrix besides the encoder's pre-activations:
//!
//! - [`top_k_rows`]: each row's `k` largest entries (the selection);
//! - [`sparse_decode`]: `[tokens, k]` latents times their decoder rows, `sum_j v_j W[i_j]`;
//! - [`sparse_dot`]: a dense `[tokens, m]` matrix's dot product with each selected row of a
//!   `[latents, m]` matrix (the gradient reaching the selected activations);
//! - [`sparse_transpose_matmul`]: `A^T D` for a sparse `[tokens, latents]` `A` given as its
//!   `[tokens, k]` entries (the weight gradients), summed latent by latent in [`LatentGroups`]'
//!   fixed order, so results do not depend on thread scheduling.
//!
//! The CubeCL backends (wgpu, cuda, with or without fusion) run hand-written kernels
//! ([`cube`]); Flex and NdArray use the trait's default methods, the [`reference`]
//! implementations (dense products, or the host's selection), which define the results the
//! kernels are tested and benchmarked against. The operations are not differentiable: under
//! autodiff their results are constants, as the SAE's hand-derived gradients
//! ([`device_grad`](crate::sae::device_grad)) need.

mod check;
#[cfg(feature = "cubecl-kernels")]
pub mod cube;
#[cfg(feature = "cubecl-kernels")]
mod fusion;
pub mod reference;

use burn::backend::Autodiff;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::ops::{FloatTensor, IntTensor};
use burn::tensor::{Int, Tensor, TensorData, TensorPrimitive};

use crate::host::int_to_host;

pub use check::check_kernels;

/// A Burn backend with the SAE's sparse kernels. Implemented for Flex and NdArray (with the
/// features of the same names), every CubeCL backend, and their autodiff and fusion wrappers.
/// The default methods are the reference implementations.
pub trait SaeBackend: Backend {
    /// The SAE's encoder product, selection and gradients run on the host with this crate's
    /// GEMM, reading the tensors' host memory (Flex, NdArray). Never under autodiff, whose graph
    /// needs Burn's own operations.
    const HOST_GEMM: bool = false;

    /// TopK and BatchTopK select on the device with the [`top_k_rows`] kernel, so the dense
    /// pre-activations stay there (the CubeCL backends, possibly under fusion or autodiff).
    const DEVICE_SELECT: bool = false;

    /// Each row's `k` largest columns of `[rows, cols]` values (`k <= cols`), `[rows, k]`:
    /// larger first, ties to the lower column, as [`select::top_k`](crate::select::top_k).
    fn top_k_rows(values: FloatTensor<Self>, k: usize) -> IntTensor<Self> {
        reference::top_k_rows::<Self>(values, k)
    }

    /// `out[t] = sum_j values[t, j] weights[indices[t, j]]`: `[tokens, k]` values and indices,
    /// `[latents, m]` weights, `[tokens, m]` out.
    fn sparse_decode(
        values: FloatTensor<Self>,
        indices: IntTensor<Self>,
        weights: FloatTensor<Self>,
    ) -> FloatTensor<Self> {
        reference::sparse_decode::<Self>(values, indices, weights)
    }

    /// `out[t, j] = dense[t] . weights[indices[t, j]]`: `[tokens, m]` dense, `[tokens, k]`
    /// indices, `[latents, m]` weights, `[tokens, k]` out.
    fn sparse_dot(
        dense: FloatTensor<Self>,
        indices: IntTensor<Self>,
        weights: FloatTensor<Self>,
    ) -> FloatTensor<Self> {
        reference::sparse_dot::<Self>(dense, indices, weights)
    }

    /// `out[l] = sum over the slots (t, j) with indices[t, j] = l of coefs[t, j] dense[t]`:
    /// `[tokens, k]` coefficients and indices, `[tokens, m]` dense, `[latents, m]` out, with
    /// `order` and `offsets` the slots grouped by latent ([`LatentGroups`]).
    fn sparse_transpose_matmul(
        coefs: FloatTensor<Self>,
        indices: IntTensor<Self>,
        order: IntTensor<Self>,
        offsets: IntTensor<Self>,
        dense: FloatTensor<Self>,
    ) -> FloatTensor<Self> {
        reference::sparse_transpose_matmul::<Self>(coefs, indices, order, offsets, dense)
    }
}

/// Each row's `k` largest columns: see [`SaeBackend::top_k_rows`].
pub fn top_k_rows<B: SaeBackend>(values: Tensor<B, 2>, k: usize) -> Tensor<B, 2, Int> {
    Tensor::from_primitive(B::top_k_rows(values.into_primitive().tensor(), k))
}

/// `[tokens, k]` latents decoded with `[latents, m]` weights: see [`SaeBackend::sparse_decode`].
pub fn sparse_decode<B: SaeBackend>(
    values: Tensor<B, 2>,
    indices: Tensor<B, 2, Int>,
    weights: Tensor<B, 2>,
) -> Tensor<B, 2> {
    let (values, weights) = (
        values.into_primitive().tensor(),
        weights.into_primitive().tensor(),
    );
    float(B::sparse_decode(values, indices.into_primitive(), weights))
}

/// Dot products with the selected weight rows: see [`SaeBackend::sparse_dot`].
pub fn sparse_dot<B: SaeBackend>(
    dense: Tensor<B, 2>,
    indices: Tensor<B, 2, Int>,
    weights: Tensor<B, 2>,
) -> Tensor<B, 2> {
    let (dense, weights) = (
        dense.into_primitive().tensor(),
        weights.into_primitive().tensor(),
    );
    float(B::sparse_dot(dense, indices.into_primitive(), weights))
}

/// `A^T dense` for the sparse `A` of `[tokens, k]` coefficients at `groups`' indices:
/// `[latents, m]`. See [`SaeBackend::sparse_transpose_matmul`].
pub fn sparse_transpose_matmul<B: SaeBackend>(
    coefs: Tensor<B, 2>,
    groups: &LatentGroups<B>,
    dense: Tensor<B, 2>,
) -> Tensor<B, 2> {
    float(B::sparse_transpose_matmul(
        coefs.into_primitive().tensor(),
        groups.indices.clone().into_primitive(),
        groups.order.clone().into_primitive(),
        groups.offsets.clone().into_primitive(),
        dense.into_primitive().tensor(),
    ))
}

/// A selection's slots grouped by latent, for [`sparse_transpose_matmul`]: the slots of latent
/// `l` are `order[offsets[l]..offsets[l + 1]]` (flat `t * k + j` positions, ascending).
#[derive(Debug, Clone)]
pub struct LatentGroups<B: Backend> {
    /// The selected latents, `[tokens, k]`.
    pub indices: Tensor<B, 2, Int>,
    /// Slot positions sorted by latent, then by position, `[tokens * k]`.
    pub order: Tensor<B, 1, Int>,
    /// Where each latent's slots start in `order`, `[latents + 1]`.
    pub offsets: Tensor<B, 1, Int>,
}

impl<B: Backend> LatentGroups<B> {
    /// Groups the selection `indices` over `latents` latents from its values on the host,
    /// `host` (a counting sort on the host, where selections are read back anyway).
    pub fn new(indices: Tensor<B, 2, Int>, host: &[i64], latents: usize) -> Self {
        let mut offsets = vec![0i64; latents + 1];
        for &l in host {
            offsets[l as usize + 1] += 1;
        }
        for l in 0..latents {
            offsets[l + 1] += offsets[l];
        }
        let mut next = offsets.clone();
        let mut order = vec![0i64; host.len()];
        for (position, &l) in host.iter().enumerate() {
            order[next[l as usize] as usize] = position as i64;
            next[l as usize] += 1;
        }
        let device = indices.device();
        let data = |values: Vec<i64>, len: usize| TensorData::new(values, [len]);
        Self {
            order: Tensor::from_data(data(order, host.len()), &device),
            offsets: Tensor::from_data(data(offsets, latents + 1), &device),
            indices,
        }
    }

    /// The groups of a selection on the device (its indices read back once).
    pub fn of_device(indices: Tensor<B, 2, Int>, latents: usize) -> Self {
        let host = int_to_host(indices.clone());
        Self::new(indices, &host, latents)
    }

    /// The groups of a selection on the host, `[rows, k]` `host` indices put on `device`.
    pub fn of_host(host: &[i64], k: usize, latents: usize, device: &B::Device) -> Self {
        let shape = [host.len() / k.max(1), k];
        let indices = Tensor::from_data(TensorData::new(host.to_vec(), shape), device);
        Self::new(indices, host, latents)
    }
}

/// A float primitive as a tensor.
pub(crate) fn float<B: Backend, const D: usize>(primitive: FloatTensor<B>) -> Tensor<B, D> {
    Tensor::from_primitive(TensorPrimitive::Float(primitive))
}

/// An int primitive as a tensor.
pub(crate) fn int<B: Backend, const D: usize>(primitive: IntTensor<B>) -> Tensor<B, D, Int> {
    Tensor::from_primitive(primitive)
}

#[cfg(feature = "flex")]
impl SaeBackend for burn::backend::Flex {
    const HOST_GEMM: bool = true;
}

#[cfg(feature = "ndarray")]
impl SaeBackend for burn::backend::NdArray {
    const HOST_GEMM: bool = true;
}

/// Under autodiff the kernels run on the inner backend and their results are constants.
impl<B: SaeBackend, C: CheckpointStrategy> SaeBackend for Autodiff<B, C> {
    const DEVICE_SELECT: bool = B::DEVICE_SELECT;

    fn top_k_rows(values: FloatTensor<Self>, k: usize) -> IntTensor<Self> {
        B::top_k_rows(Self::inner(values), k)
    }

    fn sparse_decode(
        values: FloatTensor<Self>,
        indices: IntTensor<Self>,
        weights: FloatTensor<Self>,
    ) -> FloatTensor<Self> {
        let out = B::sparse_decode(Self::inner(values), indices, Self::inner(weights));
        Self::from_inner(out)
    }

    fn sparse_dot(
        dense: FloatTensor<Self>,
        indices: IntTensor<Self>,
        weights: FloatTensor<Self>,
    ) -> FloatTensor<Self> {
        Self::from_inner(B::sparse_dot(
            Self::inner(dense),
            indices,
            Self::inner(weights),
        ))
    }

    fn sparse_transpose_matmul(
        coefs: FloatTensor<Self>,
        indices: IntTensor<Self>,
        order: IntTensor<Self>,
        offsets: IntTensor<Self>,
        dense: FloatTensor<Self>,
    ) -> FloatTensor<Self> {
        let (coefs, dense) = (Self::inner(coefs), Self::inner(dense));
        Self::from_inner(B::sparse_transpose_matmul(
            coefs, indices, order, offsets, dense,
        ))
    }
}

/// An autodiff backend with the SAE's kernels on it and on its inner backend: what training
/// needs (`Autodiff<B>` for any [`SaeBackend`] `B`).
pub trait SaeAutodiffBackend: AutodiffBackend<InnerBackend: SaeBackend> + SaeBackend {}

impl<B> SaeAutodiffBackend for B
where
    B: AutodiffBackend + SaeBackend,
    B::InnerBackend: SaeBackend,
{
}
