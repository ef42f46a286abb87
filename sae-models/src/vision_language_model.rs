//! A vision-language model ready to use: the network, its tokenizer and chat template, and its
//! image processor, loaded from a folder or hub id; prompts are built as transformers'
//! processor builds them (images first in one user turn, each image's placeholder expanded to
//! one token per merged patch).

use std::path::Path;

use burn::tensor::backend::Backend;
use burn::tensor::{DType, Int, Tensor, TensorData};
use image::DynamicImage;
use sae_core::HostTensor;

use crate::error::{ModelError, Result};
use crate::image_processor::Qwen2VlImageProcessor;
use crate::language_model::{Prompt, generation_eos};
use crate::qwen2_vl::{ImageInput, Qwen2Vl, VlInput};
use crate::source::ModelSource;
use crate::tokenizer::{Message, Tokenizer};

/// The placeholder Qwen2-VL's processor expands, one per image.
const IMAGE_PAD: &str = "<|image_pad|>";

/// Qwen2-VL / Qwen2.5-VL with its tokenizer and image processor.
#[derive(Debug)]
pub struct VisionLanguageModel<B: Backend> {
    /// The network.
    pub model: Qwen2Vl<B>,
    /// Its tokenizer and chat template.
    pub tokenizer: Tokenizer,
    /// Its image processor.
    pub processor: Qwen2VlImageProcessor,
    /// Tokens that end generation.
    pub stop_tokens: Vec<i64>,
}

/// Processed images of one or more prompts, on the host, as Qwen2-VL's processor returns them.
#[derive(Debug, Clone, PartialEq)]
pub struct ProcessedImages {
    /// `[patches, C x T x P x P]`, images one after the other.
    pub pixel_values: HostTensor,
    /// (t, h, w) per image.
    pub image_grid_thw: Vec<[usize; 3]>,
}

impl ProcessedImages {
    /// The images of several prompts, one after the other (`None` when there are none).
    pub fn concat(parts: Vec<ProcessedImages>) -> Option<Self> {
        let mut shape = parts.first()?.pixel_values.shape.clone();
        shape[0] = parts.iter().map(|p| p.pixel_values.shape[0]).sum();
        let values = parts.iter().flat_map(|p| p.pixel_values.to_f32()).collect();
        Some(ProcessedImages {
            pixel_values: HostTensor::f32(shape, values),
            image_grid_thw: parts.into_iter().flat_map(|p| p.image_grid_thw).collect(),
        })
    }

    /// The model's image input.
    pub fn to_input<B: Backend>(&self, device: &B::Device) -> ImageInput<B> {
        ImageInput {
            pixel_values: self.pixel_values.to_float(device),
            grid_thw: self.image_grid_thw.clone(),
        }
    }
}

/// What a data loader needs from a vision-language model: the placeholder token its processor
/// expands, and the processing of one prompt's images.
pub trait ImageTokens {
    /// The placeholder token id, one per image in a tokenized prompt.
    fn image_token(&self) -> i64;

    /// The processed images and how many tokens each takes.
    fn process_images(&self, images: &[DynamicImage]) -> Result<(ProcessedImages, Vec<usize>)>;
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
    /// 1 for image tokens, 0 for text (the processor's `mm_token_type_ids`).
    pub mm_token_type_ids: Vec<i64>,
}

impl ProcessedPrompt {
    /// The model input, one unpadded row.
    pub fn to_input<B: Backend>(&self, device: &B::Device) -> VlInput<B> {
        let t = self.input_ids.len();
        VlInput {
            input_ids: Tensor::<B, 2, Int>::from_data(
                TensorData::new(self.input_ids.clone(), [1, t]),
                device,
            ),
            attention_mask: None,
            images: self.images.as_ref().map(|i| i.to_input(device)),
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
            ("inputs.mm_token_type_ids".to_string(), row(self.mm_token_type_ids.clone())),
        ];
        if let Some(images) = &self.images {
            out.push(("inputs.pixel_values".to_string(), images.pixel_values.clone()));
            let grids = &images.image_grid_thw;
            let flat: Vec<i64> = grids.iter().flatten().map(|&v| v as i64).collect();
            out.push((
                "inputs.image_grid_thw".to_string(),
                HostTensor::i64(vec![grids.len(), 3], flat),
            ));
        }
        out
    }
}

/// True when the `config.json` in `dir` names a vision-language model this crate runs.
pub fn is_vision_language(dir: &Path) -> bool {
    let Ok(json) = sae_core::tensor_file::read_json::<serde_json::Value>(&dir.join("config.json"))
    else {
        return false;
    };
    let model_type = json["model_type"].as_str().unwrap_or_default();
    crate::qwen2_vl::config::SUPPORTED.contains(&model_type)
}

impl<B: Backend> ImageTokens for VisionLanguageModel<B> {
    fn image_token(&self) -> i64 {
        self.model.config().image_token_id
    }

    fn process_images(&self, images: &[DynamicImage]) -> Result<(ProcessedImages, Vec<usize>)> {
        let processed = self.processor.preprocess(images)?;
        let merge = self.processor.merge_size as usize;
        let counts = processed
            .image_grid_thw
            .iter()
            .map(|g| g[0] * g[1] * g[2] / (merge * merge))
            .collect();
        let images = ProcessedImages {
            pixel_values: processed.pixel_values,
            image_grid_thw: processed.image_grid_thw,
        };
        Ok((images, counts))
    }
}

impl<B: Backend> VisionLanguageModel<B> {
    /// Loads `spec` (a folder or a hub id) computing in `dtype`.
    pub fn load_as(spec: &str, dtype: DType, device: &B::Device) -> Result<Self> {
        let dir = ModelSource::parse(spec).local_dir()?;
        let tokenizer = Tokenizer::load(&dir)?;
        let mut stop_tokens = generation_eos(&dir)?;
        stop_tokens.extend(tokenizer.eos_token_id());
        stop_tokens.sort();
        stop_tokens.dedup();
        let model = Qwen2Vl::load_as(&dir, dtype, device)?;
        if tokenizer.token_id(IMAGE_PAD) != Some(model.config().image_token_id) {
            return Err(ModelError::BadConfig {
                file: dir.join("tokenizer.json"),
                message: format!(
                    "{IMAGE_PAD} is not the config's image token {}",
                    model.config().image_token_id
                ),
            });
        }
        Ok(VisionLanguageModel {
            processor: Qwen2VlImageProcessor::from_model_dir(&dir)?,
            model,
            tokenizer,
            stop_tokens,
        })
    }

    /// The processor's outputs for `prompt` and `images`. With [`Prompt::Chat`] the images
    /// come first in one user turn; with [`Prompt::Text`] the text must hold one
    /// `<|image_pad|>` per image (usually inside `<|vision_start|>...<|vision_end|>`).
    /// Placeholders are expanded after tokenizing ([`expand_image_tokens`]).
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
        let input_ids = expand_image_tokens(&ids, self.image_token(), &counts)?;
        let image_token = self.image_token();
        Ok(ProcessedPrompt {
            mm_token_type_ids: input_ids
                .iter()
                .map(|&id| i64::from(id == image_token))
                .collect(),
            input_ids,
            images,
        })
    }
}
