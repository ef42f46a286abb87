//! Layout conversions keep every output: PEFT -> sparsify -> SAELens -> PEFT and back from
//! sparsify, plus f16/bf16 storage, and a slice of rows read back as the whole tensor's rows.

mod common;

use std::path::Path;

use burn::tensor::Tensor;
use common::{B, fixture, max_rel_diff, reference, values};
use sae_core::{Checkpoint, HookKind, HookPoint, Layout, StorageDtype, formats};

/// Latent indices, latent values and reconstruction of one SAE on some input.
type Outputs = (Vec<f32>, Vec<f32>, Vec<f32>);

/// Latent indices, latent values and reconstruction of every SAE of a checkpoint on `x`, in the
/// order of their names.
fn outputs(checkpoint: &Checkpoint, x: &Tensor<B, 2>) -> Vec<Outputs> {
    let device = Default::default();
    checkpoint
        .saes
        .values()
        .map(|host| {
            let sae = host.to_sae::<B>(&device).unwrap();
            let out = sae.forward(x.clone(), None).unwrap();
            let idx: Vec<f32> = values(out.latents.indices.float());
            (idx, values(out.latents.values), values(out.reconstruction))
        })
        .collect()
}

/// The checkpoint in `from` written in `to` in `dir`, and read back; a checkpoint whose names
/// are not module paths is resolved against the model's hook points `points` first for PEFT
/// (as `sae convert --model` does).
fn convert(from: &Path, to: Layout, dir: &Path, points: &[HookPoint]) -> Checkpoint {
    let mut checkpoint = formats::load(from).unwrap();
    if to == Layout::Peft && !checkpoint.module_paths {
        checkpoint = checkpoint.on_model(points).unwrap();
    }
    formats::save(&checkpoint, to, dir, StorageDtype::F32).unwrap();
    let converted = formats::load(dir).unwrap();
    assert_eq!(converted.layout, to);
    converted
}

/// Converts the checkpoint in `start` through `layouts`, for a model of hook points `points`.
fn chain(start: &Path, x: Tensor<B, 2>, layouts: [Layout; 3], points: &[HookPoint]) {
    let original = formats::load(start).unwrap();
    let expected = outputs(&original, &x);
    let saes = |c: &Checkpoint| c.saes.values().cloned().collect::<Vec<_>>();
    let dirs: Vec<_> = layouts
        .iter()
        .map(|_| tempfile::tempdir().unwrap())
        .collect();
    let mut from = start.to_path_buf();
    for (layout, dir) in layouts.iter().zip(&dirs) {
        let converted = convert(&from, *layout, dir.path(), points);
        // Every conversion is lossless in f32: tensors and outputs are identical.
        assert_eq!(
            saes(&converted),
            saes(&original),
            "tensors changed going to {layout}"
        );
        assert_eq!(
            outputs(&converted, &x),
            expected,
            "outputs changed going to {layout}"
        );
        from = dir.path().to_path_buf();
    }
}

#[test]
fn peft_to_sparsify_to_saelens_to_peft() {
    let device = Default::default();
    let x: Tensor<B, 3> = reference("smez_dummy/reference.safetensors", "x").to_float(&device);
    chain(
        &fixture("smez_dummy/adapter"),
        x.reshape([32, 10]),
        [Layout::Sparsify, Layout::SaeLens, Layout::Peft],
        &[HookPoint::linear("linear", 10, 10, HookKind::Other)],
    );
}

#[test]
fn sparsify_to_saelens_to_peft_to_sparsify() {
    let device = Default::default();
    let x: Tensor<B, 2> = reference("sparsify_topk/reference.safetensors", "x").to_float(&device);
    chain(
        &fixture("sparsify_topk"),
        x,
        [Layout::SaeLens, Layout::Peft, Layout::Sparsify],
        &[HookPoint::new("model.layers.1", 64, HookKind::Residual)],
    );
}

#[test]
fn half_precision_storage_round_trips_within_its_precision() {
    let device = Default::default();
    let x: Tensor<B, 2> = reference("sparsify_topk/reference.safetensors", "x").to_float(&device);
    let original = formats::load(&fixture("sparsify_topk")).unwrap();
    let (_, _, expected) = outputs(&original, &x).remove(0);
    for (dtype, tolerance) in [(StorageDtype::F16, 2e-3), (StorageDtype::BF16, 2e-2)] {
        let dir = tempfile::tempdir().unwrap();
        formats::save(&original, Layout::SaeLens, dir.path(), dtype).unwrap();
        let desc = sae_core::TensorFile::open(dir.path().join("sae_weights.safetensors"))
            .unwrap()
            .describe();
        assert!(
            desc.iter().all(|(_, dt, _)| dt == &format!("{dtype:?}")),
            "{desc:?}"
        );
        let (_, _, got) = outputs(&formats::load(dir.path()).unwrap(), &x).remove(0);
        let err = max_rel_diff(&got, &expected);
        assert!(err < tolerance, "{dtype:?}: {err}");
    }
}

#[test]
fn saelens_without_input_centring_folds_b_dec_into_the_encoder_bias() {
    // Write an SAELens file by hand with apply_b_dec_to_input = false and check
    // x W_enc + b_enc (SAELens's math) against ours.
    let (d, l) = (3usize, 4usize);
    let w_enc_t: Vec<f32> = (0..d * l).map(|i| (i as f32 * 0.37).sin()).collect(); // [d, l]
    let b_enc = vec![0.1f32, -0.2, 0.3, 0.05];
    let b_dec = vec![0.5f32, -1.0, 2.0];
    let w_dec: Vec<f32> = (0..l * d).map(|i| (i as f32 * 0.11).cos()).collect();
    let dir = tempfile::tempdir().unwrap();
    let t = |shape: Vec<usize>, v: &Vec<f32>| sae_core::HostTensor::f32(shape, v.clone());
    sae_core::tensor_file::write_tensors(
        &dir.path().join("sae_weights.safetensors"),
        &[
            ("W_enc".into(), t(vec![d, l], &w_enc_t)),
            ("W_dec".into(), t(vec![l, d], &w_dec)),
            ("b_enc".into(), t(vec![l], &b_enc)),
            ("b_dec".into(), t(vec![d], &b_dec)),
        ],
        StorageDtype::F32,
        None,
    )
    .unwrap();
    let cfg = serde_json::json!({"architecture": "standard", "d_in": d, "d_sae": l, "apply_b_dec_to_input": false, "hook_name": "blocks.0.hook_resid_post"});
    std::fs::write(dir.path().join("cfg.json"), cfg.to_string()).unwrap();

    let checkpoint = formats::load(dir.path()).unwrap();
    let host = &checkpoint.saes["blocks.0.hook_resid_post"];
    let x = [0.3f32, -0.7, 1.1];
    let sae = host.to_sae::<B>(&Default::default()).unwrap();
    let input = Tensor::<B, 2>::from_data(
        burn::tensor::TensorData::new(x.to_vec(), [1, d]),
        &Default::default(),
    );
    let out = sae.forward(input, None).unwrap();
    // Reference: SAELens standard SAE, relu(x W_enc + b_enc) W_dec + b_dec, by hand.
    let acts: Vec<f32> = (0..l)
        .map(|i| ((0..d).map(|j| x[j] * w_enc_t[j * l + i]).sum::<f32>() + b_enc[i]).max(0.0))
        .collect();
    let expected: Vec<f32> = (0..d)
        .map(|j| (0..l).map(|i| acts[i] * w_dec[i * d + j]).sum::<f32>() + b_dec[j])
        .collect();
    assert!(max_rel_diff(&values(out.reconstruction), &expected) < 1e-6);
}

#[test]
fn rows_of_a_stored_tensor_are_those_rows_of_the_whole() {
    // A [5, 3] weight stored in bf16: rows 1..4 read alone, in bf16 (a view of the file) and
    // widened to f32 (converted), are rows 1..4 of the whole tensor read in the same dtype and
    // hold the values rounded to bf16; rows past the end are refused.
    let values: Vec<f32> = (0..15).map(|i| (i as f32 * 0.7).sin()).collect();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("w.safetensors");
    let tensor = sae_core::HostTensor::f32(vec![5, 3], values.clone());
    sae_core::tensor_file::write_tensors(&path, &[("w".into(), tensor)], StorageDtype::BF16, None)
        .unwrap();
    let file = sae_core::TensorFile::open(&path).unwrap();
    for dtype in [StorageDtype::BF16, StorageDtype::F32] {
        let whole = file.float_data("w", dtype).unwrap();
        let rows = file.float_rows("w", 1..4, dtype).unwrap();
        assert_eq!(rows.shape, burn::tensor::Shape::new([3, 3]));
        let n = dtype.size() * 3;
        assert_eq!(rows.as_bytes(), &whole.as_bytes()[n..4 * n], "{dtype:?}");
        let rounded: Vec<f32> = values[3..12]
            .iter()
            .map(|&v| half::bf16::from_f32(v).to_f32())
            .collect();
        let got = rows.convert_dtype(burn::tensor::DType::F32);
        assert_eq!(got.as_slice::<f32>().unwrap(), rounded, "{dtype:?}");
    }
    assert!(file.float_rows("w", 4..6, StorageDtype::F32).is_err());
}
