//! Loading model folders: half-precision storage, sharded checkpoints, and bad input (a clear
//! error naming what is wrong, never a panic).

use std::path::{Path, PathBuf};

use sae_core::{HookedModule, HostTensor, StorageDtype, TensorFile};
use sae_models::gguf::GgufFile;
use sae_models::{DecoderLm, LmInput, Tokenizer};

mod common;

use common::{B, ints, max_rel_diff};

fn model_copy() -> tempfile::TempDir {
    let src = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/qwen2_tiny");
    let dir = tempfile::tempdir().unwrap();
    for entry in std::fs::read_dir(src).unwrap() {
        let path = entry.unwrap().path();
        std::fs::copy(&path, dir.path().join(path.file_name().unwrap())).unwrap();
    }
    dir
}

fn load_err(dir: &Path) -> String {
    DecoderLm::<B>::load(dir, &Default::default())
        .unwrap_err()
        .to_string()
}

#[test]
fn a_weight_that_disagrees_with_the_config_is_named() {
    let dir = model_copy();
    let path = dir.path().join("config.json");
    let config = std::fs::read_to_string(&path)
        .unwrap()
        .replace("\"intermediate_size\": 128", "\"intermediate_size\": 100");
    std::fs::write(&path, config).unwrap();
    assert_eq!(
        load_err(dir.path()),
        "weight \"model.layers.0.mlp.gate_proj.weight\" has shape [128, 64], but the config implies [100, 64]"
    );
}

#[test]
fn a_missing_tokenizer_is_reported() {
    let dir = model_copy();
    std::fs::remove_file(dir.path().join("tokenizer.json")).unwrap();
    let err = Tokenizer::load(dir.path()).unwrap_err().to_string();
    assert!(err.ends_with("has no tokenizer.json"), "{err}");
}

#[test]
fn a_truncated_checkpoint_is_reported() {
    let dir = model_copy();
    let path = dir.path().join("model.safetensors");
    let bytes = std::fs::read(&path).unwrap();
    std::fs::write(&path, &bytes[..bytes.len() / 2]).unwrap();
    assert!(load_err(dir.path()).starts_with("cannot read safetensors file"));
}

#[test]
fn an_unsupported_gguf_quantisation_is_named() {
    // A hand-made GGUF v3: no metadata, one tensor "t" of 256 values in Q2_K (ggml type 10).
    let mut bytes = b"GGUF".to_vec();
    bytes.extend(3u32.to_le_bytes());
    bytes.extend(1u64.to_le_bytes()); // tensors
    bytes.extend(0u64.to_le_bytes()); // metadata entries
    bytes.extend(1u64.to_le_bytes());
    bytes.extend(b"t");
    bytes.extend(1u32.to_le_bytes()); // dims
    bytes.extend(256u64.to_le_bytes());
    bytes.extend(10u32.to_le_bytes()); // Q2_K
    bytes.extend(0u64.to_le_bytes()); // offset
    bytes.resize(bytes.len().div_ceil(32) * 32 + 84, 0);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("q2k.gguf");
    std::fs::write(&path, bytes).unwrap();
    let file = GgufFile::open(&path).unwrap();
    let err = file.dequantize("t").unwrap_err().to_string();
    assert!(
        err.ends_with("tensor t has quantisation Q2_K, which is not supported"),
        "{err}"
    );
}

/// Logits of the fixture prompt, and the relative error against transformers' f32 logits.
fn logits_error(dir: &Path) -> f32 {
    let device = Default::default();
    let model = DecoderLm::<B>::load(dir, &device).unwrap();
    let reference = TensorFile::open(dir.join("reference.safetensors")).unwrap();
    let ids = ints(&reference, "inputs.input_ids");
    let logits = model
        .forward_plain(LmInput::from_ids(&ids, &device))
        .logits
        .unwrap();
    let ours = HostTensor::from_float(logits).to_f32();
    max_rel_diff(&ours, &reference.get("logits").unwrap().to_f32())
}

#[test]
fn half_precision_checkpoints_load() {
    for (dtype, bound) in [(StorageDtype::F16, 4e-3), (StorageDtype::BF16, 3e-2)] {
        let dir = model_copy();
        let path = dir.path().join("model.safetensors");
        let file = TensorFile::open(&path).unwrap();
        let tensors: Vec<_> = file
            .names()
            .into_iter()
            .map(|n| (n.clone(), file.get(&n).unwrap()))
            .collect();
        sae_core::tensor_file::write_tensors(&path, &tensors, dtype, None).unwrap();
        // Rounded weights, f32 compute: within four units of the storage format's epsilon.
        let err = logits_error(dir.path());
        assert!(err < bound, "{dtype:?}: {err}");
    }
}

#[test]
fn sharded_checkpoints_load() {
    let dir = model_copy();
    let path = dir.path().join("model.safetensors");
    let file = TensorFile::open(&path).unwrap();
    let names = file.names();
    let (first, second) = names.split_at(names.len() / 2);
    let mut map = serde_json::Map::new();
    for (shard, part) in [
        ("model-00001-of-00002.safetensors", first),
        ("model-00002-of-00002.safetensors", second),
    ] {
        let tensors: Vec<_> = part
            .iter()
            .map(|n| (n.clone(), file.get(n).unwrap()))
            .collect();
        sae_core::tensor_file::write_tensors(
            &dir.path().join(shard),
            &tensors,
            StorageDtype::F32,
            None,
        )
        .unwrap();
        for n in part {
            map.insert(n.clone(), serde_json::json!(shard));
        }
    }
    std::fs::remove_file(&path).unwrap();
    let index = serde_json::json!({"metadata": {}, "weight_map": map});
    std::fs::write(
        dir.path().join("model.safetensors.index.json"),
        index.to_string(),
    )
    .unwrap();
    assert!(logits_error(dir.path()) < 1e-4);
}

#[test]
fn a_shard_listed_but_missing_is_named() {
    let dir = model_copy();
    let path = dir.path().join("model.safetensors");
    let shard = "model-00002-of-00002.safetensors";
    std::fs::rename(&path, dir.path().join("model-00001-of-00002.safetensors")).unwrap();
    let index = serde_json::json!({"weight_map": {
        "model.embed_tokens.weight": "model-00001-of-00002.safetensors",
        "lm_head.weight": shard,
    }});
    std::fs::write(
        dir.path().join("model.safetensors.index.json"),
        index.to_string(),
    )
    .unwrap();
    let err = load_err(dir.path());
    assert!(
        err.ends_with(&format!(
            "model.safetensors.index.json lists shard {shard}, which is missing from the folder (an interrupted download?)"
        )),
        "{err}"
    );
}

#[test]
fn a_shard_outside_the_model_folder_is_refused_but_a_linked_one_loads() {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("snapshot");
    std::fs::rename(model_copy().path(), &model).unwrap();
    std::fs::rename(model.join("model.safetensors"), dir.path().join("blob")).unwrap();
    let index_file = model.join("model.safetensors.index.json");
    let index = |shard: &str| {
        let json = serde_json::json!({"weight_map": {"model.embed_tokens.weight": shard}});
        std::fs::write(&index_file, json.to_string()).unwrap();
    };
    index("../blob");
    assert_eq!(
        load_err(&model),
        format!(
            "{}: weight_map shard \"../blob\" leaves the folder through `..`; weights are read only from inside the model folder",
            index_file.display()
        )
    );
    // A Hugging Face cache snapshot links its files into the cache's blobs.
    #[cfg(unix)]
    {
        std::os::unix::fs::symlink("../blob", model.join("model.safetensors.part")).unwrap();
        index("model.safetensors.part");
        assert!(logits_error(&model) < 1e-4);
    }
}

#[test]
fn a_weight_stored_as_integers_is_refused_by_name() {
    let dir = model_copy();
    let path = dir.path().join("model.safetensors");
    let file = TensorFile::open(&path).unwrap();
    let name = "model.norm.weight";
    let tensors: Vec<_> = (file.names().into_iter())
        .map(|n| {
            let t = file.get(&n).unwrap();
            let t = if n == name {
                HostTensor::i64(t.shape.clone(), vec![1; t.shape.iter().product()])
            } else {
                t
            };
            (n, t)
        })
        .collect();
    drop(file);
    sae_core::tensor_file::write_tensors(&path, &tensors, StorageDtype::F32, None).unwrap();
    let err = load_err(dir.path());
    assert!(
        err.ends_with(&format!(
            "tensor \"{name}\" in {} has dtype I64, expected F32, F16 or BF16 (to compute in f32)",
            path.display()
        )),
        "{err}"
    );
}

#[test]
fn a_tensor_whose_bytes_run_past_the_file_is_refused() {
    // A header claiming 16 bytes of data for a file that holds 8.
    let header = br#"{"t":{"dtype":"F32","shape":[4],"data_offsets":[0,16]}}"#;
    let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
    bytes.extend(header);
    bytes.extend([0u8; 8]);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("t.safetensors");
    std::fs::write(&path, bytes).unwrap();
    let err = TensorFile::open(&path).err().unwrap();
    assert!(
        err.to_string().starts_with("cannot read safetensors file"),
        "{err}"
    );
    let cause = std::error::Error::source(&err).unwrap().to_string();
    assert!(cause.contains("incomplete metadata"), "{cause}");
}

#[test]
fn legacy_rope_config_keys_load() {
    // Older configs keep rope_theta at top level and `rope_scaling: {type: ...}`.
    let dir = model_copy();
    let path = dir.path().join("config.json");
    let mut config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    let theta = config["rope_parameters"]["rope_theta"].clone();
    config.as_object_mut().unwrap().remove("rope_parameters");
    config["rope_theta"] = theta;
    config["rope_scaling"] = serde_json::json!({"type": "default"});
    std::fs::write(&path, config.to_string()).unwrap();
    assert!(logits_error(dir.path()) < 1e-4);
    // The top-level value is the one read (the default is also 10000, so check another).
    config["rope_theta"] = serde_json::json!(12345.0);
    std::fs::write(&path, config.to_string()).unwrap();
    assert_eq!(
        sae_models::DecoderConfig::from_file(&path)
            .unwrap()
            .rope_theta,
        12345.0
    );
    // A RoPE type we do not implement is refused by name.
    config["rope_scaling"] = serde_json::json!({"type": "yarn", "factor": 4.0});
    std::fs::write(&path, config.to_string()).unwrap();
    assert!(load_err(dir.path()).contains("rope type \"yarn\" is not supported"));
}

#[test]
fn impossible_sizes_in_a_config_are_named() {
    for (key, value, message) in [
        ("num_attention_heads", 0, "num_attention_heads"),
        (
            "num_key_value_heads",
            3,
            "is not a multiple of num_key_value_heads 3",
        ),
        ("head_dim", 15, "head_dim 15 is odd"),
        ("vocab_size", 0, "vocab_size is 0"),
    ] {
        let dir = model_copy();
        let path = dir.path().join("config.json");
        let mut config: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        config[key] = value.into();
        std::fs::write(&path, config.to_string()).unwrap();
        let err = load_err(dir.path());
        assert!(err.contains(message), "{key} = {value}: {err}");
    }
}

#[test]
fn a_tokenizer_larger_than_the_embeddings_is_refused() {
    let dir = model_copy();
    let path = dir.path().join("tokenizer.json");
    let mut tokenizer: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    // The fixture's embeddings hold 1034 ids; token 1034 would index past them.
    tokenizer["added_tokens"]
        .as_array_mut()
        .unwrap()
        .push(serde_json::json!({"id": 1034, "content": "<extra>", "single_word": false, "lstrip": false, "rstrip": false, "normalized": false, "special": true}));
    std::fs::write(&path, tokenizer.to_string()).unwrap();
    let device = Default::default();
    let err = sae_models::LanguageModel::<B>::load(dir.path().to_str().unwrap(), &device)
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(
        err.contains("the tokenizer has 1035 tokens, more than the model's vocab_size 1034"),
        "{err}"
    );
}

#[test]
fn the_stored_dtype_is_read_from_the_config() {
    let dir = model_copy();
    let path = dir.path().join("config.json");
    let mut config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    let map = config.as_object_mut().unwrap();
    map.remove("dtype");
    map.remove("torch_dtype");
    std::fs::write(&path, config.to_string()).unwrap();
    let stored = || sae_models::config::stored_dtype(dir.path());
    assert_eq!(stored(), None);
    // transformers 4 wrote torch_dtype, transformers 5 writes dtype (which wins).
    config["torch_dtype"] = "bfloat16".into();
    std::fs::write(&path, config.to_string()).unwrap();
    assert_eq!(stored(), Some(StorageDtype::BF16));
    config["dtype"] = "float16".into();
    std::fs::write(&path, config.to_string()).unwrap();
    assert_eq!(stored(), Some(StorageDtype::F16));
}
