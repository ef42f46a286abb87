//! Helpers shared by the sae-models tests.
#![allow(dead_code, unused_imports)]

use std::path::PathBuf;

use burn::tensor::Tensor;
use burn::tensor::backend::Backend;
pub use sae_core::parity::max_rel_diff;
use sae_core::{HostData, TensorFile};

/// The CPU backend the tests run on.
pub type B = burn::backend::Flex;

/// The GPU backend of the `wgpu` and `cuda` test builds (cuda where both are on): the parity
/// tests run the same fixtures on it.
#[cfg(feature = "cuda")]
pub type Gpu = burn::backend::Cuda;
#[cfg(all(feature = "wgpu", not(feature = "cuda")))]
pub type Gpu = burn::backend::Wgpu;

/// A file or folder under `tests/fixtures`.
pub fn fixture(rel: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(rel)
}

/// A float tensor's values as f32 (whatever its dtype).
pub fn values<Bk: Backend, const D: usize>(t: Tensor<Bk, D>) -> Vec<f32> {
    t.into_data().convert::<f32>().into_vec().unwrap()
}

/// The int64 tensor `name` of a safetensors file.
pub fn ints(file: &TensorFile, name: &str) -> Vec<i64> {
    match file.get(name).unwrap().data {
        HostData::I64(v) => v,
        other => panic!("{name} should be int64: {other:?}"),
    }
}

/// Records the output of every hook point, passing it on unchanged.
#[derive(Default)]
pub struct Record(pub std::collections::BTreeMap<String, Vec<f32>>);

impl<Bk: Backend> sae_core::Hooks<Bk> for Record {
    fn call(&mut self, path: &str, x: Tensor<Bk, 3>) -> Tensor<Bk, 3> {
        self.0.insert(path.to_string(), values(x.clone()));
        x
    }
}

/// Checks a hooked forward pass against a fixture's `reference.safetensors`: the `logits` and
/// each of its `hooks` recorded `hook.<path>` outputs within 1e-4 relative, and exactly the
/// `listed` hook points called (`what` names the case in failures).
pub fn assert_matches_reference(
    what: &str,
    reference: &TensorFile,
    logits: Vec<f32>,
    record: &Record,
    hooks: usize,
    listed: Vec<sae_core::HookPoint>,
) {
    let err = max_rel_diff(&logits, &reference.get("logits").unwrap().to_f32());
    assert!(err < 1e-4, "{what}: logits differ by {err}");
    let names: Vec<String> = reference
        .names()
        .into_iter()
        .filter(|n| n.starts_with("hook."))
        .collect();
    for name in &names {
        let path = &name["hook.".len()..];
        let ours = record
            .0
            .get(path)
            .unwrap_or_else(|| panic!("{what}: no hook point {path}"));
        let err = max_rel_diff(ours, &reference.get(name).unwrap().to_f32());
        assert!(err < 1e-4, "{what}: {path} differs by {err}");
    }
    assert_eq!(names.len(), hooks, "{what}: the fixture's hook outputs");
    let listed: std::collections::BTreeSet<String> = listed.into_iter().map(|p| p.path).collect();
    let called: std::collections::BTreeSet<String> = record.0.keys().cloned().collect();
    assert_eq!(called, listed, "{what}: every listed hook point is called");
}

/// A Qwen2-VL fixture's processor inputs (`inputs.input_ids`, `inputs.pixel_values`,
/// `inputs.image_grid_thw` of its reference file) as one unpadded forward-pass input.
pub fn qwen2_vl_input<Bk: Backend>(
    reference: &TensorFile,
    device: &Bk::Device,
) -> sae_models::qwen2_vl::VlInput<Bk> {
    use burn::tensor::{Int, TensorData};
    let ids = ints(reference, "inputs.input_ids");
    let pixels = reference.get("inputs.pixel_values").unwrap();
    let grid: Vec<usize> = ints(reference, "inputs.image_grid_thw")
        .into_iter()
        .map(|v| v as usize)
        .collect();
    sae_models::qwen2_vl::VlInput {
        input_ids: Tensor::<Bk, 2, Int>::from_data(
            TensorData::new(ids.clone(), [1, ids.len()]),
            device,
        ),
        attention_mask: None,
        images: Some(sae_models::qwen2_vl::ImageInput {
            pixel_values: Tensor::from_data(
                TensorData::new(pixels.to_f32(), [pixels.shape[0], pixels.shape[1]]),
                device,
            ),
            grid_thw: grid.chunks(3).map(|g| [g[0], g[1], g[2]]).collect(),
        }),
    }
}
