//! Any model `--model` can name: a decoder LM or a vision-language model, told apart by its
//! `config.json`, each with its tokenizer (and image processor).

use burn::tensor::DType;
use burn::tensor::backend::Backend;
use sae_core::{HookPoint, HookedModule};

use crate::error::Result;
use crate::language_model::LanguageModel;
use crate::source::ModelSource;
use crate::tokenizer::Tokenizer;
use crate::vision_language_model::{VisionLanguageModel, is_vision_language};

/// A loaded model, text-only or vision-language.
#[derive(Debug)]
pub enum AnyModel<B: Backend> {
    /// A decoder LM (folder, hub id or GGUF file).
    Text(Box<LanguageModel<B>>),
    /// Qwen2-VL / Qwen2.5-VL or LLaVA-OneVision.
    Vision(Box<VisionLanguageModel<B>>),
}

impl<B: Backend> AnyModel<B> {
    /// Loads `spec` (a folder, a hub id or a GGUF file) computing in `dtype`.
    pub fn load_as(spec: &str, dtype: DType, device: &B::Device) -> Result<Self> {
        let vision = match ModelSource::parse(spec) {
            ModelSource::Gguf(_) => false,
            source => is_vision_language(&source.local_dir()?),
        };
        Ok(if vision {
            AnyModel::Vision(Box::new(VisionLanguageModel::load_as(spec, dtype, device)?))
        } else {
            AnyModel::Text(Box::new(LanguageModel::load_as(spec, dtype, device)?))
        })
    }

    /// The tokenizer and chat template.
    pub fn tokenizer(&self) -> &Tokenizer {
        match self {
            AnyModel::Text(lm) => &lm.tokenizer,
            AnyModel::Vision(vlm) => &vlm.tokenizer,
        }
    }

    /// Tokens that end generation.
    pub fn stop_tokens(&self) -> &[i64] {
        match self {
            AnyModel::Text(lm) => &lm.stop_tokens,
            AnyModel::Vision(vlm) => &vlm.stop_tokens,
        }
    }

    /// The hook points, in forward order.
    pub fn hook_points(&self) -> Vec<HookPoint> {
        match self {
            AnyModel::Text(lm) => lm.model.hook_points(),
            AnyModel::Vision(vlm) => vlm.model.hook_points(),
        }
    }

    /// The most positions a sequence may have.
    pub fn context(&self) -> usize {
        match self {
            AnyModel::Text(lm) => lm.model.config().max_position_embeddings,
            AnyModel::Vision(vlm) => vlm.context(),
        }
    }
}
