//! The reference implementations of [`SaeBackend`](super::SaeBackend)'s operations, on any
//! backend: the host's selection for the top-k, dense products for the rest (`[tokens, k]`
//! entries scattered into `[tokens, latents]` matrices). They are the trait's default methods,
//! what the kernels are tested against, and the baseline of `cargo xtask bench sae-kernels`.

use burn::tensor::backend::Backend;
use burn::tensor::ops::{FloatTensor, IntTensor};
use burn::tensor::{IndexingUpdateOp, Int, Tensor, TensorData};

use super::{float, int};
use crate::host::to_host;
use crate::select;

/// [`SaeBackend::top_k_rows`](super::SaeBackend::top_k_rows): the values read back and
/// selected on the host.
pub fn top_k_rows<B: Backend>(values: FloatTensor<B>, k: usize) -> IntTensor<B> {
    let values = float::<B, 2>(values);
    let ([rows, cols], device) = (values.dims(), values.device());
    let selection = select::top_k_among(&to_host(values), cols, k, None);
    Tensor::<B, 2, Int>::from_data(TensorData::new(selection.indices, [rows, k]), &device)
        .into_primitive()
}

/// [`SaeBackend::sparse_decode`](super::SaeBackend::sparse_decode): the values scattered into
/// `[tokens, latents]`, times the weights.
pub fn sparse_decode<B: Backend>(
    values: FloatTensor<B>,
    indices: IntTensor<B>,
    weights: FloatTensor<B>,
) -> FloatTensor<B> {
    let weights = float::<B, 2>(weights);
    let dense = scatter_rows(float(values), int(indices), weights.dims()[0]);
    dense.matmul(weights).into_primitive().tensor()
}

/// [`SaeBackend::sparse_dot`](super::SaeBackend::sparse_dot): the dense `[tokens, latents]`
/// product, gathered at the indices.
pub fn sparse_dot<B: Backend>(
    dense: FloatTensor<B>,
    indices: IntTensor<B>,
    weights: FloatTensor<B>,
) -> FloatTensor<B> {
    let products = float::<B, 2>(dense).matmul(float::<B, 2>(weights).transpose());
    products.gather(1, int(indices)).into_primitive().tensor()
}

/// [`SaeBackend::sparse_transpose_matmul`](super::SaeBackend::sparse_transpose_matmul): the
/// coefficients scattered into `[tokens, latents]`, transposed, times the dense matrix (the
/// grouping is not needed).
pub fn sparse_transpose_matmul<B: Backend>(
    coefs: FloatTensor<B>,
    indices: IntTensor<B>,
    _order: IntTensor<B>,
    offsets: IntTensor<B>,
    dense: FloatTensor<B>,
) -> FloatTensor<B> {
    let [groups] = int::<B, 1>(offsets).dims();
    let coefs = scatter_rows::<B>(float(coefs), int(indices), groups - 1);
    coefs
        .transpose()
        .matmul(float(dense))
        .into_primitive()
        .tensor()
}

/// `[tokens, k]` values at their `indices`, zeros elsewhere: `[tokens, cols]`.
pub(crate) fn scatter_rows<B: Backend>(
    values: Tensor<B, 2>,
    indices: Tensor<B, 2, Int>,
    cols: usize,
) -> Tensor<B, 2> {
    let [rows, _] = values.dims();
    Tensor::zeros([rows, cols], &values.device()).scatter(1, indices, values, IndexingUpdateOp::Add)
}
