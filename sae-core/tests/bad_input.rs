//! Bad input gives a clear error, never a panic.

mod common;

#[allow(dead_code)]
#[path = "../examples/dummy_model.rs"]
mod dummy_model;

use std::path::Path;

use burn::tensor::{Tensor, TensorData};
use common::{B, fixture};
use sae_core::{
    AdapterConfig, HostTensor, SaeConfig, SaeError, SaeModel, StorageDtype, TargetModules,
    TensorFile, formats, inject,
};

/// A copy of the SAE Made Easy adapter fixture, to break.
fn adapter_copy() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for f in ["adapter_config.json", "adapter_model.safetensors"] {
        std::fs::copy(fixture("smez_dummy/adapter").join(f), dir.path().join(f)).unwrap();
    }
    dir
}

fn edit_config(dir: &Path, key: &str, value: serde_json::Value) {
    let path = dir.join("adapter_config.json");
    let mut cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    cfg[key] = value;
    std::fs::write(path, cfg.to_string()).unwrap();
}

fn load_err(dir: &Path) -> String {
    formats::load(dir).unwrap_err().to_string()
}

#[test]
fn a_missing_tensor_is_named() {
    let dir = adapter_copy();
    let path = dir.path().join("adapter_model.safetensors");
    let file = TensorFile::open(&path).unwrap();
    let kept: Vec<(String, HostTensor)> = file
        .names()
        .into_iter()
        .filter(|n| !n.ends_with("sae_W_dec"))
        .map(|n| (n.clone(), file.get(&n).unwrap()))
        .collect();
    sae_core::tensor_file::write_tensors(&path, &kept, StorageDtype::F32, None).unwrap();
    let err = load_err(dir.path());
    assert!(
        err.contains("no tensor \"base_model.model.linear.sae_W_dec\""),
        "{err}"
    );
}

#[test]
fn tensors_that_disagree_with_the_config_are_named() {
    let dir = adapter_copy();
    edit_config(dir.path(), "num_latents", serde_json::json!(7));
    let err = load_err(dir.path());
    assert!(
        err.contains("base_model.model.linear.sae_encoder.weight")
            && err.contains("[6, 10]")
            && err.contains("[7, 10]"),
        "{err}"
    );
}

#[test]
fn an_unknown_peft_type_is_rejected() {
    let dir = adapter_copy();
    edit_config(dir.path(), "peft_type", serde_json::json!("LORA"));
    let err = load_err(dir.path());
    assert!(err.contains("peft_type \"LORA\" is not supported"), "{err}");
}

#[test]
fn a_truncated_safetensors_file_is_an_error() {
    let dir = adapter_copy();
    let path = dir.path().join("adapter_model.safetensors");
    let bytes = std::fs::read(&path).unwrap();
    std::fs::write(&path, &bytes[..bytes.len() - 10]).unwrap();
    let err = load_err(dir.path());
    assert!(err.contains("cannot read safetensors file"), "{err}");
}

#[test]
fn a_folder_without_a_checkpoint_says_what_it_expected() {
    let dir = tempfile::tempdir().unwrap();
    assert!(matches!(
        formats::load(dir.path()),
        Err(SaeError::UnknownLayout(_))
    ));
}

#[test]
fn an_adapter_one_level_down_is_named() {
    // A training run keeps its SAEs in `sae/`, a checkpoint in `adapter/`.
    let run = tempfile::tempdir().unwrap();
    let adapter = adapter_copy();
    std::fs::rename(adapter.path(), run.path().join("sae")).unwrap();
    std::fs::create_dir(run.path().join("checkpoints")).unwrap();
    let err = load_err(run.path());
    let expected = format!(
        "{} holds no SAE checkpoint itself, but {} does: pass that folder",
        run.path().display(),
        run.path().join("sae").display()
    );
    assert_eq!(err, expected);
}

#[test]
fn an_impossible_configuration_is_refused_at_load() {
    let dir = adapter_copy();
    edit_config(dir.path(), "k", serde_json::json!(7));
    let err = load_err(dir.path());
    assert!(err.contains("k = 7 must be in 1..=6"), "{err}");
}

#[test]
fn unmatched_target_modules_list_the_hook_points() {
    let device = Default::default();
    let config = AdapterConfig {
        sae: SaeConfig::topk(1, 5),
        target_modules: TargetModules::Names(vec!["down_proj".into()]),
    };
    let err = inject::<B, _>(dummy_model::DummyModel::new(&device), config, &device).unwrap_err();
    assert_eq!(
        err.to_string(),
        "target_modules [\"down_proj\"] matched no hook point; available hook points: linear"
    );
}

#[test]
fn a_wrong_activation_width_names_both_widths() {
    let device = Default::default();
    let sae = formats::load(&fixture("smez_dummy/adapter")).unwrap().saes["linear"]
        .to_sae::<B>(&device)
        .unwrap();
    let x = Tensor::<B, 2>::zeros([4, 11], &device);
    let err = sae.encode(x).unwrap_err();
    assert_eq!(
        err.to_string(),
        "activation width 11 does not match the SAE's d_in 10"
    );
}

#[test]
fn nan_or_inf_input_is_an_error() {
    let device = Default::default();
    let sae = formats::load(&fixture("smez_dummy/adapter")).unwrap().saes["linear"]
        .to_sae::<B>(&device)
        .unwrap();
    for bad in [f32::NAN, f32::INFINITY] {
        let mut v = vec![0.5f32; 20];
        v[7] = bad;
        let x = Tensor::<B, 2>::from_data(TensorData::new(v, [2, 10]), &device);
        assert!(matches!(sae.forward(x, None), Err(SaeError::NonFinite(_))));
    }
    // A ReLU SAE too (the ReLU must not hide a NaN).
    let relu_sae = formats::load(&fixture("sparsify_topk")).unwrap().saes["layers.1"]
        .to_sae::<B>(&device)
        .unwrap();
    let mut v = vec![0.5f32; 64];
    v[3] = f32::NAN;
    let x = Tensor::<B, 2>::from_data(TensorData::new(v, [1, 64]), &device);
    assert!(matches!(relu_sae.encode(x), Err(SaeError::NonFinite(_))));
    // Through an injected model too: the error comes out of the forward pass.
    let model = SaeModel::<B, _>::from_pretrained(
        dummy_model::DummyModel::new(&device),
        &fixture("smez_dummy/adapter"),
        &device,
    )
    .unwrap();
    let x = Tensor::<B, 3>::full([1, 2, 10], f32::NAN, &device);
    assert!(matches!(model.forward(x), Err(SaeError::NonFinite(_))));
}

#[test]
fn an_invalid_config_is_rejected() {
    let device = Default::default();
    let err = sae_core::Sae::<B>::new(10, SaeConfig::topk(7, 5), &device).unwrap_err();
    assert!(err.to_string().contains("k = 7 must be in 1..=5"), "{err}");
}
