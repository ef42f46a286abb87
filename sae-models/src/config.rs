//! `DecoderConfig`: what a Qwen2 / Llama `config.json` says, in both the transformers 5 layout
//! (`rope_parameters`) and the older one (`rope_theta` and `rope_scaling` at top level).

use std::path::Path;

use sae_core::{HookKind, HookPoint};
use serde::Deserialize;

use crate::error::{ModelError, Result, bad_config};

/// The `model_type`s this port runs.
pub const SUPPORTED: &[&str] = &["qwen2", "llama"];

/// Configuration of a decoder-only language model.
#[derive(Debug, Clone, PartialEq)]
pub struct DecoderConfig {
    /// `qwen2` or `llama`.
    pub model_type: String,
    /// Residual width.
    pub hidden_size: usize,
    /// MLP width.
    pub intermediate_size: usize,
    /// Decoder layers.
    pub num_hidden_layers: usize,
    /// Query heads.
    pub num_attention_heads: usize,
    /// Key/value heads (grouped-query attention).
    pub num_key_value_heads: usize,
    /// Width of one head.
    pub head_dim: usize,
    /// RMSNorm epsilon.
    pub rms_norm_eps: f64,
    /// RoPE base.
    pub rope_theta: f64,
    /// Vocabulary size.
    pub vocab_size: usize,
    /// The LM head shares the embedding matrix.
    pub tie_word_embeddings: bool,
    /// q/k/v projections have biases (always for Qwen2).
    pub attention_bias: bool,
    /// MLP projections have biases.
    pub mlp_bias: bool,
    /// Longest sequence the model supports.
    pub max_position_embeddings: usize,
    /// Multimodal RoPE (Qwen2-VL): how many of the `head_dim / 2` frequencies follow each of the
    /// temporal, height and width positions; `None` for plain 1-D RoPE.
    pub mrope_section: Option<Vec<usize>>,
}

/// The raw JSON, every field optional where some configs leave it out.
#[derive(Deserialize)]
struct RawConfig {
    model_type: String,
    hidden_size: usize,
    intermediate_size: usize,
    num_hidden_layers: usize,
    num_attention_heads: usize,
    num_key_value_heads: Option<usize>,
    head_dim: Option<usize>,
    rms_norm_eps: f64,
    rope_theta: Option<f64>,
    rope_parameters: Option<RopeParameters>,
    rope_scaling: Option<RopeParameters>,
    vocab_size: usize,
    #[serde(default)]
    tie_word_embeddings: bool,
    attention_bias: Option<bool>,
    #[serde(default)]
    mlp_bias: bool,
    max_position_embeddings: Option<usize>,
}

#[derive(Deserialize)]
struct RopeParameters {
    rope_theta: Option<f64>,
    mrope_section: Option<Vec<usize>>,
    rope_type: Option<String>,
    #[serde(rename = "type")]
    legacy_type: Option<String>,
}

impl DecoderConfig {
    /// The hook points of a decoder whose modules sit at `prefix`, in forward order.
    pub fn hook_points(&self, prefix: &str) -> Vec<HookPoint> {
        let (hidden, inter) = (self.hidden_size, self.intermediate_size);
        let (q_dim, kv_dim) = (
            self.num_attention_heads * self.head_dim,
            self.num_key_value_heads * self.head_dim,
        );
        let mut points = Vec::new();
        for i in 0..self.num_hidden_layers {
            let p = format!("{prefix}.layers.{i}");
            let attn = HookKind::Attention;
            let mlp = HookKind::Mlp;
            points.extend([
                HookPoint::new(format!("{p}.input_layernorm"), hidden, HookKind::Other),
                HookPoint::linear(format!("{p}.self_attn.q_proj"), hidden, q_dim, attn),
                HookPoint::linear(format!("{p}.self_attn.k_proj"), hidden, kv_dim, attn),
                HookPoint::linear(format!("{p}.self_attn.v_proj"), hidden, kv_dim, attn),
                HookPoint::linear(format!("{p}.self_attn.o_proj"), q_dim, hidden, attn),
                HookPoint::new(format!("{p}.self_attn"), hidden, attn),
                HookPoint::new(
                    format!("{p}.post_attention_layernorm"),
                    hidden,
                    HookKind::Other,
                ),
                HookPoint::linear(format!("{p}.mlp.gate_proj"), hidden, inter, mlp),
                HookPoint::linear(format!("{p}.mlp.up_proj"), hidden, inter, mlp),
                HookPoint::linear(format!("{p}.mlp.down_proj"), inter, hidden, mlp),
                HookPoint::new(format!("{p}.mlp"), hidden, mlp),
                HookPoint::new(p, hidden, HookKind::Residual),
            ]);
        }
        points.push(HookPoint::new(
            format!("{prefix}.norm"),
            hidden,
            HookKind::Other,
        ));
        points.push(HookPoint::linear(
            "lm_head",
            hidden,
            self.vocab_size,
            HookKind::Other,
        ));
        points
    }

    /// Reads `config.json`.
    pub fn from_file(path: &Path) -> Result<Self> {
        Self::from_json(read_model_config(path, SUPPORTED)?, path)
    }

    /// The language model described by a config object (`file` names it in errors): a whole
    /// `config.json`, or a multimodal model's `text_config`.
    pub fn from_json(json: serde_json::Value, file: &Path) -> Result<Self> {
        let bad = bad_config(file);
        let raw: RawConfig = serde_json::from_value(json).map_err(|e| bad(e.to_string()))?;
        let rope = raw.rope_parameters.as_ref().or(raw.rope_scaling.as_ref());
        // Older Qwen2-VL configs say `"type": "mrope"` for default RoPE with sections.
        if let Some(kind) = rope.and_then(|r| r.rope_type.as_ref().or(r.legacy_type.as_ref()))
            && kind != "default"
            && kind != "mrope"
        {
            return Err(bad(format!(
                "rope type {kind:?} is not supported (only \"default\")"
            )));
        }
        let rope_theta = rope
            .and_then(|r| r.rope_theta)
            .or(raw.rope_theta)
            .unwrap_or(10_000.0);
        if raw.num_attention_heads == 0
            || (!raw.hidden_size.is_multiple_of(raw.num_attention_heads) && raw.head_dim.is_none())
        {
            return Err(bad(
                "hidden_size is not a multiple of num_attention_heads".into()
            ));
        }
        let kv_heads = raw.num_key_value_heads.unwrap_or(raw.num_attention_heads);
        let head_dim = raw
            .head_dim
            .unwrap_or(raw.hidden_size / raw.num_attention_heads);
        let mrope_section = rope.and_then(|r| r.mrope_section.clone());
        let config = DecoderConfig {
            attention_bias: raw
                .attention_bias
                .unwrap_or(raw.model_type.starts_with("qwen2")),
            model_type: raw.model_type,
            head_dim,
            hidden_size: raw.hidden_size,
            intermediate_size: raw.intermediate_size,
            num_hidden_layers: raw.num_hidden_layers,
            num_attention_heads: raw.num_attention_heads,
            num_key_value_heads: kv_heads,
            rms_norm_eps: raw.rms_norm_eps,
            rope_theta,
            vocab_size: raw.vocab_size,
            tie_word_embeddings: raw.tie_word_embeddings,
            mlp_bias: raw.mlp_bias,
            max_position_embeddings: raw.max_position_embeddings.unwrap_or(usize::MAX),
            mrope_section,
        };
        config.check().map_err(bad)?;
        Ok(config)
    }

    /// Refuses sizes no model can have (zero heads or widths, an odd head width, key/value
    /// heads that do not divide the query heads, M-RoPE sections that do not fill the rotary
    /// half), whatever file they came from.
    pub fn check(&self) -> std::result::Result<(), String> {
        let sizes = [
            ("hidden_size", self.hidden_size),
            ("intermediate_size", self.intermediate_size),
            ("num_attention_heads", self.num_attention_heads),
            ("num_key_value_heads", self.num_key_value_heads),
            ("head_dim", self.head_dim),
            ("vocab_size", self.vocab_size),
        ];
        if let Some((name, _)) = sizes.iter().find(|(_, v)| *v == 0) {
            return Err(format!("{name} is 0"));
        }
        if !self
            .num_attention_heads
            .is_multiple_of(self.num_key_value_heads)
        {
            return Err(format!(
                "num_attention_heads {} is not a multiple of num_key_value_heads {}",
                self.num_attention_heads, self.num_key_value_heads
            ));
        }
        if !self.head_dim.is_multiple_of(2) {
            return Err(format!(
                "head_dim {} is odd: rotary embeddings rotate pairs",
                self.head_dim
            ));
        }
        if let Some(sections) = &self.mrope_section
            && sections.iter().sum::<usize>() != self.head_dim / 2
        {
            return Err(format!(
                "mrope_section {sections:?} does not add up to head_dim / 2 = {}",
                self.head_dim / 2
            ));
        }
        Ok(())
    }
}

/// The JSON of the model configuration `path`, whose `model_type` must be one of `supported`.
pub(crate) fn read_model_config(path: &Path, supported: &[&str]) -> Result<serde_json::Value> {
    let json: serde_json::Value = sae_core::tensor_file::read_json(path)?;
    check_model_type(&json, supported)?;
    Ok(json)
}

/// An error unless `json`'s `model_type` is one of `supported`.
pub(crate) fn check_model_type(json: &serde_json::Value, supported: &[&str]) -> Result<()> {
    let model_type = json["model_type"].as_str().unwrap_or_default();
    if !supported.contains(&model_type) {
        return Err(ModelError::UnsupportedArchitecture {
            found: model_type.to_string(),
            supported: supported.join(", "),
        });
    }
    Ok(())
}

/// The float dtype a model folder's weights are stored in, as its `config.json` says
/// (`dtype`, or `torch_dtype` before transformers 5; a multimodal model's `text_config` too);
/// `None` when it says nothing or names another type.
pub fn stored_dtype(dir: &Path) -> Option<sae_core::StorageDtype> {
    let json: serde_json::Value =
        sae_core::tensor_file::read_json(&dir.join("config.json")).ok()?;
    let named = |v: &serde_json::Value| {
        ["dtype", "torch_dtype"]
            .iter()
            .find_map(|k| v[k].as_str().map(str::to_string))
    };
    let name = named(&json).or_else(|| named(&json["text_config"]))?;
    name.parse().ok()
}
