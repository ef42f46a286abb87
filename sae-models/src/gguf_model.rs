//! A decoder LM from a GGUF file: the config from `{arch}.*` metadata, the tokenizer and chat
//! template from `tokenizer.*` metadata, and the dequantised weights.

use std::path::Path;

use burn::tensor::DType;
use burn::tensor::backend::Backend;
use sae_core::HookPoint;
use serde_json::{Value as Json, json};

use crate::config::DecoderConfig;
use crate::decoder::DecoderLm;
use crate::error::{ModelError, Result};
use crate::gguf::{GgufFile, Value};
use crate::scope::LoadScope;
use crate::tokenizer::Tokenizer;
use crate::weights::Weights;

/// Qwen2's pre-tokenizer split (as in its tokenizer.json).
const QWEN2_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// The network (computing in `dtype`), tokenizer and stop tokens of a GGUF file.
pub fn load<B: Backend>(
    path: &Path,
    dtype: DType,
    scope: &LoadScope,
    device: &B::Device,
) -> Result<(DecoderLm<B>, Tokenizer, Vec<i64>)> {
    let file = GgufFile::open(path)?;
    let config = config(&file, path)?;
    let tokenizer = tokenizer(&file, path)?;
    let stop = file
        .get("tokenizer.ggml.eos_token_id")
        .and_then(Value::as_int)
        .into_iter()
        .collect();
    // llama.cpp permutes llama's q/k rows for its interleaved RoPE; Qwen2 is stored as is.
    let permuted = (config.model_type == "llama")
        .then_some((config.num_attention_heads, config.num_key_value_heads));
    let weights = Weights::from_gguf(path, file, permuted)
        .with_dtype(dtype)?
        .for_scope(scope);
    let config = DecoderConfig {
        tie_word_embeddings: !weights.contains("lm_head.weight"),
        ..config
    };
    Ok((
        DecoderLm::from_weights(config, &weights, scope, device)?,
        tokenizer,
        stop,
    ))
}

/// The hook points of the model in a GGUF file, from its metadata alone.
pub fn hook_points(path: &Path) -> Result<Vec<HookPoint>> {
    let file = GgufFile::open(path)?;
    Ok(config(&file, path)?.hook_points("model"))
}

/// The model configuration from `general.architecture` and the `{arch}.*` keys.
fn config(file: &GgufFile, path: &Path) -> Result<DecoderConfig> {
    let arch = file
        .get("general.architecture")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string();
    if !crate::config::SUPPORTED.contains(&arch.as_str()) {
        return Err(ModelError::UnsupportedArchitecture {
            found: arch,
            supported: crate::config::SUPPORTED.join(", "),
        });
    }
    let missing = |key: &str| ModelError::BadGguf {
        file: path.to_path_buf(),
        message: format!("metadata key {key} is missing"),
    };
    let int = |key: &str| {
        let key = format!("{arch}.{key}");
        let value = file
            .get(&key)
            .and_then(Value::as_int)
            .ok_or_else(|| missing(&key))?;
        usize::try_from(value).map_err(|_| ModelError::BadGguf {
            file: path.to_path_buf(),
            message: format!("metadata key {key} is {value}, expected a size"),
        })
    };
    let float = |key: &str| file.get(&format!("{arch}.{key}")).and_then(Value::as_float);
    let hidden = int("embedding_length")?;
    let heads = int("attention.head_count")?;
    let vocab = int("vocab_size").or_else(|_| {
        file.get("tokenizer.ggml.tokens")
            .and_then(Value::as_array)
            .map(<[Value]>::len)
            .ok_or_else(|| missing("tokenizer.ggml.tokens"))
    })?;
    let config = DecoderConfig {
        head_dim: int("attention.key_length").unwrap_or(hidden / heads.max(1)),
        hidden_size: hidden,
        intermediate_size: int("feed_forward_length")?,
        num_hidden_layers: int("block_count")?,
        num_attention_heads: heads,
        num_key_value_heads: int("attention.head_count_kv").unwrap_or(heads),
        rms_norm_eps: float("attention.layer_norm_rms_epsilon").unwrap_or(1e-6),
        rope_theta: float("rope.freq_base").unwrap_or(10_000.0),
        vocab_size: vocab,
        tie_word_embeddings: false,
        attention_bias: arch == "qwen2",
        mlp_bias: false,
        max_position_embeddings: int("context_length").unwrap_or(usize::MAX),
        mrope_section: None,
        model_type: arch,
    };
    config.check().map_err(|message| ModelError::BadGguf {
        file: path.to_path_buf(),
        message,
    })?;
    Ok(config)
}

/// The byte-level BPE tokenizer described by `tokenizer.ggml.*`, built as a tokenizer.json.
fn tokenizer(file: &GgufFile, path: &Path) -> Result<Tokenizer> {
    let bad = |message: String| ModelError::BadGguf {
        file: path.to_path_buf(),
        message,
    };
    let model = file
        .get("tokenizer.ggml.model")
        .and_then(Value::as_str)
        .unwrap_or_default();
    if model != "gpt2" {
        return Err(bad(format!(
            "tokenizer model {model:?} is not supported (only gpt2-style BPE)"
        )));
    }
    let strings = |key: &str| -> Result<Vec<String>> {
        file.get(key)
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(Value::as_str)
                    .map(String::from)
                    .collect()
            })
            .ok_or_else(|| bad(format!("metadata key {key} is missing")))
    };
    let tokens = strings("tokenizer.ggml.tokens")?;
    let merges = strings("tokenizer.ggml.merges")?;
    let types: Vec<i64> = file
        .get("tokenizer.ggml.token_type")
        .and_then(Value::as_array)
        .map(|a| a.iter().filter_map(Value::as_int).collect())
        .unwrap_or_default();
    let vocab: serde_json::Map<String, Json> = tokens
        .iter()
        .enumerate()
        .map(|(i, t)| (t.clone(), json!(i)))
        .collect();
    // Control (3) and user-defined (4) tokens are matched whole, before BPE.
    let added: Vec<Json> = types
        .iter()
        .enumerate()
        .filter(|(i, t)| (**t == 3 || **t == 4) && *i < tokens.len())
        .map(|(i, t)| json!({"id": i, "content": tokens[i], "single_word": false, "lstrip": false, "rstrip": false, "normalized": false, "special": *t == 3}))
        .collect();
    let byte_level = |use_regex: bool| json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": use_regex});
    let pre = file
        .get("tokenizer.ggml.pre")
        .and_then(Value::as_str)
        .unwrap_or("default");
    let (normalizer, pre_tokenizer) = match pre {
        "smollm" => (
            Json::Null,
            json!({"type": "Sequence", "pretokenizers": [{"type": "Digits", "individual_digits": true}, byte_level(true)]}),
        ),
        "qwen2" => (
            json!({"type": "NFC"}),
            json!({"type": "Sequence", "pretokenizers": [{"type": "Split", "pattern": {"Regex": QWEN2_SPLIT}, "behavior": "Isolated", "invert": false}, byte_level(false)]}),
        ),
        "default" | "gpt2" => (Json::Null, byte_level(true)),
        other => {
            return Err(bad(format!(
                "tokenizer pre-tokenizer {other:?} is not supported (smollm, qwen2, gpt2)"
            )));
        }
    };
    let spec = json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": added,
        "normalizer": normalizer,
        "pre_tokenizer": pre_tokenizer,
        "post_processor": null,
        "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true},
        "model": {"type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null, "end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": false, "ignore_merges": false, "vocab": vocab, "merges": merges},
    });
    let inner: tokenizers::Tokenizer = spec
        .to_string()
        .parse()
        .map_err(|e: tokenizers::Error| bad(format!("cannot build its tokenizer: {e}")))?;
    let token = |key: &str| {
        file.get(key)
            .and_then(Value::as_int)
            .and_then(|i| tokens.get(i as usize).cloned())
    };
    let template = file
        .get("tokenizer.chat_template")
        .and_then(Value::as_str)
        .map(String::from);
    Ok(Tokenizer::from_parts(
        inner,
        template,
        token("tokenizer.ggml.bos_token_id"),
        token("tokenizer.ggml.eos_token_id"),
    ))
}
