//! Bad model input gives a clear error naming what is wrong, never a panic.

use std::path::{Path, PathBuf};

use sae_models::gguf::GgufFile;
use sae_models::{DecoderLm, Tokenizer};

type B = burn::backend::Flex;

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
