//! Parity with transformers on the `qwen2_tiny` and `llama_tiny` fixtures: logits and every
//! recorded hook output within 1e-4 relative (`max |ours - ref| / max |ref|`).

use burn::tensor::backend::Backend;
use burn::tensor::{DType, Int, Tensor, TensorData};
use sae_core::{HookedModule, Hooks, TensorFile};
use sae_models::{DecoderLm, LmInput};

mod common;

use common::{B, Record, assert_matches_reference, fixture, ints, max_rel_diff, values};

fn check<Bk: Backend>(model_dir: &str) {
    let device = Default::default();
    let model = DecoderLm::<Bk>::load(&fixture(model_dir), &device).unwrap();
    let reference =
        TensorFile::open(fixture(&format!("{model_dir}/reference.safetensors"))).unwrap();
    let ids = ints(&reference, "inputs.input_ids");
    let mut record = Record::default();
    let out = model.forward_hooked(LmInput::from_ids(&ids, &device), &mut record);

    let logits = values(out.logits.unwrap());
    let listed = model.hook_points();
    assert_matches_reference(model_dir, &reference, logits, &record, 6, listed);
}

#[test]
fn qwen2_matches_transformers() {
    check::<B>("qwen2_tiny");
}

#[test]
fn llama_matches_transformers() {
    check::<B>("llama_tiny");
}

/// How far the logits of `qwen2_tiny`'s prompt after 3 positions of left padding, computed in
/// `dtype`, are from transformers' logits of the prompt alone.
fn left_padded_error<Bk: Backend>(dtype: DType) -> f32 {
    let device = Default::default();
    let model = DecoderLm::<Bk>::load_as(&fixture("qwen2_tiny"), dtype, &device).unwrap();
    let reference = TensorFile::open(fixture("qwen2_tiny/reference.safetensors")).unwrap();
    let ids = ints(&reference, "inputs.input_ids");
    let t = ids.len();
    let mut padded = vec![1024i64; 3];
    padded.extend(&ids);
    let mut mask = vec![0i64; 3];
    mask.extend(vec![1i64; t]);
    let input = LmInput {
        input_ids: Tensor::<Bk, 2, Int>::from_data(TensorData::new(padded, [1, t + 3]), &device),
        attention_mask: Some(Tensor::from_data(
            TensorData::new(mask, [1, t + 3]),
            &device,
        )),
    };
    let logits = model
        .forward_plain(input)
        .logits
        .unwrap()
        .slice([0..1, 3..t + 3, 0..1034]);
    let expected = reference.get("logits").unwrap().to_f32();
    max_rel_diff(&values(logits), &expected)
}

#[test]
fn left_padding_gives_the_same_logits_as_no_padding() {
    let err = left_padded_error::<B>(DType::F32);
    assert!(err < 1e-4, "logits differ by {err}");
}

// The padding queries see no position. Their mask rows must stay finite in the compute dtype
// (f32::MIN rounds to -inf in both), or their softmax is NaN and the next layer's values carry
// it to every token: all logits were NaN before the mask took the dtype's lowest value.
#[test]
fn left_padding_in_reduced_precision_stays_close_to_float32() {
    // The bounds of `reduced_precision_compute_stays_close_to_float32`.
    for (dtype, bound) in [(DType::F16, 4e-3), (DType::BF16, 3e-2)] {
        let err = left_padded_error::<B>(dtype);
        assert!(err < bound, "{dtype:?}: logits differ by {err}");
    }
}

// The same model code on a CubeCL backend (in CI Mesa's software Vulkan device), where the
// masks hold the lowest finite value rather than -inf.
#[cfg(any(feature = "wgpu", feature = "cuda"))]
#[test]
fn qwen2_and_left_padding_match_transformers_on_the_gpu_backend() {
    check::<common::Gpu>("qwen2_tiny");
    let err = left_padded_error::<common::Gpu>(DType::F32);
    assert!(err < 1e-4, "logits differ by {err}");
}

#[test]
fn the_pass_stops_after_the_last_needed_hook() {
    struct StopAt(Vec<String>);
    impl Hooks<B> for StopAt {
        fn call(&mut self, path: &str, x: Tensor<B, 3>) -> Tensor<B, 3> {
            self.0.push(path.to_string());
            x
        }
        fn stop_after(&self) -> Option<&str> {
            Some("model.layers.0.mlp.down_proj")
        }
    }
    let device = Default::default();
    let model = DecoderLm::<B>::load(&fixture("llama_tiny"), &device).unwrap();
    let mut hooks = StopAt(Vec::new());
    let out = model.forward_hooked(LmInput::from_ids(&[1, 2, 3], &device), &mut hooks);
    assert!(out.logits.is_none());
    assert_eq!(hooks.0.last().unwrap(), "model.layers.0.mlp.down_proj");
    assert!(!hooks.0.iter().any(|p| p.starts_with("model.layers.1")));
}

/// Logits of qwen2_tiny computing in `dtype` with SAE Made Easy's adapter injected, and their
/// relative error against SAE Made Easy's own (f32) logits.
fn logits_with_sae(dtype: burn::tensor::DType) -> (burn::tensor::DType, f32) {
    let device = Default::default();
    let model = DecoderLm::<B>::load_as(&fixture("qwen2_tiny"), dtype, &device).unwrap();
    let sae_model =
        sae_core::SaeModel::from_pretrained(model, &fixture("smez_qwen2/adapter"), &device)
            .unwrap();
    let reference = TensorFile::open(fixture("smez_qwen2/reference.safetensors")).unwrap();
    let ids = ints(&reference, "inputs.input_ids");
    let forward = sae_model.forward(LmInput::from_ids(&ids, &device)).unwrap();
    let logits = forward.output.logits.unwrap();
    let expected = reference.get("logits_with_sae").unwrap().to_f32();
    (logits.dtype(), max_rel_diff(&values(logits), &expected))
}

#[test]
fn sae_made_easy_adapter_on_qwen2_matches_its_logits() {
    let (_, err) = logits_with_sae(DType::F32);
    assert!(err < 1e-4, "logits with the SAE differ by {err}");
}

#[test]
fn reduced_precision_compute_stays_close_to_float32() {
    let device = Default::default();
    let reference = TensorFile::open(fixture("qwen2_tiny/reference.safetensors")).unwrap();
    let ids = ints(&reference, "inputs.input_ids");
    let expected = reference.get("logits").unwrap().to_f32();
    // Bounds: four units of each format's epsilon (f16 2^-10, bf16 2^-7) relative to max |logit|
    // (measured: 0.7 units for both).
    for (dtype, bound) in [(DType::F16, 4e-3), (DType::BF16, 3e-2)] {
        let model = DecoderLm::<B>::load_as(&fixture("qwen2_tiny"), dtype, &device).unwrap();
        assert_eq!(model.dtype(), dtype);
        let logits = model
            .forward_plain(LmInput::from_ids(&ids, &device))
            .logits
            .unwrap();
        assert_eq!(logits.dtype(), dtype);
        let err = max_rel_diff(&values(logits), &expected);
        assert!(err < bound, "{dtype:?}: logits differ by {err}");
    }
}

#[test]
fn an_f32_sae_runs_inside_a_bf16_model() {
    let (dtype, err) = logits_with_sae(DType::BF16);
    assert_eq!(dtype, DType::BF16);
    // The bf16 bound of the test above: four units of bf16's epsilon.
    assert!(err < 3e-2, "logits with the SAE differ by {err}");
}
