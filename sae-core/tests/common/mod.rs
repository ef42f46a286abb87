//! Helpers shared by the integration tests.
#![allow(dead_code)]

use std::path::PathBuf;

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

/// `max |a - b| / max |b|`: the relative error measure of the fixtures' README.
pub fn max_rel_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len(), "lengths differ");
    let scale = b
        .iter()
        .fold(0f32, |m, v| m.max(v.abs()))
        .max(f32::MIN_POSITIVE);
    a.iter().zip(b).fold(0f32, |m, (x, y)| m.max((x - y).abs())) / scale
}

/// A float tensor's values.
pub fn values<Bk: burn::tensor::backend::Backend, const D: usize>(
    t: burn::tensor::Tensor<Bk, D>,
) -> Vec<f32> {
    HostTensor::from_float(t).to_f32()
}
