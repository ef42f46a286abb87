//! A vision-language model ready to use: the network (Qwen2-VL / Qwen2.5-VL or
//! LLaVA-OneVision), its tokenizer and chat template, and its image processor, loaded from a
//! folder or hub id. Prompts are built as transformers' processors build them: images first in
//! one user turn, each image's placeholder expanded to the number of tokens the image takes.

use std::path::Path;

use burn::tensor::backend::Backend;
use burn::tensor::{DType, Int, Tensor, TensorData};
use image::DynamicImage;
use sae_core::{HookPoint, HookedModule, Hooks, HostTensor};

use crate::config::DecoderConfig;
use crate::decoder::{KvCache, LmOutput};
use crate::error::{ModelError, Result};
use crate::generate::{ImageLm, WithImages};
use crate::image_processor::{LlavaOnevisionImageProcessor, Qwen2VlImageProcessor};
use crate::language_model::{Prompt, add_eos, generation_eos};
use crate::llava_onevision::{self, LlavaOnevision};
use crate::qwen2_vl::{self, Qwen2Vl};
use crate::source::ModelSource;
use crate::tokenizer::{Message, Tokenizer};

/// The vision-language networks, each with its own image inputs.
#[derive(Debug)]
pub enum VisionNetwork<B: Backend> {
    /// Qwen2-VL / Qwen2.5-VL.
    Qwen2Vl(Qwen2Vl<B>),
    /// LLaVA-OneVision.
    LlavaOnevision(LlavaOnevision<B>),
}

/// Their image processors.
#[derive(Debug, Clone)]
pub enum ImageProcessor {
    /// Qwen2-VL's: patches of a resized image.
    Qwen2Vl(Qwen2VlImageProcessor),
    /// LLaVA-OneVision's: tiles of a padded image.
    LlavaOnevision(LlavaOnevisionImageProcessor),
}

/// Processed images of one or more prompts, on the host, as each processor returns them.
#[derive(Debug, Clone, PartialEq)]
pub enum ProcessedImages {
    /// `pixel_values [patches, C x T x P x P]` (images one after the other), `image_grid_thw`.
    Qwen2Vl {
        pixel_values: HostTensor,
        image_grid_thw: Vec<[usize; 3]>,
    },
    /// `pixel_values [images, tiles, C, H, W]` (zero tiles up to the largest count),
    /// `image_sizes` (height, width), `batch_num_images` (per prompt).
    LlavaOnevision {
        pixel_values: HostTensor,
        image_sizes: Vec<[usize; 2]>,
        batch_num_images: Vec<usize>,
    },
}

impl ProcessedImages {
    /// How many images.
    pub fn count(&self) -> usize {
        match self {
            ProcessedImages::Qwen2Vl { image_grid_thw, .. } => image_grid_thw.len(),
            ProcessedImages::LlavaOnevision { image_sizes, .. } => image_sizes.len(),
        }
    }

    /// The pixel values.
    pub fn pixel_values(&self) -> &HostTensor {
        match self {
            ProcessedImages::Qwen2Vl { pixel_values, .. }
            | ProcessedImages::LlavaOnevision { pixel_values, .. } => pixel_values,
        }
    }

    /// The images of several prompts, one after the other (`None` when there are none). All
    /// parts come from the same processor.
    pub fn concat(parts: Vec<ProcessedImages>) -> Option<Self> {
        if parts.is_empty() {
            return None;
        }
        let pixels = stack(&parts.iter().map(Self::pixel_values).collect::<Vec<_>>());
        let mut parts = parts.into_iter();
        let mut all = parts.next()?;
        for part in parts {
            match (&mut all, part) {
                (
                    ProcessedImages::Qwen2Vl { image_grid_thw, .. },
                    ProcessedImages::Qwen2Vl {
                        image_grid_thw: more,
                        ..
                    },
                ) => image_grid_thw.extend(more),
                (
                    ProcessedImages::LlavaOnevision {
                        image_sizes,
                        batch_num_images,
                        ..
                    },
                    ProcessedImages::LlavaOnevision {
                        image_sizes: sizes,
                        batch_num_images: counts,
                        ..
                    },
                ) => {
                    image_sizes.extend(sizes);
                    batch_num_images.extend(counts);
                }
                _ => unreachable!("parts of one processor"),
            }
        }
        match &mut all {
            ProcessedImages::Qwen2Vl { pixel_values, .. }
            | ProcessedImages::LlavaOnevision { pixel_values, .. } => *pixel_values = pixels,
        }
        Some(all)
    }

    /// The processor's outputs named as transformers names them (`inputs.pixel_values`, ...).
    pub fn tensors(&self) -> Vec<(String, HostTensor)> {
        let flat = |v: &[usize]| v.iter().map(|&v| v as i64).collect::<Vec<_>>();
        let mut out = vec![(
            "inputs.pixel_values".to_string(),
            self.pixel_values().clone(),
        )];
        match self {
            ProcessedImages::Qwen2Vl { image_grid_thw, .. } => out.push((
                "inputs.image_grid_thw".into(),
                HostTensor::i64(
                    vec![image_grid_thw.len(), 3],
                    flat(image_grid_thw.as_flattened()),
                ),
            )),
            ProcessedImages::LlavaOnevision {
                image_sizes,
                batch_num_images,
                ..
            } => {
                out.push((
                    "inputs.image_sizes".into(),
                    HostTensor::i64(vec![image_sizes.len(), 2], flat(image_sizes.as_flattened())),
                ));
                out.push((
                    "inputs.batch_num_images".into(),
                    HostTensor::i64(vec![batch_num_images.len()], flat(batch_num_images)),
                ));
            }
        }
        out
    }
}

/// Pixel tensors stacked along their first dimension; when their second dimensions differ
/// (LLaVA's tiles), each is padded with zeros to the largest.
fn stack(parts: &[&HostTensor]) -> HostTensor {
    let widest = parts.iter().map(|p| p.shape[1]).max().unwrap_or(0);
    let mut shape = parts[0].shape.clone();
    shape[0] = parts.iter().map(|p| p.shape[0]).sum();
    shape[1] = widest;
    let inner: usize = shape[2..].iter().product();
    let mut values = Vec::with_capacity(shape.iter().product());
    for part in parts {
        let data = part.to_f32();
        for item in data.chunks(part.shape[1] * inner) {
            values.extend_from_slice(item);
            values.resize(values.len() + (widest - part.shape[1]) * inner, 0.0);
        }
    }
    HostTensor::f32(shape, values)
}

/// A vision-language forward pass's input with the images as processed on the host.
pub type VisionInput<B> = crate::decoder::VlInput<B, ProcessedImages>;

impl<B: Backend> VisionNetwork<B> {
    /// The language model's configuration.
    pub fn text_config(&self) -> &DecoderConfig {
        match self {
            VisionNetwork::Qwen2Vl(m) => &m.config().text,
            VisionNetwork::LlavaOnevision(m) => &m.config().text,
        }
    }

    /// The placeholder token id, one per image token.
    pub fn image_token(&self) -> i64 {
        match self {
            VisionNetwork::Qwen2Vl(m) => m.config().image_token_id,
            VisionNetwork::LlavaOnevision(m) => m.config().image_token_id,
        }
    }

    /// The placeholder as text.
    fn placeholder(&self) -> &'static str {
        match self {
            VisionNetwork::Qwen2Vl(_) => "<|image_pad|>",
            VisionNetwork::LlavaOnevision(_) => "<image>",
        }
    }

    /// The forward pass over new tokens after those in `cache` (which it extends); images may
    /// come only with the first call.
    pub fn forward_cached(
        &self,
        input: VisionInput<B>,
        cache: &mut KvCache<B>,
        hooks: &mut dyn Hooks<B>,
    ) -> Result<LmOutput<B>> {
        let device = input.input_ids.device();
        let (ids, mask) = (input.input_ids, input.attention_mask);
        match (self, input.images) {
            (VisionNetwork::Qwen2Vl(m), images) => {
                let images = match images {
                    Some(ProcessedImages::Qwen2Vl {
                        pixel_values,
                        image_grid_thw,
                    }) => Some(qwen2_vl::ImageInput {
                        pixel_values: pixel_values.to_float(&device),
                        grid_thw: image_grid_thw,
                    }),
                    None => None,
                    Some(_) => return Err(other_processor()),
                };
                let input = qwen2_vl::VlInput {
                    input_ids: ids,
                    attention_mask: mask,
                    images,
                };
                m.forward_cached(input, cache, hooks)
            }
            (VisionNetwork::LlavaOnevision(m), images) => {
                let images = match images {
                    Some(ProcessedImages::LlavaOnevision {
                        pixel_values,
                        image_sizes,
                        batch_num_images,
                    }) => Some(llava_onevision::ImageInput {
                        pixel_values: pixel_values.to_float(&device),
                        image_sizes,
                        batch_num_images,
                    }),
                    None => None,
                    Some(_) => return Err(other_processor()),
                };
                let input = llava_onevision::VlInput {
                    input_ids: ids,
                    attention_mask: mask,
                    images,
                };
                m.forward_cached(input, cache, hooks)
            }
        }
    }

    /// A [`Generator`](crate::Generator) for prompts holding `images`' tokens.
    pub fn generator(
        &self,
        images: Option<ProcessedImages>,
    ) -> WithImages<'_, Self, ProcessedImages> {
        WithImages::new(self, images)
    }
}

fn other_processor() -> ModelError {
    ModelError::BadInput("the images were processed for another model".into())
}

impl<B: Backend> ImageLm<B> for VisionNetwork<B> {
    type Images = ProcessedImages;

    fn forward_images(
        &self,
        input_ids: Tensor<B, 2, Int>,
        attention_mask: Tensor<B, 2, Int>,
        images: Option<ProcessedImages>,
        cache: &mut KvCache<B>,
        hooks: &mut dyn Hooks<B>,
    ) -> Result<Tensor<B, 3>> {
        let input = VisionInput {
            input_ids,
            attention_mask: Some(attention_mask),
            images,
        };
        let out = self.forward_cached(input, cache, hooks)?;
        Ok(out.logits.expect("generation hooks do not stop the pass"))
    }

    fn context(&self) -> usize {
        self.text_config().max_position_embeddings
    }
}

impl<B: Backend> HookedModule<B> for VisionNetwork<B> {
    type Input = VisionInput<B>;
    type Output = Result<LmOutput<B>>;

    fn hook_points(&self) -> Vec<HookPoint> {
        match self {
            VisionNetwork::Qwen2Vl(m) => m.hook_points(),
            VisionNetwork::LlavaOnevision(m) => m.hook_points(),
        }
    }

    fn forward_hooked(&self, input: VisionInput<B>, hooks: &mut dyn Hooks<B>) -> Self::Output {
        self.forward_cached(input, &mut KvCache::new(), hooks)
    }
}

/// A vision-language model with its tokenizer and image processor.
#[derive(Debug)]
pub struct VisionLanguageModel<B: Backend> {
    /// The network.
    pub model: VisionNetwork<B>,
    /// Its tokenizer and chat template.
    pub tokenizer: Tokenizer,
    /// Its image processor.
    pub processor: ImageProcessor,
    /// Tokens that end generation.
    pub stop_tokens: Vec<i64>,
}

/// What a data loader needs from a vision-language model: the placeholder token its processor
/// expands, and the processing of one prompt's images.
pub trait ImageTokens {
    /// The placeholder token id, one per image in a tokenized prompt.
    fn image_token(&self) -> i64;

    /// The processed images of one prompt and how many tokens each takes.
    fn process_images(&self, images: &[DynamicImage]) -> Result<(ProcessedImages, Vec<usize>)>;

    /// For each image of `images`: how many tokens it takes, and which of them form a grid
    /// over the whole image (for drawing what a latent does on each region).
    fn token_layouts(&self, images: &ProcessedImages) -> Vec<ImageTokenLayout>;
}

/// How one image's tokens lie in a prompt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ImageTokenLayout {
    /// The image's tokens (its placeholder expanded).
    pub tokens: usize,
    /// Which of them form a grid over the image, if any do.
    pub grid: Option<TokenGrid>,
}

/// Tokens of an image that form a grid over the whole image, row by row: `rows x cols` tokens
/// starting `offset` tokens into the image's tokens, each row `stride` tokens after the one
/// above (more than `cols` where a row ends in tokens that are no region, as LLaVA-OneVision's
/// `image_newline`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TokenGrid {
    /// Tokens of the image before the grid.
    pub offset: usize,
    /// Token rows, top to bottom.
    pub rows: usize,
    /// Tokens per row, left to right.
    pub cols: usize,
    /// Tokens from one row's start to the next's.
    pub stride: usize,
}

/// `ids` with the `i`-th `image_token` repeated `counts[i]` times: transformers expands the
/// placeholder in the text before tokenizing, which gives the same ids since the placeholder
/// is a special token.
pub fn expand_image_tokens(ids: &[i64], image_token: i64, counts: &[usize]) -> Result<Vec<i64>> {
    let placeholders = ids.iter().filter(|&&id| id == image_token).count();
    if placeholders != counts.len() {
        return Err(ModelError::BadInput(format!(
            "the prompt has {placeholders} image placeholders for {} images",
            counts.len()
        )));
    }
    let mut counts = counts.iter();
    let mut out = Vec::with_capacity(ids.len() + counts.len());
    for &id in ids {
        if id == image_token {
            let n = *counts.next().expect("as many counts as placeholders");
            out.extend(std::iter::repeat_n(id, n));
        } else {
            out.push(id);
        }
    }
    Ok(out)
}

/// A prompt as the processor returns it, on the host.
#[derive(Debug, Clone)]
pub struct ProcessedPrompt {
    /// Token ids, images expanded.
    pub input_ids: Vec<i64>,
    /// The processed images, when there are any.
    pub images: Option<ProcessedImages>,
    /// 1 for image tokens, 0 for text (Qwen2-VL's `mm_token_type_ids`).
    pub mm_token_type_ids: Vec<i64>,
}

impl ProcessedPrompt {
    /// The model input, one unpadded row.
    pub fn to_input<B: Backend>(&self, device: &B::Device) -> VisionInput<B> {
        let t = self.input_ids.len();
        VisionInput {
            input_ids: Tensor::<B, 2, Int>::from_data(
                TensorData::new(self.input_ids.clone(), [1, t]),
                device,
            ),
            attention_mask: None,
            images: self.images.clone(),
        }
    }

    /// The processor's outputs named as transformers names them (`inputs.input_ids`, ...), for
    /// an activations file.
    pub fn tensors(&self) -> Vec<(String, HostTensor)> {
        let t = self.input_ids.len();
        let row = |values: Vec<i64>| HostTensor::i64(vec![1, t], values);
        let mut out = vec![
            ("inputs.input_ids".to_string(), row(self.input_ids.clone())),
            ("inputs.attention_mask".to_string(), row(vec![1; t])),
        ];
        if let Some(images) = &self.images {
            if matches!(images, ProcessedImages::Qwen2Vl { .. }) {
                out.push((
                    "inputs.mm_token_type_ids".to_string(),
                    row(self.mm_token_type_ids.clone()),
                ));
            }
            out.extend(images.tensors());
        }
        out
    }
}

/// The `model_type` of the `config.json` in `dir`, when it names a vision-language model this
/// crate runs.
fn vision_language_type(dir: &Path) -> Option<String> {
    let json: serde_json::Value =
        sae_core::tensor_file::read_json(&dir.join("config.json")).ok()?;
    let model_type = json["model_type"].as_str()?;
    (qwen2_vl::config::SUPPORTED.contains(&model_type)
        || llava_onevision::config::SUPPORTED.contains(&model_type))
    .then(|| model_type.to_string())
}

/// True when the `config.json` in `dir` names a vision-language model this crate runs.
pub fn is_vision_language(dir: &Path) -> bool {
    vision_language_type(dir).is_some()
}

impl<B: Backend> ImageTokens for VisionLanguageModel<B> {
    fn image_token(&self) -> i64 {
        self.model.image_token()
    }

    fn process_images(&self, images: &[DynamicImage]) -> Result<(ProcessedImages, Vec<usize>)> {
        match (&self.processor, &self.model) {
            (ImageProcessor::Qwen2Vl(p), _) => {
                let processed = p.preprocess(images)?;
                let merge = p.merge_size as usize;
                let counts = processed
                    .image_grid_thw
                    .iter()
                    .map(|g| g[0] * g[1] * g[2] / (merge * merge))
                    .collect();
                let images = ProcessedImages::Qwen2Vl {
                    pixel_values: processed.pixel_values,
                    image_grid_thw: processed.image_grid_thw,
                };
                Ok((images, counts))
            }
            (ImageProcessor::LlavaOnevision(p), VisionNetwork::LlavaOnevision(m)) => {
                let processed = p.preprocess_prompts(&[images])?;
                let counts =
                    m.image_token_counts(&processed.image_sizes, &processed.batch_num_images);
                let images = ProcessedImages::LlavaOnevision {
                    pixel_values: processed.pixel_values,
                    image_sizes: processed.image_sizes,
                    batch_num_images: processed.batch_num_images,
                };
                Ok((images, counts))
            }
            (ImageProcessor::LlavaOnevision(_), _) => Err(other_processor()),
        }
    }

    fn token_layouts(&self, images: &ProcessedImages) -> Vec<ImageTokenLayout> {
        match (images, &self.processor, &self.model) {
            // One token per `merge x merge` patches, in raster order (a grid for single frames).
            (ProcessedImages::Qwen2Vl { image_grid_thw, .. }, ImageProcessor::Qwen2Vl(p), _) => {
                let merge = p.merge_size as usize;
                (image_grid_thw.iter())
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
            (
                ProcessedImages::LlavaOnevision {
                    image_sizes,
                    batch_num_images,
                    ..
                },
                _,
                VisionNetwork::LlavaOnevision(m),
            ) => m.token_layouts(image_sizes, batch_num_images),
            // Images of another model's processor: nothing is known of them.
            _ => Vec::new(),
        }
    }
}

impl<B: Backend> VisionLanguageModel<B> {
    /// Loads `spec` (a folder or a hub id) computing in `dtype`.
    pub fn load_as(spec: &str, dtype: DType, device: &B::Device) -> Result<Self> {
        let dir = ModelSource::parse(spec).local_dir()?;
        let tokenizer = Tokenizer::load(&dir)?;
        let mut stop_tokens = generation_eos(&dir)?;
        add_eos(&mut stop_tokens, &tokenizer);
        let is_llava = vision_language_type(&dir)
            .is_some_and(|t| llava_onevision::config::SUPPORTED.contains(&t.as_str()));
        let (model, processor) = if is_llava {
            (
                VisionNetwork::LlavaOnevision(LlavaOnevision::load_as(&dir, dtype, device)?),
                ImageProcessor::LlavaOnevision(LlavaOnevisionImageProcessor::from_model_dir(&dir)?),
            )
        } else {
            (
                VisionNetwork::Qwen2Vl(Qwen2Vl::load_as(&dir, dtype, device)?),
                ImageProcessor::Qwen2Vl(Qwen2VlImageProcessor::from_model_dir(&dir)?),
            )
        };
        tokenizer.check_fits(model.text_config().vocab_size, &dir)?;
        let placeholder = model.placeholder();
        if tokenizer.token_id(placeholder) != Some(model.image_token()) {
            return Err(ModelError::BadConfig {
                file: dir.join("tokenizer.json"),
                message: format!(
                    "{placeholder} is not the config's image token {}",
                    model.image_token()
                ),
            });
        }
        Ok(VisionLanguageModel {
            model,
            tokenizer,
            processor,
            stop_tokens,
        })
    }

    /// The processor's outputs for `prompt` and `images`. With [`Prompt::Chat`] the images
    /// come first in one user turn; with [`Prompt::Text`] the text must hold one placeholder
    /// (`<|image_pad|>` or `<image>`) per image. Placeholders are expanded after tokenizing
    /// ([`expand_image_tokens`]).
    pub fn process(&self, prompt: Prompt, images: &[DynamicImage]) -> Result<ProcessedPrompt> {
        let (text, special) = match prompt {
            Prompt::Chat(text) => (
                self.tokenizer
                    .apply_chat_template(&[Message::user(text, images.len())], true)?,
                false,
            ),
            Prompt::Text(text) => (text.to_string(), true),
        };
        let ids = self.tokenizer.encode(&text, special)?;
        let (images, counts) = if images.is_empty() {
            (None, Vec::new())
        } else {
            let (processed, counts) = self.process_images(images)?;
            (Some(processed), counts)
        };
        let image_token = self.image_token();
        let input_ids = expand_image_tokens(&ids, image_token, &counts)?;
        Ok(ProcessedPrompt {
            mm_token_type_ids: input_ids
                .iter()
                .map(|&id| i64::from(id == image_token))
                .collect(),
            input_ids,
            images,
        })
    }

    /// The most positions a sequence may have.
    pub fn context(&self) -> usize {
        ImageLm::context(&self.model)
    }
}
