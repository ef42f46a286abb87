//! Helpers shared by the integration tests.
#![allow(dead_code, unused_imports)]

use std::path::PathBuf;

pub use sae_core::parity::max_rel_diff;
use sae_core::{HostTensor, TensorFile};

/// The CPU backend the tests run on.
pub type B = burn::backend::Flex;
/// The same with autodiff.
pub type AB = burn::backend::Autodiff<B>;

/// A file or folder under `tests/fixtures`.
pub fn fixture(rel: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(rel)
}

/// Tensor `name` of a fixture safetensors file.
pub fn reference(file: &str, name: &str) -> HostTensor {
    TensorFile::open(fixture(file)).unwrap().get(name).unwrap()
}

/// A float tensor's values.
pub fn values<Bk: burn::tensor::backend::Backend, const D: usize>(
    t: burn::tensor::Tensor<Bk, D>,
) -> Vec<f32> {
    HostTensor::from_float(t).to_f32()
}
