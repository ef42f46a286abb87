//! SAE Made Easy's DummyModel: loading its PEFT adapter, eval-mode parity, save/load, the seed
//! example.

mod common;

#[allow(dead_code)]
#[path = "../examples/dummy_model.rs"]
mod dummy_model;

use burn::tensor::{Distribution, Tensor};
use common::{B, fixture, max_rel_diff, reference, values};
use dummy_model::DummyModel;
use sae_core::{
    AdapterConfig, HookedModule, Layout, SaeConfig, SaeModel, TargetModules, formats, inject,
};

fn reference_model(device: &burn::tensor::Device<B>) -> DummyModel<B> {
    let file = "smez_dummy/base_model.safetensors";
    DummyModel::from_torch(
        reference(file, "linear.weight").to_float(device),
        reference(file, "linear.bias").to_float(device),
    )
}

/// The DummyModel with SAE Made Easy's saved adapter loaded into it.
fn reference_sae_model(device: &burn::tensor::Device<B>) -> SaeModel<B, DummyModel<B>> {
    SaeModel::from_pretrained(
        reference_model(device),
        &fixture("smez_dummy/adapter"),
        device,
    )
    .unwrap()
}

#[test]
fn eval_output_matches_sae_made_easy() {
    let device = Default::default();
    let model = reference_model(&device);
    let x: Tensor<B, 3> = reference("smez_dummy/reference.safetensors", "x").to_float(&device);
    let base = reference("smez_dummy/reference.safetensors", "base_output").to_f32();
    assert!(max_rel_diff(&values(model.forward_plain(x.clone())), &base) < 1e-5);

    let sae_model =
        SaeModel::from_pretrained(model, &fixture("smez_dummy/adapter"), &device).unwrap();
    let adapter = &sae_model.adapters()["default"];
    assert_eq!(
        adapter.config.target_modules,
        TargetModules::Names(vec!["linear".into()])
    );
    let sae = &adapter.saes["linear"];
    assert_eq!((sae.config.k, sae.num_latents(), sae.d_in()), (2, 6, 10));

    let out = sae_model.forward(x).unwrap().output;
    let expected = reference("smez_dummy/reference.safetensors", "sae_eval_output").to_f32();
    assert!(max_rel_diff(&values(out), &expected) < 1e-5);
}

#[test]
fn what_we_save_loads_back_bit_exactly() {
    let device = Default::default();
    let sae_model = reference_sae_model(&device);
    let dir = tempfile::tempdir().unwrap();
    sae_model.save_pretrained(dir.path()).unwrap();
    assert_eq!(formats::detect(dir.path()).unwrap(), Layout::Peft);
    let original = formats::load(&fixture("smez_dummy/adapter")).unwrap();
    let saved = formats::load(dir.path()).unwrap();
    assert_eq!(saved.saes, original.saes);
    assert_eq!(saved.target_modules, original.target_modules);
    // The same tensor names and shapes as SAE Made Easy wrote, and the keys its config has.
    let ours = sae_core::TensorFile::open(dir.path().join("adapter_model.safetensors")).unwrap();
    let theirs =
        sae_core::TensorFile::open(fixture("smez_dummy/adapter/adapter_model.safetensors"))
            .unwrap();
    assert_eq!(ours.describe(), theirs.describe());
    let cfg: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(dir.path().join("adapter_config.json")).unwrap(),
    )
    .unwrap();
    let reference: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(fixture("smez_dummy/adapter/adapter_config.json")).unwrap(),
    )
    .unwrap();
    for key in [
        "peft_type",
        "k",
        "num_latents",
        "target_modules",
        "dead_tokens_threshold",
        "inference_mode",
    ] {
        assert_eq!(cfg[key], reference[key], "adapter_config.json key {key}");
    }
    assert!(
        cfg.get("sae_config").is_none(),
        "a plain SAE Made Easy SAE needs no extension"
    );
}

/// The seed's example: `TopKSaeConfig(k=1, num_latents=5, target_modules=["linear"])`.
#[test]
fn seed_example_inject_forward_save_load() {
    let device = Default::default();
    let config = AdapterConfig {
        sae: SaeConfig::topk(1, 5),
        target_modules: TargetModules::Names(vec!["linear".into()]),
    };
    let model = inject::<B, _>(DummyModel::new(&device), config, &device).unwrap();
    let x = Tensor::<B, 3>::random([2, 16, 10], Distribution::Default, &device);
    let out = values(model.forward(x.clone()).unwrap().output);

    // Hand-computed SAE Made Easy math on the host: z = W_enc (y - b_dec), keep the largest,
    // y_hat = z_max W_dec[argmax] + b_dec.
    let y = values(model.model().forward_plain(x.clone()));
    let host = sae_core::HostSae::from_sae(&model.adapters()["default"].saes["linear"]);
    let mut expected = Vec::new();
    for token in y.chunks(10) {
        let centred: Vec<f32> = token.iter().zip(&host.b_dec).map(|(a, b)| a - b).collect();
        let z: Vec<f32> = host
            .w_enc
            .chunks(10)
            .map(|row| row.iter().zip(&centred).map(|(w, c)| w * c).sum())
            .collect();
        let best = (0..5).max_by(|&a, &b| z[a].total_cmp(&z[b])).unwrap();
        expected.extend((0..10).map(|j| z[best] * host.w_dec[best * 10 + j] + host.b_dec[j]));
    }
    assert!(max_rel_diff(&out, &expected) < 1e-5);

    let dir = tempfile::tempdir().unwrap();
    model.save_pretrained(dir.path()).unwrap();
    let loaded =
        SaeModel::<B, _>::from_pretrained(model.model().clone(), dir.path(), &device).unwrap();
    assert_eq!(values(loaded.forward(x).unwrap().output), out);
}

#[test]
fn train_mode_passes_the_original_through_and_records() {
    let device = Default::default();
    let mut sae_model = reference_sae_model(&device);
    sae_model.train();
    let x: Tensor<B, 3> = reference("smez_dummy/reference.safetensors", "x").to_float(&device);
    let forward = sae_model.forward(x).unwrap();
    let base = reference("smez_dummy/reference.safetensors", "base_output").to_f32();
    assert!(max_rel_diff(&values(forward.output), &base) < 1e-5);
    assert_eq!(forward.records.len(), 1);
    let record = &forward.records[0];
    assert_eq!(
        (record.adapter.as_str(), record.path.as_str()),
        ("default", "linear")
    );
    let expected = reference("smez_dummy/reference.safetensors", "sae_eval_output").to_f32();
    assert!(max_rel_diff(&values(record.output.reconstruction.clone()), &expected) < 1e-5);
}

#[test]
fn several_active_adapters_average_their_reconstructions() {
    let device = Default::default();
    let mut sae_model = reference_sae_model(&device);
    let config = AdapterConfig {
        sae: SaeConfig::topk(3, 6),
        target_modules: TargetModules::Regex("lin.*".into()),
    };
    sae_model.add_adapter("other", config, &device).unwrap();
    let x: Tensor<B, 3> = reference("smez_dummy/reference.safetensors", "x").to_float(&device);
    let second = values(sae_model.forward(x.clone()).unwrap().output);
    sae_model.set_adapter(&["default", "other"]).unwrap();
    let both = values(sae_model.forward(x).unwrap().output);
    let first = reference("smez_dummy/reference.safetensors", "sae_eval_output").to_f32();
    let mean: Vec<f32> = first
        .iter()
        .zip(&second)
        .map(|(a, b)| (a + b) / 2.0)
        .collect();
    assert!(max_rel_diff(&both, &mean) < 1e-6);
    assert!(sae_model.set_adapter(&["missing"]).is_err());

    // Named adapters are saved in sub-folders and come back.
    let dir = tempfile::tempdir().unwrap();
    sae_model.save_pretrained(dir.path()).unwrap();
    assert!(dir.path().join("other/adapter_config.json").is_file());
    let loaded =
        SaeModel::<B, _>::from_pretrained(sae_model.model().clone(), dir.path(), &device).unwrap();
    assert_eq!(
        loaded.adapters().keys().collect::<Vec<_>>(),
        ["default", "other"]
    );
}
