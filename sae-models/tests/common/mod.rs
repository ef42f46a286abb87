//! Helpers shared by the sae-models tests.
#![allow(dead_code)]

use std::path::PathBuf;

use burn::tensor::Tensor;
use sae_core::{HostData, TensorFile};

/// The CPU backend the tests run on.
pub type B = burn::backend::Flex;

/// A file or folder under `tests/fixtures`.
pub fn fixture(rel: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(rel)
}

/// `max |a - b| / max |b|`: the relative error measure of the fixtures' README.
pub fn max_rel_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    let scale = b.iter().fold(0f32, |m, v| m.max(v.abs()));
    a.iter().zip(b).fold(0f32, |m, (x, y)| m.max((x - y).abs())) / scale
}

/// A float tensor's values as f32 (whatever its dtype).
pub fn values<const D: usize>(t: Tensor<B, D>) -> Vec<f32> {
    t.into_data().convert::<f32>().into_vec().unwrap()
}

/// The int64 tensor `name` of a safetensors file.
pub fn ints(file: &TensorFile, name: &str) -> Vec<i64> {
    match file.get(name).unwrap().data {
        HostData::I64(v) => v,
        other => panic!("{name} should be int64: {other:?}"),
    }
}
