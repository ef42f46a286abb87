//! Loading only what a job needs ([`LoadScope`]): the layers up to the deepest hook read, the
//! final norm and head only for logits, the vision tower only for images; what is loaded
//! computes exactly what the whole model does, and the hook points come from the config alone.

use burn::module::Module;
use burn::tensor::{DType, Int, Tensor, TensorData};
use sae_core::{HookedModule, Recorder, TensorFile};
use sae_models::llava_onevision::LlavaOnevision;
use sae_models::qwen2_vl::{Qwen2Vl, VlInput};
use sae_models::{AnyModel, DecoderLm, LmInput, LoadScope, ModelError};

mod common;

use common::{B, fixture, ints, max_rel_diff, qwen2_vl_input, values};

/// Values in the tensors of `dir`'s checkpoint whose names start with one of `prefixes`.
fn stored_params(dir: &str, prefixes: &[&str]) -> usize {
    let file = TensorFile::open(fixture(&format!("{dir}/model.safetensors"))).unwrap();
    (file.describe().into_iter())
        .filter(|(name, _, _)| prefixes.iter().any(|p| name.starts_with(p)))
        .map(|(_, _, shape)| shape.iter().product::<usize>())
        .sum()
}

#[test]
fn a_job_at_layer_0_loads_layer_0_and_matches_transformers_there() {
    let dir = fixture("qwen2_tiny");
    let device = Default::default();
    let points = AnyModel::<B>::hook_points_of(dir.to_str().unwrap()).unwrap();
    let hook = "model.layers.0.mlp.down_proj";
    let scope = LoadScope::through(&points, [hook], false);
    let model = DecoderLm::<B>::load_scoped(&dir, DType::F32, &scope, &device).unwrap();
    // The embedding and layer 0, nothing else (the fixture's head is not tied).
    let expected = stored_params("qwen2_tiny", &["model.embed_tokens.", "model.layers.0."]);
    assert_eq!(model.num_params(), expected);
    let whole = DecoderLm::<B>::load(&dir, &device).unwrap();
    assert!(whole.num_params() > expected);
    assert_eq!(model.hook_points(), whole.hook_points());

    let reference = TensorFile::open(dir.join("reference.safetensors")).unwrap();
    let ids = ints(&reference, "inputs.input_ids");
    let mut recorder = Recorder::paths(&[hook.to_string()], true);
    let out = model.forward_hooked(LmInput::from_ids(&ids, &device), &mut recorder);
    assert!(out.logits.is_none());
    let [(path, x)] = <[_; 1]>::try_from(recorder.records).unwrap();
    assert_eq!(path, hook);
    let want = reference.get(&format!("hook.{hook}")).unwrap().to_f32();
    let err = max_rel_diff(&values(x), &want);
    assert!(err < 1e-4, "{err}");

    // A pass that is not stopped by its hooks ends where the loaded layers end.
    let plain = model.forward_plain(LmInput::from_ids(&ids, &device));
    assert!(plain.logits.is_none());
}

#[test]
fn logits_or_the_head_load_the_whole_decoder() {
    let dir = fixture("qwen2_tiny");
    let points = AnyModel::<B>::hook_points_of(dir.to_str().unwrap()).unwrap();
    let all = stored_params("qwen2_tiny", &[""]);
    for scope in [
        LoadScope::whole(false),
        LoadScope::through(&points, ["lm_head"], false),
        LoadScope::through(&points, ["model.norm", "model.layers.0"], false),
    ] {
        let model = DecoderLm::<B>::load_scoped(&dir, DType::F32, &scope, &Default::default());
        assert_eq!(model.unwrap().num_params(), all, "{scope:?}");
    }
}

#[test]
fn hook_points_come_from_the_config_alone() {
    for dir in [
        "qwen2_tiny",
        "llama_tiny",
        "qwen2_vl_tiny",
        "llava_onevision_tiny",
    ] {
        let spec = fixture(dir);
        let spec = spec.to_str().unwrap();
        let loaded = AnyModel::<B>::load_as(spec, DType::F32, &Default::default()).unwrap();
        assert_eq!(
            AnyModel::<B>::hook_points_of(spec).unwrap(),
            loaded.hook_points(),
            "{dir}"
        );
    }
}

/// Text ids of the qwen2_vl fixture's prompt without its image tokens.
fn text_ids(reference: &TensorFile, image_token: i64) -> Vec<i64> {
    (ints(reference, "inputs.input_ids").into_iter())
        .filter(|&id| id != image_token)
        .collect()
}

#[test]
fn a_text_job_on_a_vision_language_model_leaves_the_vision_tower_out() {
    let dir = fixture("qwen2_vl_tiny");
    let device = Default::default();
    let points = AnyModel::<B>::hook_points_of(dir.to_str().unwrap()).unwrap();
    let hook = "model.language_model.layers.1";
    let scope = LoadScope::through(&points, [hook], false);
    let text_only = Qwen2Vl::<B>::load_scoped(&dir, DType::F32, &scope, &device).unwrap();
    let whole = Qwen2Vl::<B>::load_as(&dir, DType::F32, &device).unwrap();
    let vision = stored_params("qwen2_vl_tiny", &["visual."]);
    let head = stored_params("qwen2_vl_tiny", &["lm_head.", "model.norm."]);
    assert!(vision > 0 && head > 0);
    assert_eq!(text_only.num_params(), whole.num_params() - vision - head);

    // On text, the same numbers as the whole model.
    let reference = TensorFile::open(dir.join("reference.safetensors")).unwrap();
    let image_token = whole.config().image_token_id;
    let ids = text_ids(&reference, image_token);
    let input = || VlInput {
        input_ids: Tensor::<B, 2, Int>::from_data(
            TensorData::new(ids.clone(), [1, ids.len()]),
            &device,
        ),
        attention_mask: None,
        images: None,
    };
    let mut outputs = Vec::new();
    for model in [&text_only, &whole] {
        let mut recorder = Recorder::paths(&[hook.to_string()], true);
        model.forward_hooked(input(), &mut recorder).unwrap();
        outputs.push(values(recorder.records.remove(0).1));
    }
    assert_eq!(outputs[0], outputs[1]);

    // Images given to it anyway: refused by name, not run without the tower.
    let with_image = qwen2_vl_input::<B>(&reference, &device);
    let err = text_only
        .forward_hooked(with_image, &mut Recorder::paths(&[], false))
        .unwrap_err();
    assert!(matches!(err, ModelError::NoVisionTower), "{err}");
}

#[test]
fn a_vision_hook_loads_the_tower_and_no_text_layer() {
    let dir = fixture("llava_onevision_tiny");
    let device = Default::default();
    let points = AnyModel::<B>::hook_points_of(dir.to_str().unwrap()).unwrap();
    let scope = LoadScope::through(&points, ["model.multi_modal_projector"], false);
    let scoped = LlavaOnevision::<B>::load_scoped(&dir, DType::F32, &scope, &device).unwrap();
    let whole = LlavaOnevision::<B>::load_as(&dir, DType::F32, &device).unwrap();
    let text_layers = stored_params("llava_onevision_tiny", &["language_model.model.layers."]);
    let head = stored_params(
        "llava_onevision_tiny",
        &["language_model.model.norm.", "language_model.lm_head."],
    );
    assert!(text_layers > 0 && head > 0);
    assert_eq!(scoped.num_params(), whole.num_params() - text_layers - head);
}
