//! Tensors read back to the host: a float tensor as `f32` values, an integer tensor as `i64`.

use burn::tensor::backend::Backend;
use burn::tensor::{Int, Tensor};

/// A float tensor's values as `f32` on the host.
pub fn to_host<B: Backend, const D: usize>(t: Tensor<B, D>) -> Vec<f32> {
    t.into_data()
        .convert::<f32>()
        .into_vec::<f32>()
        .expect("converted to f32 just before")
}

/// An integer tensor's values as `i64` on the host.
pub fn int_to_host<B: Backend, const D: usize>(t: Tensor<B, D, Int>) -> Vec<i64> {
    t.into_data()
        .convert::<i64>()
        .into_vec::<i64>()
        .expect("converted to i64 just before")
}
