//! Qwen2-VL and Qwen2.5-VL: the vision tower turns each image into tokens that replace the
//! prompt's `<|image_pad|>` tokens, and the language model (Qwen2 with M-RoPE) runs on the
//! result. Text tokens take 1-D positions; an image's tokens take (temporal, row, column)
//! positions on its merged grid, and the text after it continues from the largest of them
//! (transformers' `get_rope_index`).
//!
//! Hook paths are transformers 5's in-memory ones: `model.visual.blocks.N`,
//! `model.visual.merger`, `model.language_model.layers.N...`, `lm_head`.

pub mod config;
pub mod vision;

use std::path::Path;

use burn::module::Module;
use burn::tensor::backend::Backend;
use burn::tensor::{Bool, DType, Int, Tensor, TensorData};
use image::DynamicImage;
use sae_core::host::int_to_host;
use sae_core::{HookPoint, HookedModule, Hooks};

pub use config::{Qwen2VlConfig, VisionConfig, WindowConfig};
pub use vision::VisionTower;

use crate::config::DecoderConfig;
use crate::decoder::{DecoderLm, KvCache, LmOutput};
use crate::error::{ModelError, Result};
use crate::image_processor::{Qwen2VlImageInputs, Qwen2VlImageProcessor};
use crate::scope::LoadScope;
use crate::tap::{Stopped, Tap};
use crate::token_layout::{ImageTokenLayout, TokenGrid};
use crate::vision_language::VisionLanguage;
use crate::weights::Weights;

/// The module path of the language model in memory.
const TEXT: &str = "model.language_model";

/// The images of a batch as the image processor gives them.
#[derive(Debug, Clone)]
pub struct ImageInput<B: Backend> {
    /// `[patches, C x T x P x P]`, all images one after the other.
    pub pixel_values: Tensor<B, 2>,
    /// (t, h, w) in patches, per image, in prompt order.
    pub grid_thw: Vec<[usize; 3]>,
}

/// A Qwen2-VL forward pass's input (one `<|image_pad|>` per image token).
pub type VlInput<B> = crate::decoder::VlInput<B, ImageInput<B>>;

/// Qwen2-VL / Qwen2.5-VL for conditional generation.
#[derive(Module, Debug)]
pub struct Qwen2Vl<B: Backend> {
    /// `None` when the job gives no images (see [`LoadScope`]).
    visual: Option<VisionTower<B>>,
    language_model: DecoderLm<B>,
    #[module(skip)]
    config: Qwen2VlConfig,
}

impl<B: Backend> Qwen2Vl<B> {
    /// Loads all of a Hugging Face model folder, computing in `dtype` (F32, F16 or BF16).
    pub fn load_as(dir: &Path, dtype: DType, device: &B::Device) -> Result<Self> {
        Self::load_scoped(dir, dtype, &LoadScope::whole(true), device)
    }

    /// Loads what `scope` needs of a Hugging Face model folder, computing in `dtype`.
    pub fn load_scoped(
        dir: &Path,
        dtype: DType,
        scope: &LoadScope,
        device: &B::Device,
    ) -> Result<Self> {
        let config = Qwen2VlConfig::from_file(&dir.join("config.json"))?;
        let weights = Weights::open_for(dir, dtype, scope)?;
        Self::from_weights(config, &weights, scope, device)
    }

    /// Builds what `scope` needs of the model from its config and weights: the hub layout
    /// (`model.layers`, `visual`) or transformers 5's (`model.language_model.layers`,
    /// `model.visual`).
    pub fn from_weights(
        config: Qwen2VlConfig,
        w: &Weights,
        scope: &LoadScope,
        device: &B::Device,
    ) -> Result<Self> {
        let (text, visual) = if w.contains("model.language_model.embed_tokens.weight") {
            ("model.language_model", "model.visual")
        } else {
            ("model", "visual")
        };
        Ok(Qwen2Vl {
            visual: scope
                .vision(TEXT)
                .then(|| VisionTower::load(config.vision.clone(), w, visual, device))
                .transpose()?,
            language_model: DecoderLm::from_weights_at(
                config.text.clone(),
                w,
                text,
                TEXT,
                scope,
                device,
            )?,
            config,
        })
    }

    /// The model's configuration.
    pub fn config(&self) -> &Qwen2VlConfig {
        &self.config
    }

    /// The forward pass over new tokens after those in `cache` (which it extends); images may
    /// come only with the first call. Hooks see the new tokens only.
    pub fn forward_cached(
        &self,
        input: VlInput<B>,
        cache: &mut KvCache<B>,
        hooks: &mut dyn Hooks<B>,
    ) -> Result<LmOutput<B>> {
        let ids = int_to_host(input.input_ids.clone());
        let [b, t] = input.input_ids.dims();
        let mask = input.attention_mask.clone().map(int_to_host);
        let grids = input.images.as_ref().map_or(&[][..], |i| &i.grid_thw);
        let image_token = self.config.image_token_id;
        let image_tokens = ids.iter().filter(|&&id| id == image_token).count();
        let vision = &self.config.vision;
        let expected: usize = grids.iter().map(|&g| vision.tokens_per_image(g)).sum();
        if image_tokens != expected {
            return Err(ModelError::BadInput(format!(
                "the prompt has {image_tokens} image tokens but the images give {expected}"
            )));
        }
        if let Some(images) = &input.images {
            vision.check(images.pixel_values.dims(), grids)?;
            if self.visual.is_none() {
                return Err(ModelError::NoVisionTower);
            }
        }
        let positions = (!grids.is_empty() || cache.is_empty()).then(|| {
            rope_index(
                &ids,
                mask.as_deref(),
                (b, t),
                grids,
                image_token,
                self.config.vision.spatial_merge_size,
            )
        });
        let logits = self
            .run(input, &ids, positions, &mut Tap { hooks }, cache)
            .ok();
        Ok(LmOutput { logits })
    }

    /// The vision tower, the image tokens spliced in, then the language model.
    fn run(
        &self,
        input: VlInput<B>,
        ids: &[i64],
        positions: Option<(Vec<[i64; 3]>, Vec<i64>)>,
        tap: &mut Tap<B>,
        cache: &mut KvCache<B>,
    ) -> std::result::Result<Tensor<B, 3>, Stopped> {
        let mut embeds = self.language_model.embed(input.input_ids);
        if let Some(images) = input.images {
            let visual = self.visual.as_ref().ok_or(Stopped)?;
            let features = visual.forward(images.pixel_values, &images.grid_thw, tap)?;
            embeds = scatter_image_tokens(embeds, features, ids, self.config.image_token_id);
        }
        self.language_model
            .run(embeds, input.attention_mask, positions, tap, cache)
    }
}

impl<B: Backend> HookedModule<B> for Qwen2Vl<B> {
    type Input = VlInput<B>;
    type Output = Result<LmOutput<B>>;

    fn hook_points(&self) -> Vec<HookPoint> {
        self.config.hook_points()
    }

    fn forward_hooked(&self, input: VlInput<B>, hooks: &mut dyn Hooks<B>) -> Result<LmOutput<B>> {
        self.forward_cached(input, &mut KvCache::new(), hooks)
    }
}

impl<B: Backend> VisionLanguage<B> for Qwen2Vl<B> {
    type Images = Qwen2VlImageInputs;
    type Processor = Qwen2VlImageProcessor;
    const MODEL_TYPES: &'static [&'static str] = config::SUPPORTED;
    const PLACEHOLDER: &'static str = "<|image_pad|>";
    const TOKEN_TYPE_IDS: bool = true;

    fn load_network(
        dir: &Path,
        dtype: DType,
        scope: &LoadScope,
        device: &B::Device,
    ) -> Result<Self> {
        Self::load_scoped(dir, dtype, scope, device)
    }

    fn hook_points_of(dir: &Path) -> Result<Vec<HookPoint>> {
        Ok(Qwen2VlConfig::from_file(&dir.join("config.json"))?.hook_points())
    }

    fn text_config(&self) -> &DecoderConfig {
        &self.config.text
    }

    fn image_token(&self) -> i64 {
        self.config.image_token_id
    }

    fn process_images(
        &self,
        processor: &Qwen2VlImageProcessor,
        images: &[DynamicImage],
    ) -> Result<(Qwen2VlImageInputs, Vec<usize>)> {
        let processed = processor.preprocess(images)?;
        let merge = processor.merge_size as usize;
        let counts = (processed.image_grid_thw.iter())
            .map(|g| g[0] * g[1] * g[2] / (merge * merge))
            .collect();
        Ok((processed, counts))
    }

    /// One token per `merge x merge` patches, in raster order (a grid for single frames).
    fn token_layouts(
        &self,
        processor: &Qwen2VlImageProcessor,
        images: &Qwen2VlImageInputs,
    ) -> Vec<ImageTokenLayout> {
        let merge = processor.merge_size as usize;
        (images.image_grid_thw.iter())
            .map(|&[t, h, w]| {
                let (rows, cols) = (h / merge, w / merge);
                let grid = TokenGrid {
                    offset: 0,
                    rows,
                    cols,
                    stride: cols,
                };
                ImageTokenLayout {
                    tokens: t * rows * cols,
                    grid: (t == 1).then_some(grid),
                }
            })
            .collect()
    }

    fn forward_processed(
        &self,
        input: crate::decoder::VlInput<B, Qwen2VlImageInputs>,
        cache: &mut KvCache<B>,
        hooks: &mut dyn Hooks<B>,
    ) -> Result<LmOutput<B>> {
        let device = input.input_ids.device();
        let input = input.map_images(|i| {
            Ok(ImageInput {
                pixel_values: i.pixel_values.to_float(&device),
                grid_thw: i.image_grid_thw,
            })
        })?;
        self.forward_cached(input, cache, hooks)
    }

    /// The vision tower works on `[patches, width]`, without the batch dimension hooks carry.
    fn transformers_shape(path: &str, shape: &[usize]) -> Vec<usize> {
        match shape {
            [1, rest @ ..] if path.starts_with("model.visual.") => rest.to_vec(),
            _ => shape.to_vec(),
        }
    }
}

/// `embeds` (`[batch, tokens, d]`) with the rows of `image_token` replaced, in order, by the
/// rows of `features` (`[image tokens, d]`).
pub(crate) fn scatter_image_tokens<B: Backend>(
    embeds: Tensor<B, 3>,
    features: Tensor<B, 2>,
    ids: &[i64],
    image_token: i64,
) -> Tensor<B, 3> {
    let [b, t, d] = embeds.dims();
    let device = embeds.device();
    let mut next = 0i64;
    let rows: Vec<i64> = ids
        .iter()
        .map(|&id| {
            if id == image_token {
                next += 1;
                next - 1
            } else {
                0
            }
        })
        .collect();
    let take: Vec<bool> = ids
        .iter()
        .flat_map(|&id| std::iter::repeat_n(id == image_token, d))
        .collect();
    let rows = Tensor::<B, 1, Int>::from_data(TensorData::new(rows, [b * t]), &device);
    let gathered = features
        .cast(embeds.dtype())
        .select(0, rows)
        .reshape([b, t, d]);
    let take = Tensor::<B, 3, Bool>::from_data(TensorData::new(take, [b, t, d]), &device);
    embeds.mask_where(take, gathered)
}

/// transformers' `get_rope_index`: (t, h, w) positions of every token of a `[batch, tokens]`
/// prompt (padding excluded and left at 0), and each row's delta (largest position + 1 minus
/// its real tokens) that later text positions add.
pub fn rope_index(
    ids: &[i64],
    mask: Option<&[i64]>,
    (b, t): (usize, usize),
    grids: &[[usize; 3]],
    image_token: i64,
    merge: usize,
) -> (Vec<[i64; 3]>, Vec<i64>) {
    let mut positions = vec![[0i64; 3]; b * t];
    let mut deltas = Vec::with_capacity(b);
    let mut grids = grids.iter();
    for row in 0..b {
        let real: Vec<usize> = (0..t)
            .filter(|&i| mask.is_none_or(|m| m[row * t + i] != 0))
            .collect();
        let mut current = 0i64;
        let mut max = -1i64;
        let mut k = 0;
        while k < real.len() {
            let is_image = |j: usize| ids[row * t + real[j]] == image_token;
            let start = k;
            while k < real.len() && is_image(k) == is_image(start) {
                k += 1;
            }
            if !is_image(start) {
                for (offset, j) in (start..k).enumerate() {
                    let p = current + offset as i64;
                    positions[row * t + real[j]] = [p; 3];
                    max = max.max(p);
                }
                current += (k - start) as i64;
            } else if let Some(&[gt, gh, gw]) = grids.next() {
                let (lh, lw) = (gh / merge, gw / merge);
                let mut j = start;
                for frame in 0..gt {
                    for r in 0..lh {
                        for c in 0..lw {
                            if j < k {
                                let p = [
                                    current + frame as i64,
                                    current + r as i64,
                                    current + c as i64,
                                ];
                                positions[row * t + real[j]] = p;
                                max = max.max(p[0].max(p[1]).max(p[2]));
                            }
                            j += 1;
                        }
                    }
                }
                current += (lh.max(lw)) as i64;
            }
        }
        deltas.push(max + 1 - real.len() as i64);
    }
    (positions, deltas)
}

#[cfg(test)]
mod tests {
    use super::*;

    // transformers' docstring example shape: text "a b" then one image with merged grid
    // 1 x 2 x 3 (t, h/2, w/2), then text "c": text 0 1; image t=2, rows 2 3, columns 2 3 4;
    // the text after it starts at 2 + max(2, 3) = 5.
    #[test]
    fn rope_index_follows_transformers() {
        let ids = [5, 6, 9, 9, 9, 9, 9, 9, 7];
        let (p, d) = rope_index(&ids, None, (1, 9), &[[1, 4, 6]], 9, 2);
        let expected = [
            [0, 0, 0],
            [1, 1, 1],
            [2, 2, 2],
            [2, 2, 3],
            [2, 2, 4],
            [2, 3, 2],
            [2, 3, 3],
            [2, 3, 4],
            [5, 5, 5],
        ];
        assert_eq!(p, expected);
        assert_eq!(d, vec![6 - 9]);
    }
}
