//! What a Qwen2-VL or Qwen2.5-VL `config.json` says: the transformers 5 layout (`text_config`,
//! `vision_config`) and the hub's older one (text keys at top level, `rope_scaling` with
//! `mrope_section`).

use std::path::Path;

use serde::Deserialize;
use serde_json::Value;

use sae_core::{HookKind, HookPoint};

use super::vision::{Activation, PREFIX};
use crate::config::{DecoderConfig, check_model_type, read_model_config};
use crate::error::{ModelError, Result, bad_config};

/// The `model_type`s this port runs.
pub const SUPPORTED: &[&str] = &["qwen2_vl", "qwen2_5_vl"];

/// Qwen2.5-VL's window attention.
#[derive(Debug, Clone, PartialEq)]
pub struct WindowConfig {
    /// Window side in pixels (112 in the released models).
    pub window_size: usize,
    /// Blocks that attend over the whole image instead.
    pub fullatt_block_indexes: Vec<usize>,
}

/// The vision tower's configuration, for both generations.
#[derive(Debug, Clone, PartialEq)]
pub struct VisionConfig {
    /// Blocks.
    pub depth: usize,
    /// Width of the blocks.
    pub embed_dim: usize,
    /// Width of the merger's output (the language model's).
    pub out_dim: usize,
    /// Attention heads.
    pub num_heads: usize,
    /// MLP width.
    pub intermediate_size: usize,
    /// The MLP's activation.
    pub activation: Activation,
    /// Gated MLP with RMSNorm (Qwen2.5-VL) instead of a plain one with LayerNorm (Qwen2-VL).
    pub gated_mlp: bool,
    /// RMSNorm instead of LayerNorm.
    pub rms_norm: bool,
    /// Image channels.
    pub in_channels: usize,
    /// Patch side in pixels.
    pub patch_size: usize,
    /// Frames per patch.
    pub temporal_patch_size: usize,
    /// Patches merged per side into one language-model token.
    pub spatial_merge_size: usize,
    /// RoPE base of the axial embedding.
    pub rope_theta: f64,
    /// Window attention (Qwen2.5-VL).
    pub window: Option<WindowConfig>,
}

/// A Qwen2-VL / Qwen2.5-VL configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct Qwen2VlConfig {
    /// `qwen2_vl` or `qwen2_5_vl`.
    pub model_type: String,
    /// The language model (M-RoPE Qwen2).
    pub text: DecoderConfig,
    /// The vision tower.
    pub vision: VisionConfig,
    /// `<|image_pad|>`, one per image token.
    pub image_token_id: i64,
    /// `<|video_pad|>`.
    pub video_token_id: Option<i64>,
}

#[derive(Deserialize)]
struct RawVision {
    depth: usize,
    embed_dim: Option<usize>,
    hidden_size: usize,
    out_hidden_size: Option<usize>,
    num_heads: usize,
    mlp_ratio: Option<f64>,
    intermediate_size: Option<usize>,
    hidden_act: Option<String>,
    #[serde(default = "three", alias = "in_chans")]
    in_channels: usize,
    patch_size: usize,
    temporal_patch_size: usize,
    spatial_merge_size: usize,
    rope_parameters: Option<RawRope>,
    window_size: Option<usize>,
    #[serde(default)]
    fullatt_block_indexes: Vec<usize>,
}

#[derive(Deserialize)]
struct RawRope {
    rope_theta: Option<f64>,
}

fn three() -> usize {
    3
}

impl VisionConfig {
    /// The tower's hook points, in the order the forward pass calls them.
    pub fn hook_points(&self) -> Vec<HookPoint> {
        let (e, kind) = (self.embed_dim, HookKind::Vision);
        let mut points: Vec<HookPoint> = (0..self.depth)
            .flat_map(|i| {
                let p = format!("{PREFIX}.blocks.{i}");
                [
                    HookPoint::new(format!("{p}.attn"), e, kind),
                    HookPoint::new(format!("{p}.mlp"), e, kind),
                    HookPoint::new(p, e, kind),
                ]
            })
            .collect();
        points.push(HookPoint::new(
            format!("{PREFIX}.merger"),
            self.out_dim,
            kind,
        ));
        points
    }

    /// Checks that `pixel_values` (`[patches, C T P P]`) fit the grids.
    pub(crate) fn check(&self, dims: [usize; 2], grids: &[[usize; 3]]) -> Result<()> {
        let c = self;
        let width = c.in_channels * c.temporal_patch_size * c.patch_size * c.patch_size;
        let expected: usize = grids.iter().map(|g| g[0] * g[1] * g[2]).sum();
        let merge = c.spatial_merge_size;
        if let Some(g) = grids
            .iter()
            .find(|g| g[1] % merge != 0 || g[2] % merge != 0)
        {
            return Err(ModelError::BadInput(format!(
                "image grid {g:?} is not a multiple of the merge size {merge}"
            )));
        }
        if dims != [expected, width] {
            return Err(ModelError::BadInput(format!(
                "pixel_values has shape {dims:?} but image_grid_thw describes [{expected}, {width}]"
            )));
        }
        Ok(())
    }

    /// Tokens per image for the language model: `t h w / merge^2`.
    pub(crate) fn tokens_per_image(&self, grid: [usize; 3]) -> usize {
        let m = self.spatial_merge_size;
        grid[0] * grid[1] * grid[2] / (m * m)
    }
}

impl Qwen2VlConfig {
    /// The model's hook points in forward order: the vision tower's, then the language model's.
    pub fn hook_points(&self) -> Vec<HookPoint> {
        let mut points = self.vision.hook_points();
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
        let model_type = json["model_type"].as_str().unwrap_or_default().to_string();
        let qwen25 = model_type == "qwen2_5_vl";
        // transformers 5 nests the text model; hub configs keep it at top level.
        let mut text_json = json
            .get("text_config")
            .cloned()
            .unwrap_or_else(|| json.clone());
        if let Some(map) = text_json.as_object_mut() {
            map.insert("model_type".into(), Value::from("qwen2"));
            map.remove("vision_config");
        }
        let text = DecoderConfig::from_json(text_json, file)?;
        if text.mrope_section.is_none() {
            return Err(bad("the text config has no mrope_section".into()));
        }
        let raw: RawVision =
            serde_json::from_value(json.get("vision_config").cloned().unwrap_or_default())
                .map_err(|e| bad(format!("vision_config: {e}")))?;
        // Hub configs of Qwen2-VL leave the activation out (transformers' default: quick_gelu).
        let act = raw
            .hidden_act
            .as_deref()
            .unwrap_or(if qwen25 { "silu" } else { "quick_gelu" });
        let activation = Activation::from_name(act)
            .ok_or_else(|| bad(format!("vision activation {act:?} is not supported")))?;
        // Qwen2-VL calls the block width `embed_dim` and the output `hidden_size`; Qwen2.5-VL
        // calls them `hidden_size` and `out_hidden_size`.
        let (embed_dim, out_dim) = if qwen25 {
            (
                raw.hidden_size,
                raw.out_hidden_size.unwrap_or(text.hidden_size),
            )
        } else {
            (raw.embed_dim.unwrap_or(raw.hidden_size), raw.hidden_size)
        };
        let intermediate_size = match (raw.intermediate_size, raw.mlp_ratio) {
            (Some(size), _) if qwen25 => size,
            (_, Some(ratio)) => (embed_dim as f64 * ratio) as usize,
            (Some(size), None) => size,
            (None, None) => {
                return Err(bad(
                    "vision_config has neither intermediate_size nor mlp_ratio".into(),
                ));
            }
        };
        if raw.num_heads == 0 || embed_dim % raw.num_heads != 0 {
            return Err(bad(format!(
                "vision width {embed_dim} is not a multiple of num_heads {}",
                raw.num_heads
            )));
        }
        let vision = VisionConfig {
            depth: raw.depth,
            embed_dim,
            out_dim,
            num_heads: raw.num_heads,
            intermediate_size,
            activation,
            gated_mlp: qwen25,
            rms_norm: qwen25,
            in_channels: raw.in_channels,
            patch_size: raw.patch_size,
            temporal_patch_size: raw.temporal_patch_size,
            spatial_merge_size: raw.spatial_merge_size,
            rope_theta: raw
                .rope_parameters
                .and_then(|r| r.rope_theta)
                .unwrap_or(10_000.0),
            window: qwen25.then(|| WindowConfig {
                window_size: raw.window_size.unwrap_or(112),
                fullatt_block_indexes: raw.fullatt_block_indexes,
            }),
        };
        let token = |key: &str| json.get(key).and_then(Value::as_i64);
        Ok(Qwen2VlConfig {
            model_type,
            text,
            vision,
            image_token_id: token("image_token_id")
                .ok_or_else(|| bad("image_token_id is missing".into()))?,
            video_token_id: token("video_token_id"),
        })
    }
}
