//! Any model `--model` can name: a decoder LM or a vision-language model, told apart by its
//! `config.json`, each with its tokenizer (and image processor).

use burn::tensor::DType;
use burn::tensor::backend::Backend;
use image::DynamicImage;
use sae_core::{HookPoint, HookedModule};

use crate::config::DecoderConfig;
use crate::error::{ModelError, Result};
use crate::language_model::{LanguageModel, Prompt};
use crate::prompt::ProcessedPrompt;
use crate::scope::LoadScope;
use crate::source::ModelSource;
use crate::tokenizer::Tokenizer;
use crate::vision_language::{
    ImageTokens, VisionLanguageModel, hook_points_of, is_vision_language,
};

/// A loaded model, text-only or vision-language.
#[derive(Debug)]
pub enum AnyModel<B: Backend> {
    /// A decoder LM (folder, hub id or GGUF file).
    Text(Box<LanguageModel<B>>),
    /// Qwen2-VL / Qwen2.5-VL or LLaVA-OneVision.
    Vision(Box<VisionLanguageModel<B>>),
}

impl<B: Backend> AnyModel<B> {
    /// Loads all of `spec` (a folder, a hub id or a GGUF file) computing in `dtype`.
    pub fn load_as(spec: &str, dtype: DType, device: &B::Device) -> Result<Self> {
        Self::load_scoped(spec, dtype, &LoadScope::whole(true), device)
    }

    /// Loads what `scope` needs of `spec` (see [`LoadScope`]), computing in `dtype`.
    pub fn load_scoped(
        spec: &str,
        dtype: DType,
        scope: &LoadScope,
        device: &B::Device,
    ) -> Result<Self> {
        Ok(if Self::is_vision(spec)? {
            let model = VisionLanguageModel::load_scoped(spec, dtype, scope, device)?;
            AnyModel::Vision(Box::new(model))
        } else {
            AnyModel::Text(Box::new(LanguageModel::load_scoped(
                spec, dtype, scope, device,
            )?))
        })
    }

    /// The hook points of `spec`, in forward order, from its config alone (nothing loaded).
    pub fn hook_points_of(spec: &str) -> Result<Vec<HookPoint>> {
        match ModelSource::parse(spec) {
            ModelSource::Gguf(path) => crate::gguf_model::hook_points(&path),
            source => {
                let dir = source.local_dir()?;
                if is_vision_language::<B>(&dir) {
                    hook_points_of::<B>(&dir)
                } else {
                    Ok(DecoderConfig::from_file(&dir.join("config.json"))?.hook_points("model"))
                }
            }
        }
    }

    /// The float dtype `spec`'s weights are stored in, when its config names one (a GGUF's
    /// quantised blocks have none).
    pub fn stored_dtype(spec: &str) -> Option<sae_core::StorageDtype> {
        match ModelSource::parse(spec) {
            ModelSource::Gguf(_) => None,
            source => crate::config::stored_dtype(&source.local_dir().ok()?),
        }
    }

    /// Whether `spec` names a vision-language model.
    fn is_vision(spec: &str) -> Result<bool> {
        Ok(match ModelSource::parse(spec) {
            ModelSource::Gguf(_) => false,
            source => is_vision_language::<B>(&source.local_dir()?),
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

    /// The image processing a data loader needs, for a vision-language model.
    pub fn image_tokens(&self) -> Option<&dyn ImageTokens> {
        match self {
            AnyModel::Text(_) => None,
            AnyModel::Vision(vlm) => Some(vlm.as_ref()),
        }
    }

    /// `prompt` and `images` as the model takes them; a text-only model takes no images.
    pub fn process(&self, prompt: Prompt, images: &[DynamicImage]) -> Result<ProcessedPrompt> {
        match self {
            AnyModel::Text(lm) => {
                if !images.is_empty() {
                    return Err(ModelError::BadInput(
                        "this is a text-only model: it takes no images".into(),
                    ));
                }
                Ok(ProcessedPrompt::text(lm.prompt_ids(prompt)?))
            }
            AnyModel::Vision(vlm) => vlm.process(prompt, images),
        }
    }

    /// The shape transformers gives the output of hook `path` that has `shape` here.
    pub fn transformers_shape(&self, path: &str, shape: &[usize]) -> Vec<usize> {
        match self {
            AnyModel::Text(_) => shape.to_vec(),
            AnyModel::Vision(vlm) => vlm.model.transformers_shape(path, shape),
        }
    }
}
