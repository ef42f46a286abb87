//! LLaVA-OneVision: the SigLIP vision tower reads every tile of every image, a two-layer
//! projector maps the selected hidden states to the language model's width, each image's
//! features are packed into tokens ("anyres": tiles reassembled, unpadded, downsampled beyond
//! `anyres_max_N`, an `image_newline` per row), and those replace the prompt's `<image>`
//! tokens before the language model (Qwen2) runs.
//!
//! Hook paths are transformers 5's in-memory ones: `model.vision_tower.encoder.layers.N`
//! (`[tiles, patches, width]`), `model.multi_modal_projector` (`[tiles, patches, hidden]`),
//! `model.language_model.layers.N...`, `lm_head`. Checkpoints may store tensors in the hub
//! layout (`language_model.model.layers`, `language_model.lm_head`, `vision_tower` or
//! `vision_tower.vision_model`) or in transformers 5's (`model.language_model`,
//! `model.vision_tower`, `lm_head`).

mod anyres;
pub mod config;
pub mod siglip;

use std::path::Path;

use burn::module::{Module, Param};
use burn::nn::Linear;
use burn::tensor::backend::Backend;
use burn::tensor::{DType, Int, Tensor, TensorData};
use image::DynamicImage;
use sae_core::host::int_to_host;
use sae_core::{HookPoint, HookedModule, Hooks};

pub use config::{FeatureSelect, LlavaOnevisionConfig, SiglipConfig};
pub use siglip::{Activation, SiglipVisionTower};

use self::anyres::ImageLayout;
use crate::config::DecoderConfig;
use crate::decoder::{DecoderLm, KvCache, LmOutput};
use crate::error::{ModelError, Result};
use crate::image_processor::{LlavaOnevisionImageInputs, LlavaOnevisionImageProcessor};
use crate::qwen2_vl::scatter_image_tokens;
use crate::scope::LoadScope;
use crate::tap::{Stopped, Tap, linear};
use crate::token_layout::ImageTokenLayout;
use crate::vision_language::VisionLanguage;
use crate::weights::Weights;

/// The projector's hook path.
const PROJECTOR: &str = "model.multi_modal_projector";

/// The module path of the language model in memory.
const TEXT: &str = "model.language_model";

/// The images of a batch as the image processor gives them.
#[derive(Debug, Clone)]
pub struct ImageInput<B: Backend> {
    /// `[images, tiles, channels, height, width]`: per image its tiles, then zero tiles up to
    /// the largest count.
    pub pixel_values: Tensor<B, 5>,
    /// Per image, its original (height, width).
    pub image_sizes: Vec<[usize; 2]>,
    /// Per prompt with images, how many it has: the image of a prompt with one is tiled.
    pub batch_num_images: Vec<usize>,
}

impl<B: Backend> ImageInput<B> {
    /// The processor's output on `device`.
    pub fn from_processed(inputs: &LlavaOnevisionImageInputs, device: &B::Device) -> Self {
        ImageInput {
            pixel_values: inputs.pixel_values.to_float(device),
            image_sizes: inputs.image_sizes.clone(),
            batch_num_images: inputs.batch_num_images.clone(),
        }
    }
}

/// A LLaVA-OneVision forward pass's input (one `<image>` per image token).
pub type VlInput<B> = crate::decoder::VlInput<B, ImageInput<B>>;

/// The multimodal projector: `linear_2(act(linear_1 x))`.
#[derive(Module, Debug)]
pub struct Projector<B: Backend> {
    linear_1: Linear<B>,
    linear_2: Linear<B>,
    #[module(skip)]
    activation: Activation,
}

impl<B: Backend> Projector<B> {
    fn forward(&self, x: Tensor<B, 3>) -> Tensor<B, 3> {
        linear(
            &self.linear_2,
            self.activation.apply(linear(&self.linear_1, x)),
        )
    }
}

/// What turns images into language-model tokens: the tower, the projector, the row ends.
#[derive(Module, Debug)]
struct ImageEncoder<B: Backend> {
    vision_tower: SiglipVisionTower<B>,
    multi_modal_projector: Projector<B>,
    image_newline: Param<Tensor<B, 1>>,
}

/// LLaVA-OneVision for conditional generation (images; videos are not supported yet).
#[derive(Module, Debug)]
pub struct LlavaOnevision<B: Backend> {
    /// `None` when the job gives no images (see [`LoadScope`]).
    images: Option<ImageEncoder<B>>,
    language_model: DecoderLm<B>,
    #[module(skip)]
    config: LlavaOnevisionConfig,
}

impl<B: Backend> LlavaOnevision<B> {
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
        let config = LlavaOnevisionConfig::from_file(&dir.join("config.json"))?;
        let weights = Weights::open_for(dir, dtype, scope)?;
        Self::from_weights(config, &weights, scope, device)
    }

    /// Builds what `scope` needs of the model from its config and weights, in whichever layout
    /// the names show.
    pub fn from_weights(
        config: LlavaOnevisionConfig,
        w: &Weights,
        scope: &LoadScope,
        device: &B::Device,
    ) -> Result<Self> {
        let (root, text, head) = if w.contains("model.language_model.embed_tokens.weight") {
            ("model.", "model.language_model", "lm_head")
        } else {
            ("", "language_model.model", "language_model.lm_head")
        };
        let tower = format!("{root}vision_tower");
        let nested = format!("{tower}.vision_model");
        let tower = if w.contains(&format!("{nested}.embeddings.patch_embedding.weight")) {
            nested
        } else {
            tower
        };
        let (vision_width, hidden) = (config.vision_feature_width(), config.text.hidden_size);
        let projector = |name: &str, d_in| {
            let name = format!("{root}multi_modal_projector.{name}");
            w.linear(&name, d_in, hidden, config.projector_bias, device)
        };
        let images = || -> Result<ImageEncoder<B>> {
            Ok(ImageEncoder {
                vision_tower: SiglipVisionTower::load(
                    config.vision.clone(),
                    config.vision_feature_layers.clone(),
                    w,
                    &tower,
                    device,
                )?,
                multi_modal_projector: Projector {
                    linear_1: projector("linear_1", vision_width)?,
                    linear_2: projector("linear_2", hidden)?,
                    activation: config.projector_activation,
                },
                image_newline: Param::from_tensor(w.tensor(
                    &format!("{root}image_newline"),
                    [hidden],
                    device,
                )?),
            })
        };
        Ok(LlavaOnevision {
            images: scope.vision(TEXT).then(images).transpose()?,
            language_model: DecoderLm::from_weights_with_head(
                config.text.clone(),
                w,
                text,
                head,
                TEXT,
                scope,
                device,
            )?,
            config,
        })
    }

    /// The model's configuration.
    pub fn config(&self) -> &LlavaOnevisionConfig {
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
        let layouts = match &input.images {
            Some(images) => self.image_layouts(images)?,
            None => Vec::new(),
        };
        if !layouts.is_empty() && self.images.is_none() {
            return Err(ModelError::NoVisionTower);
        }
        let patches = self.patches_per_tile();
        let expected: usize = layouts.iter().map(|l| l.tokens(patches)).sum();
        let image_tokens = ids
            .iter()
            .filter(|&&id| id == self.config.image_token_id)
            .count();
        if image_tokens != expected {
            return Err(ModelError::BadInput(format!(
                "the prompt has {image_tokens} image tokens but the images give {expected}"
            )));
        }
        let logits = self
            .run(input, &ids, &layouts, &mut Tap { hooks }, cache)
            .ok();
        Ok(LmOutput { logits })
    }

    /// The language-model tokens each image takes, from the processor's `image_sizes` and
    /// `batch_num_images` (the image of a prompt with one is tiled).
    pub fn image_token_counts(
        &self,
        image_sizes: &[[usize; 2]],
        batch_num_images: &[usize],
    ) -> Vec<usize> {
        let patches = self.patches_per_tile();
        self.layouts_of(image_sizes, batch_num_images)
            .iter()
            .map(|l| l.tokens(patches))
            .collect()
    }

    /// Each image's tokens and their grid over the whole image: a tiled image's reassembled
    /// tile map (after the whole-image view, each row ending in an `image_newline`), or the
    /// whole-image view of an image that is not tiled (when its features are a square grid).
    pub fn token_layouts(
        &self,
        image_sizes: &[[usize; 2]],
        batch_num_images: &[usize],
    ) -> Vec<ImageTokenLayout> {
        let (patches, side) = (
            self.patches_per_tile(),
            self.config.vision.patches_per_side(),
        );
        (self.layouts_of(image_sizes, batch_num_images).iter())
            .map(|l| ImageTokenLayout {
                tokens: l.tokens(patches),
                grid: l.token_grid(patches, side),
            })
            .collect()
    }

    /// Each image's layout (the image of a prompt with one is tiled).
    fn layouts_of(
        &self,
        image_sizes: &[[usize; 2]],
        batch_num_images: &[usize],
    ) -> Vec<ImageLayout> {
        let tiled = batch_num_images
            .iter()
            .flat_map(|&k| std::iter::repeat_n(k == 1, k));
        image_sizes
            .iter()
            .zip(tiled)
            .map(|(&size, tiled)| ImageLayout::new(size, tiled, &self.config))
            .collect()
    }

    /// Features per tile the projector reads.
    fn patches_per_tile(&self) -> usize {
        let side = self.config.vision.patches_per_side();
        match self.config.feature_select {
            FeatureSelect::Full => side * side,
            FeatureSelect::Default => side * side - 1,
        }
    }

    /// Each image's layout, once `images` are checked against each other and the config.
    fn image_layouts(&self, images: &ImageInput<B>) -> Result<Vec<ImageLayout>> {
        let v = &self.config.vision;
        let [n, max_tiles, channels, height, width] = images.pixel_values.dims();
        let expected = [v.num_channels, v.image_size, v.image_size];
        if [channels, height, width] != expected {
            return Err(ModelError::BadInput(format!(
                "pixel_values has tiles of {:?}, but the vision tower reads {expected:?}",
                [channels, height, width]
            )));
        }
        let counted: usize = images.batch_num_images.iter().sum();
        if images.image_sizes.len() != n || counted != n {
            return Err(ModelError::BadInput(format!(
                "pixel_values has {n} images, image_sizes {} and batch_num_images {counted}",
                images.image_sizes.len()
            )));
        }
        let layouts = self.layouts_of(&images.image_sizes, &images.batch_num_images);
        if let Some(l) = layouts.iter().find(|l| l.tiles > max_tiles) {
            return Err(ModelError::BadInput(format!(
                "an image needs {} tiles but pixel_values has {max_tiles}",
                l.tiles
            )));
        }
        if self.config.feature_select == FeatureSelect::Default
            && layouts.iter().any(ImageLayout::is_tiled)
        {
            return Err(ModelError::BadInput(
                "vision_feature_select_strategy \"default\" drops a patch per tile, so tiled \
                 images cannot be reassembled (transformers refuses them too)"
                    .into(),
            ));
        }
        Ok(layouts)
    }

    /// The vision tower, the projector and the packing, the image tokens spliced in, then the
    /// language model.
    fn run(
        &self,
        input: VlInput<B>,
        ids: &[i64],
        layouts: &[ImageLayout],
        tap: &mut Tap<B>,
        cache: &mut KvCache<B>,
    ) -> std::result::Result<Tensor<B, 3>, Stopped> {
        let mut embeds = self.language_model.embed(input.input_ids);
        if let Some(images) = input.images.filter(|_| !layouts.is_empty()) {
            let features = self.image_features(images.pixel_values, layouts, tap)?;
            embeds = scatter_image_tokens(embeds, features, ids, self.config.image_token_id);
        }
        self.language_model
            .run(embeds, input.attention_mask, None, tap, cache)
    }

    /// The language-model tokens `[image tokens, hidden]` of all images, in order.
    fn image_features(
        &self,
        pixel_values: Tensor<B, 5>,
        layouts: &[ImageLayout],
        tap: &mut Tap<B>,
    ) -> std::result::Result<Tensor<B, 2>, Stopped> {
        let [n, max_tiles, c, h, w] = pixel_values.dims();
        let device = pixel_values.device();
        // Each image's own tiles, without the zero tiles that pad it.
        let rows: Vec<i64> = layouts
            .iter()
            .enumerate()
            .flat_map(|(i, l)| (0..l.tiles).map(move |t| (i * max_tiles + t) as i64))
            .collect();
        let count = rows.len();
        let rows = Tensor::<B, 1, Int>::from_data(TensorData::new(rows, [count]), &device);
        let tiles = pixel_values
            .reshape([n * max_tiles, c, h, w])
            .select(0, rows);
        let encoder = self.images.as_ref().ok_or(Stopped)?;
        let hidden = encoder.vision_tower.forward(tiles, tap)?;
        let hidden = match self.config.feature_select {
            FeatureSelect::Full => hidden,
            FeatureSelect::Default => {
                let [t, p, d] = hidden.dims();
                hidden.slice([0..t, 1..p, 0..d])
            }
        };
        let projected = tap.call(PROJECTOR, encoder.multi_modal_projector.forward(hidden))?;
        let [_, patches, d] = projected.dims();
        let mut start = 0;
        let packed = layouts
            .iter()
            .map(|l| {
                let tiles = projected
                    .clone()
                    .slice([start..start + l.tiles, 0..patches, 0..d]);
                start += l.tiles;
                l.pack(tiles, encoder.image_newline.val())
            })
            .collect();
        Ok(Tensor::cat(packed, 0))
    }
}

impl<B: Backend> VisionLanguage<B> for LlavaOnevision<B> {
    type Images = LlavaOnevisionImageInputs;
    type Processor = LlavaOnevisionImageProcessor;
    const MODEL_TYPES: &'static [&'static str] = config::SUPPORTED;
    const PLACEHOLDER: &'static str = "<image>";

    fn load_network(
        dir: &Path,
        dtype: DType,
        scope: &LoadScope,
        device: &B::Device,
    ) -> Result<Self> {
        Self::load_scoped(dir, dtype, scope, device)
    }

    fn hook_points_of(dir: &Path) -> Result<Vec<HookPoint>> {
        Ok(LlavaOnevisionConfig::from_file(&dir.join("config.json"))?.hook_points())
    }

    fn text_config(&self) -> &DecoderConfig {
        &self.config.text
    }

    fn image_token(&self) -> i64 {
        self.config.image_token_id
    }

    fn process_images(
        &self,
        processor: &LlavaOnevisionImageProcessor,
        images: &[DynamicImage],
    ) -> Result<(LlavaOnevisionImageInputs, Vec<usize>)> {
        let processed = processor.preprocess_prompts(&[images])?;
        let counts = self.image_token_counts(&processed.image_sizes, &processed.batch_num_images);
        Ok((processed, counts))
    }

    fn token_layouts(
        &self,
        _: &LlavaOnevisionImageProcessor,
        images: &LlavaOnevisionImageInputs,
    ) -> Vec<ImageTokenLayout> {
        LlavaOnevision::token_layouts(self, &images.image_sizes, &images.batch_num_images)
    }

    fn forward_processed(
        &self,
        input: crate::decoder::VlInput<B, LlavaOnevisionImageInputs>,
        cache: &mut KvCache<B>,
        hooks: &mut dyn Hooks<B>,
    ) -> Result<LmOutput<B>> {
        let device = input.input_ids.device();
        let images = input
            .images
            .map(|i| ImageInput::from_processed(&i, &device));
        let input = VlInput {
            input_ids: input.input_ids,
            attention_mask: input.attention_mask,
            images,
        };
        self.forward_cached(input, cache, hooks)
    }
}

impl<B: Backend> HookedModule<B> for LlavaOnevision<B> {
    type Input = VlInput<B>;
    type Output = Result<LmOutput<B>>;

    fn hook_points(&self) -> Vec<HookPoint> {
        self.config.hook_points()
    }

    fn forward_hooked(&self, input: VlInput<B>, hooks: &mut dyn Hooks<B>) -> Result<LmOutput<B>> {
        self.forward_cached(input, &mut KvCache::new(), hooks)
    }
}
