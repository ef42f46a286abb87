//! What a LLaVA-OneVision `config.json` says, in the transformers 5 layout and in the hub's
//! (`llava-hf/llava-onevision-qwen2-*-hf`), whose `text_config` and `vision_config` leave out
//! many keys: absent keys take the defaults of transformers' `Qwen2Config` and
//! `SiglipVisionConfig`, and an absent `vision_config` LLaVA-OneVision's SigLIP-so400m one.

use std::path::Path;

use serde::Deserialize;
use serde_json::{Value, json};

use super::siglip::Activation;
use sae_core::{HookKind, HookPoint};

use crate::config::{DecoderConfig, check_model_type, read_model_config};
use crate::error::{Result, bad_config};

/// The `model_type`s this port runs.
pub const SUPPORTED: &[&str] = &["llava_onevision"];

/// The SigLIP vision tower's configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct SiglipConfig {
    /// Width of the encoder.
    pub hidden_size: usize,
    /// MLP width.
    pub intermediate_size: usize,
    /// Encoder layers in the checkpoint.
    pub num_hidden_layers: usize,
    /// Attention heads.
    pub num_attention_heads: usize,
    /// Image channels.
    pub num_channels: usize,
    /// Side of the (square) input tiles in pixels.
    pub image_size: usize,
    /// Side of a patch in pixels.
    pub patch_size: usize,
    /// LayerNorm epsilon.
    pub layer_norm_eps: f64,
    /// The MLP's activation.
    pub activation: Activation,
}

impl SiglipConfig {
    /// Patches per side of a tile (pixels beyond the last whole patch are not read, as by the
    /// stride-`patch_size` convolution: so400m's 384-pixel tiles give 27 patches of 14).
    pub fn patches_per_side(&self) -> usize {
        self.image_size / self.patch_size
    }
}

/// Which of the selected hidden states' tokens the projector reads
/// (`vision_feature_select_strategy`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FeatureSelect {
    /// Every patch (`"full"`, LLaVA-OneVision's).
    Full,
    /// All but the first (`"default"`, for towers with a CLS token).
    Default,
}

/// A LLaVA-OneVision configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct LlavaOnevisionConfig {
    /// The language model (Qwen2).
    pub text: DecoderConfig,
    /// The vision tower.
    pub vision: SiglipConfig,
    /// `<image>`: the processor puts one per image feature.
    pub image_token_id: i64,
    /// `<video>` (videos are not supported yet).
    pub video_token_id: i64,
    /// The vision hidden states the projector reads, concatenated (`vision_feature_layer`):
    /// indices into `[embeddings, layer 0 output, ..., layer L-1 output]`, negative ones resolved.
    pub vision_feature_layers: Vec<usize>,
    /// `vision_feature_select_strategy`.
    pub feature_select: FeatureSelect,
    /// The projector's activation (`projector_hidden_act`).
    pub projector_activation: Activation,
    /// The projector's linear layers have biases (`multimodal_projector_bias`).
    pub projector_bias: bool,
    /// Resolutions (height, width) an image may be tiled into (`image_grid_pinpoints`).
    pub image_grid_pinpoints: Vec<[u32; 2]>,
    /// The `N` of `vision_aspect_ratio = "anyres_max_N"`: a tiled image's feature map larger
    /// than about `N` tiles is downsampled to that.
    pub max_num_patches: usize,
}

#[derive(Deserialize)]
struct RawConfig {
    text_config: Option<Value>,
    vision_config: Option<RawVision>,
    image_token_index: Option<i64>,
    image_token_id: Option<i64>,
    video_token_index: Option<i64>,
    video_token_id: Option<i64>,
    projector_hidden_act: Option<String>,
    vision_feature_select_strategy: Option<String>,
    vision_feature_layer: Option<FeatureLayer>,
    multimodal_projector_bias: Option<bool>,
    #[serde(default)]
    tie_word_embeddings: bool,
    image_grid_pinpoints: Option<Vec<[u32; 2]>>,
    vision_aspect_ratio: Option<String>,
}

/// `vision_feature_layer`: one index or several.
#[derive(Deserialize)]
#[serde(untagged)]
enum FeatureLayer {
    One(i64),
    Many(Vec<i64>),
}

#[derive(Deserialize, Default)]
struct RawVision {
    model_type: Option<String>,
    hidden_size: Option<usize>,
    intermediate_size: Option<usize>,
    num_hidden_layers: Option<usize>,
    num_attention_heads: Option<usize>,
    num_channels: Option<usize>,
    image_size: Option<usize>,
    patch_size: Option<usize>,
    hidden_act: Option<String>,
    layer_norm_eps: Option<f64>,
}

/// `SiglipVisionConfig`'s defaults, for keys a `vision_config` leaves out.
const SIGLIP_DEFAULTS: VisionDefaults = VisionDefaults {
    hidden_size: 768,
    intermediate_size: 3072,
    num_hidden_layers: 12,
    num_attention_heads: 12,
    image_size: 224,
    patch_size: 16,
};
/// What LLaVA-OneVision's config class gives a missing `vision_config`: SigLIP so400m with its
/// last layer dropped.
const LLAVA_ONEVISION_VISION: VisionDefaults = VisionDefaults {
    hidden_size: 1152,
    intermediate_size: 4304,
    num_hidden_layers: 26,
    num_attention_heads: 16,
    image_size: 384,
    patch_size: 14,
};

/// The vision keys whose defaults differ between the two.
struct VisionDefaults {
    hidden_size: usize,
    intermediate_size: usize,
    num_hidden_layers: usize,
    num_attention_heads: usize,
    image_size: usize,
    patch_size: usize,
}

impl LlavaOnevisionConfig {
    /// The model's hook points in forward order: the vision tower's (up to the deepest layer
    /// the projector reads), the projector's, then the language model's.
    pub fn hook_points(&self) -> Vec<HookPoint> {
        let depth = self
            .vision_feature_layers
            .iter()
            .copied()
            .max()
            .unwrap_or(0);
        let mut points = self.vision.hook_points(depth);
        points.push(HookPoint::new(
            super::PROJECTOR,
            self.text.hidden_size,
            HookKind::Vision,
        ));
        points.extend(self.text.hook_points(super::TEXT));
        points
    }

    /// Reads `config.json`.
    pub fn from_file(path: &Path) -> Result<Self> {
        Self::from_json(read_model_config(path, SUPPORTED)?, path)
    }

    /// The configuration in `json` (`file` names it in errors).
    pub fn from_json(json: Value, file: &Path) -> Result<Self> {
        let bad = bad_config(file);
        check_model_type(&json, SUPPORTED)?;
        let raw: RawConfig = serde_json::from_value(json).map_err(|e| bad(e.to_string()))?;
        let mut text_json = raw.text_config.unwrap_or_else(|| json!({}));
        let text_map = text_json
            .as_object_mut()
            .ok_or_else(|| bad("text_config is not an object".into()))?;
        let text_type = text_map
            .entry("model_type")
            .or_insert_with(|| Value::from("qwen2"))
            .clone();
        if text_type == "qwen2" {
            for (key, value) in qwen2_defaults() {
                text_map.entry(key).or_insert(value);
            }
        }
        // Tied when either config says so: LlavaOnevisionConfig.__post_init__ copies a tied
        // text config's flag to the top level, which decides.
        if raw.tie_word_embeddings {
            text_map.insert("tie_word_embeddings".into(), Value::from(true));
        }
        let text = DecoderConfig::from_json(text_json, file)?;

        let vision =
            siglip_config(raw.vision_config).map_err(|m| bad(format!("vision_config: {m}")))?;
        let hidden_states = vision.num_hidden_layers as i64 + 1;
        let layers = match raw.vision_feature_layer.unwrap_or(FeatureLayer::One(-1)) {
            FeatureLayer::One(i) => vec![i],
            FeatureLayer::Many(v) => v,
        };
        let vision_feature_layers = layers
            .iter()
            .map(|&i| {
                (-hidden_states..hidden_states)
                    .contains(&i)
                    .then(|| i.rem_euclid(hidden_states) as usize)
                    .ok_or_else(|| {
                        bad(format!(
                            "vision_feature_layer {i} is out of range for {hidden_states} hidden states"
                        ))
                    })
            })
            .collect::<Result<Vec<_>>>()?;
        if vision_feature_layers.is_empty() {
            return Err(bad("vision_feature_layer is empty".into()));
        }
        let feature_select = match raw.vision_feature_select_strategy.as_deref() {
            None | Some("full") => FeatureSelect::Full,
            Some("default") => FeatureSelect::Default,
            Some(other) => {
                return Err(bad(format!(
                    "vision_feature_select_strategy {other:?} is not \"default\" or \"full\""
                )));
            }
        };
        let act = raw.projector_hidden_act.as_deref().unwrap_or("gelu");
        let projector_activation = Activation::from_name(act)
            .ok_or_else(|| bad(format!("projector_hidden_act {act:?} is not supported")))?;
        let image_grid_pinpoints = raw.image_grid_pinpoints.unwrap_or_else(default_pinpoints);
        let tile = vision.image_size as u32;
        if image_grid_pinpoints.is_empty()
            || image_grid_pinpoints
                .iter()
                .flatten()
                .any(|&side| side == 0 || !side.is_multiple_of(tile))
        {
            return Err(bad(format!(
                "image_grid_pinpoints must be non-empty multiples of the tile side {tile}"
            )));
        }
        let aspect = raw.vision_aspect_ratio.as_deref().unwrap_or("anyres_max_9");
        let max_num_patches = parse_aspect_ratio(aspect).ok_or_else(|| {
            bad(format!(
                "vision_aspect_ratio {aspect:?} is not \"anyres_max_N\""
            ))
        })?;
        Ok(LlavaOnevisionConfig {
            text,
            vision,
            image_token_id: raw
                .image_token_index
                .or(raw.image_token_id)
                .unwrap_or(151_646),
            video_token_id: raw
                .video_token_index
                .or(raw.video_token_id)
                .unwrap_or(151_647),
            vision_feature_layers,
            feature_select,
            projector_activation,
            projector_bias: raw.multimodal_projector_bias.unwrap_or(true),
            image_grid_pinpoints,
            max_num_patches,
        })
    }

    /// Width of the projector's input: the selected hidden states side by side.
    pub fn vision_feature_width(&self) -> usize {
        self.vision.hidden_size * self.vision_feature_layers.len()
    }
}

/// `Qwen2Config`'s defaults for the keys hub configs leave out.
fn qwen2_defaults() -> [(String, Value); 8] {
    [
        ("vocab_size", json!(151_936)),
        ("hidden_size", json!(4096)),
        ("intermediate_size", json!(22_016)),
        ("num_hidden_layers", json!(32)),
        ("num_attention_heads", json!(32)),
        ("num_key_value_heads", json!(32)),
        ("max_position_embeddings", json!(32_768)),
        ("rms_norm_eps", json!(1e-6)),
    ]
    .map(|(k, v)| (k.to_string(), v))
}

/// The vision config, SigLIP's defaults filling absent keys.
fn siglip_config(raw: Option<RawVision>) -> std::result::Result<SiglipConfig, String> {
    let (raw, d) = match raw {
        Some(raw) => (raw, SIGLIP_DEFAULTS),
        None => (RawVision::default(), LLAVA_ONEVISION_VISION),
    };
    if let Some(t) = raw.model_type.as_deref()
        && t != "siglip_vision_model"
    {
        return Err(format!("model_type {t:?} is not siglip_vision_model"));
    }
    let act = raw.hidden_act.as_deref().unwrap_or("gelu_pytorch_tanh");
    let config = SiglipConfig {
        hidden_size: raw.hidden_size.unwrap_or(d.hidden_size),
        intermediate_size: raw.intermediate_size.unwrap_or(d.intermediate_size),
        num_hidden_layers: raw.num_hidden_layers.unwrap_or(d.num_hidden_layers),
        num_attention_heads: raw.num_attention_heads.unwrap_or(d.num_attention_heads),
        num_channels: raw.num_channels.unwrap_or(3),
        image_size: raw.image_size.unwrap_or(d.image_size),
        patch_size: raw.patch_size.unwrap_or(d.patch_size),
        layer_norm_eps: raw.layer_norm_eps.unwrap_or(1e-6),
        activation: Activation::from_name(act)
            .ok_or_else(|| format!("hidden_act {act:?} is not supported"))?,
    };
    let c = &config;
    if c.num_attention_heads == 0 || !c.hidden_size.is_multiple_of(c.num_attention_heads) {
        return Err(format!(
            "hidden_size {} is not a multiple of num_attention_heads {}",
            c.hidden_size, c.num_attention_heads
        ));
    }
    if c.patch_size == 0 || c.patch_size > c.image_size {
        return Err(format!(
            "patch_size {} does not fit image_size {}",
            c.patch_size, c.image_size
        ));
    }
    Ok(config)
}

/// transformers' default `image_grid_pinpoints`: 1 to 6 tiles of 384 per side.
fn default_pinpoints() -> Vec<[u32; 2]> {
    let sides = (1..=6).map(|k| 384 * k);
    sides
        .clone()
        .flat_map(|h| sides.clone().map(move |w| [h, w]))
        .collect()
}

/// `N` of `"anyres_max_N"`, as transformers reads it: `int(s.strip("anyres_max_"))`.
fn parse_aspect_ratio(s: &str) -> Option<usize> {
    s.trim_matches(|c| "anyres_max_".contains(c))
        .parse()
        .ok()
        .filter(|&n| n > 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    // The hub config of llava-hf/llava-onevision-qwen2-0.5b-ov-hf (transformers 4.45), as
    // published: text and vision configs missing most keys.
    #[test]
    fn hub_config_takes_defaults() {
        let json = json!({
            "architectures": ["LlavaOnevisionForConditionalGeneration"],
            "image_grid_pinpoints": [[384, 384], [384, 768], [768, 384]],
            "image_token_index": 151646,
            "model_type": "llava_onevision",
            "projector_hidden_act": "gelu",
            "text_config": {
                "_name_or_path": "Qwen/Qwen2-0.5B-Instruct",
                "architectures": ["Qwen2ForCausalLM"],
                "bos_token_id": 151643,
                "eos_token_id": 151645,
                "hidden_size": 896,
                "intermediate_size": 4864,
                "max_position_embeddings": 32768,
                "max_window_layers": 24,
                "model_type": "qwen2",
                "num_attention_heads": 14,
                "num_hidden_layers": 24,
                "num_key_value_heads": 2,
                "rope_theta": 1000000.0,
                "tie_word_embeddings": true,
                "torch_dtype": "bfloat16",
                "vocab_size": 152000
            },
            "tie_word_embeddings": false,
            "use_image_newline_parameter": true,
            "video_token_index": 151647,
            "vision_aspect_ratio": "anyres_max_9",
            "vision_config": {
                "hidden_size": 1152,
                "image_size": 384,
                "intermediate_size": 4304,
                "model_type": "siglip_vision_model",
                "num_attention_heads": 16,
                "num_hidden_layers": 26,
                "patch_size": 14,
                "vision_use_head": false
            },
            "vision_feature_layer": -1,
            "vision_feature_select_strategy": "full"
        });
        let c = LlavaOnevisionConfig::from_json(json, Path::new("config.json")).unwrap();
        assert_eq!(c.text.rms_norm_eps, 1e-6);
        assert_eq!(c.text.rope_theta, 1e6);
        assert!(c.text.tie_word_embeddings && c.text.attention_bias);
        assert_eq!(c.vision.activation, Activation::GeluTanh);
        assert_eq!((c.vision.num_channels, c.vision.layer_norm_eps), (3, 1e-6));
        assert_eq!(c.vision_feature_layers, vec![26]);
        assert_eq!(c.vision.patches_per_side(), 27);
        assert_eq!(c.max_num_patches, 9);
        assert_eq!(c.image_token_id, 151_646);
    }

    #[test]
    fn bad_values_are_config_errors() {
        let base = json!({"model_type": "llava_onevision", "text_config": {}});
        let with = |key: &str, value: Value| {
            let mut json = base.clone();
            json[key] = value;
            LlavaOnevisionConfig::from_json(json, Path::new("c.json"))
                .unwrap_err()
                .to_string()
        };
        assert!(with("vision_aspect_ratio", json!("anyres")).contains("anyres_max_N"));
        assert!(with("vision_feature_layer", json!(-40)).contains("out of range"));
        assert!(with("vision_feature_select_strategy", json!("cls")).contains("\"full\""));
        assert!(with("image_grid_pinpoints", json!([[384, 500]])).contains("multiples"));
        assert!(with("vision_config", json!({"hidden_act": "relu6"})).contains("hidden_act"));
        assert!(with("projector_hidden_act", json!("tanh")).contains("projector_hidden_act"));
    }

    #[test]
    fn defaults_follow_transformers() {
        let json = json!({"model_type": "llava_onevision"});
        let c = LlavaOnevisionConfig::from_json(json, Path::new("c.json")).unwrap();
        assert_eq!(c.vision.hidden_size, 1152);
        assert_eq!(c.vision_feature_layers, vec![26]);
        assert_eq!(c.image_grid_pinpoints.len(), 36);
        assert_eq!(c.image_grid_pinpoints[1], [384, 768]);
        assert_eq!((c.text.num_key_value_heads, c.text.hidden_size), (32, 4096));
        assert_eq!(c.feature_select, FeatureSelect::Full);
    }
}
