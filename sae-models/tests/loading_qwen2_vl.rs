//! Qwen2-VL checkpoints as the hub stores them: the older config layout (text keys at top
//! level, `rope_scaling {type: mrope}`, `in_chans`, no vision activation), transformers 5's
//! tensor names (`model.language_model.*`, `model.visual.*`), and sharded bf16 safetensors.

use std::path::Path;

use burn::tensor::DType;
use sae_core::tensor_file::{StorageDtype, write_tensors};
use sae_core::{HookedModule, NoHooks, TensorFile};
use sae_models::qwen2_vl::{Qwen2Vl, Qwen2VlConfig};
use serde_json::{Value, json};

mod common;

use common::{B, fixture, values};

/// The tiny config rewritten the way hub configs of Qwen2-VL are laid out.
fn hub_layout(config: &Value) -> Value {
    let mut hub = config["text_config"].clone();
    let map = hub.as_object_mut().unwrap();
    let rope = map.remove("rope_parameters").unwrap();
    map.insert("rope_theta".into(), rope["rope_theta"].clone());
    map.insert(
        "rope_scaling".into(),
        json!({"type": "mrope", "mrope_section": rope["mrope_section"]}),
    );
    for key in ["model_type", "image_token_id", "video_token_id"] {
        map.insert(key.into(), config[key].clone());
    }
    let mut vision = config["vision_config"].clone();
    let v = vision.as_object_mut().unwrap();
    v.remove("hidden_act");
    v.remove("rope_parameters");
    let channels = v.remove("in_channels").unwrap();
    v.insert("in_chans".into(), channels);
    map.insert("vision_config".into(), vision);
    hub
}

#[test]
fn the_hub_config_layout_reads_the_same() {
    let path = fixture("qwen2_vl_tiny/config.json");
    let config: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    let ours = Qwen2VlConfig::from_json(config.clone(), &path).unwrap();
    let hub = Qwen2VlConfig::from_json(hub_layout(&config), &path).unwrap();
    assert_eq!(ours, hub);
}

/// Writes the tiny model's tensors to `dir` as bf16, renamed by `rename`, in `shards` files
/// (with an index when more than one), plus the fixture's other files.
fn write_checkpoint(dir: &Path, shards: usize, rename: impl Fn(&str) -> String) {
    let source = TensorFile::open(fixture("qwen2_vl_tiny/model.safetensors")).unwrap();
    let mut names = source.names();
    names.sort();
    let per_shard = names.len().div_ceil(shards);
    let mut weight_map = serde_json::Map::new();
    for (i, chunk) in names.chunks(per_shard).enumerate() {
        let file = if shards == 1 {
            "model.safetensors".to_string()
        } else {
            format!("model-{:05}-of-{shards:05}.safetensors", i + 1)
        };
        let tensors: Vec<_> = chunk
            .iter()
            .map(|n| (rename(n), source.get(n).unwrap()))
            .collect();
        for (name, _) in &tensors {
            weight_map.insert(name.clone(), Value::from(file.clone()));
        }
        write_tensors(&dir.join(&file), &tensors, StorageDtype::BF16, None).unwrap();
    }
    if shards > 1 {
        let index = json!({"metadata": {}, "weight_map": weight_map});
        std::fs::write(dir.join("model.safetensors.index.json"), index.to_string()).unwrap();
    }
    std::fs::copy(
        fixture("qwen2_vl_tiny/config.json"),
        dir.join("config.json"),
    )
    .unwrap();
}

/// transformers 5's names for the hub names of the fixture.
fn transformers5_name(name: &str) -> String {
    if let Some(rest) = name.strip_prefix("model.") {
        format!("model.language_model.{rest}")
    } else if let Some(rest) = name.strip_prefix("visual.") {
        format!("model.visual.{rest}")
    } else {
        name.to_string()
    }
}

// The same bf16 weights, one hub-named file against three shards under transformers 5's names:
// the logits are equal bit for bit.
#[test]
fn sharded_bf16_checkpoints_in_either_naming_load_the_same_model() {
    let device = Default::default();
    let single = tempfile::tempdir().unwrap();
    write_checkpoint(single.path(), 1, str::to_string);
    let sharded = tempfile::tempdir().unwrap();
    write_checkpoint(sharded.path(), 3, transformers5_name);
    assert!(
        sharded
            .path()
            .join("model-00003-of-00003.safetensors")
            .is_file()
    );

    let reference = TensorFile::open(fixture("qwen2_vl_tiny/reference.safetensors")).unwrap();
    let logits = |dir: &Path| {
        let model = Qwen2Vl::<B>::load_as(dir, DType::F32, &device).unwrap();
        let ids = common::ints(&reference, "inputs.input_ids");
        let pixels = reference.get("inputs.pixel_values").unwrap();
        let input = sae_models::qwen2_vl::VlInput {
            input_ids: burn::tensor::Tensor::from_data(
                burn::tensor::TensorData::new(ids.clone(), [1, ids.len()]),
                &device,
            ),
            attention_mask: None,
            images: Some(sae_models::qwen2_vl::ImageInput {
                pixel_values: pixels.to_float(&device),
                grid_thw: vec![[1, 6, 8]],
            }),
        };
        values(
            model
                .forward_hooked(input, &mut NoHooks)
                .unwrap()
                .logits
                .unwrap(),
        )
    };
    let a = logits(single.path());
    assert_eq!(a, logits(sharded.path()));
    // bf16 weights change the logits a little, not a lot: the model did load them.
    let f32_logits = reference.get("logits").unwrap().to_f32();
    let err = common::max_rel_diff(&a, &f32_logits);
    assert!(err > 0.0 && err < 0.05, "bf16 against f32 weights: {err}");
}
