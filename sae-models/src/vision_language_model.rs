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

/// A prompt as the processor returns it, on the host.
#[derive(Debug, Clone)]
pub struct ProcessedPrompt {
    /// Token ids, images expanded.
    pub input_ids: Vec<i64>,
    /// `[patches, C x T x P x P]`, when there are images.
    pub pixel_values: Option<HostTensor>,
    /// (t, h, w) per image.
    pub image_grid_thw: Vec<[usize; 3]>,
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
            images: self.pixel_values.as_ref().map(|p| ImageInput {
                pixel_values: p.to_float(device),
                grid_thw: self.image_grid_thw.clone(),
            }),
        }
    }

    /// The processor's outputs named as transformers names them (`inputs.input_ids`, ...), for
    /// an activations file.
    pub fn tensors(&self) -> Vec<(String, HostTensor)> {
        let t = self.input_ids.len();
        let mut out = vec![
            (
                "inputs.input_ids".to_string(),
                HostTensor::i64(vec![1, t], self.input_ids.clone()),
            ),
            (
                "inputs.attention_mask".to_string(),
                HostTensor::i64(vec![1, t], vec![1; t]),
            ),
            (
                "inputs.mm_token_type_ids".to_string(),
                HostTensor::i64(vec![1, t], self.mm_token_type_ids.clone()),
            ),
        ];
        if let Some(p) = &self.pixel_values {
            out.push(("inputs.pixel_values".to_string(), p.clone()));
            let grid: Vec<i64> = self
                .image_grid_thw
                .iter()
                .flatten()
                .map(|&v| v as i64)
                .collect();
            out.push((
                "inputs.image_grid_thw".to_string(),
                HostTensor::i64(vec![self.image_grid_thw.len(), 3], grid),
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
    pub fn process(&self, prompt: Prompt, images: &[DynamicImage]) -> Result<ProcessedPrompt> {
        let (text, special) = match prompt {
            Prompt::Chat(text) => (
                self.tokenizer
                    .apply_chat_template(&[Message::user(text, images.len())], true)?,
                false,
            ),
            Prompt::Text(text) => (text.to_string(), true),
        };
        let placeholders = text.matches(IMAGE_PAD).count();
        if placeholders != images.len() {
            return Err(ModelError::BadInput(format!(
                "the prompt has {placeholders} {IMAGE_PAD} placeholders for {} images",
                images.len()
            )));
        }
        let (pixel_values, grids) = if images.is_empty() {
            (None, Vec::new())
        } else {
            let processed = self.processor.preprocess(images)?;
            (Some(processed.pixel_values), processed.image_grid_thw)
        };
        // Each placeholder becomes one token per merged patch of its image.
        let merge = self.processor.merge_size as usize;
        let mut pieces = text.split(IMAGE_PAD);
        let mut expanded = pieces.next().unwrap_or_default().to_string();
        for (piece, g) in pieces.zip(&grids) {
            expanded.push_str(&IMAGE_PAD.repeat(g[0] * g[1] * g[2] / (merge * merge)));
            expanded.push_str(piece);
        }
        let input_ids = self.tokenizer.encode(&expanded, special)?;
        let image_token = self.model.config().image_token_id;
        Ok(ProcessedPrompt {
            mm_token_type_ids: input_ids
                .iter()
                .map(|&id| i64::from(id == image_token))
                .collect(),
            input_ids,
            pixel_values,
            image_grid_thw: grids,
        })
    }
}
