//! A vision-language model ready to use: the network (any [`VisionLanguage`] implementation:
//! Qwen2-VL / Qwen2.5-VL, LLaVA-OneVision) with its image processor, tokenizer and chat
//! template, loaded from a folder or hub id. Prompts are built as transformers' processors
//! build them: images first in one user turn, each image's placeholder expanded to the number
//! of tokens the image takes.

pub mod images;
mod network;

use std::path::Path;

use burn::tensor::DType;
use burn::tensor::backend::{Backend, BackendTypes};
use image::DynamicImage;
use sae_core::HookPoint;

pub use images::{ImageInputs, ProcessedImages};
pub use network::{VisionInput, VisionLanguage, VisionNetwork};

use crate::error::{ModelError, Result};
use crate::language_model::{Prompt, add_eos, generation_eos};
use crate::llava_onevision::LlavaOnevision;
use crate::prompt::ProcessedPrompt;
use crate::qwen2_vl::Qwen2Vl;
use crate::scope::LoadScope;
use crate::source::ModelSource;
use crate::token_layout::ImageTokenLayout;
use crate::tokenizer::{Message, Tokenizer};

/// How a network is loaded from a folder.
type Load<B> =
    fn(&Path, DType, &LoadScope, &<B as BackendTypes>::Device) -> Result<VisionNetwork<B>>;

/// A network this crate runs: the `model_type`s of `config.json` it reads, how it loads, and
/// its hook points from the config alone.
struct Entry<B: Backend> {
    types: &'static [&'static str],
    load: Load<B>,
    hook_points: fn(&Path) -> Result<Vec<HookPoint>>,
}

/// The vision-language networks this crate runs: adding a model is one line here.
fn registry<B: Backend>() -> [Entry<B>; 2] {
    fn entry<B: Backend, N: VisionLanguage<B>>() -> Entry<B> {
        Entry {
            types: N::MODEL_TYPES,
            load: VisionNetwork::load::<N>,
            hook_points: N::hook_points_of,
        }
    }
    [entry::<B, Qwen2Vl<B>>(), entry::<B, LlavaOnevision<B>>()]
}

/// The network named by the `config.json` in `dir`, when this crate runs it.
fn entry_of<B: Backend>(dir: &Path) -> Option<Entry<B>> {
    let json: serde_json::Value =
        sae_core::tensor_file::read_json(&dir.join("config.json")).ok()?;
    let model_type = json["model_type"].as_str()?;
    (registry::<B>().into_iter()).find(|e| e.types.contains(&model_type))
}

/// True when the `config.json` in `dir` names a vision-language model this crate runs.
pub fn is_vision_language<B: Backend>(dir: &Path) -> bool {
    entry_of::<B>(dir).is_some()
}

/// The hook points of the vision-language model in `dir`, from its config alone.
pub fn hook_points_of<B: Backend>(dir: &Path) -> Result<Vec<HookPoint>> {
    (entry_of::<B>(dir)
        .ok_or_else(|| not_vision_language(dir))?
        .hook_points)(dir)
}

fn not_vision_language(dir: &Path) -> ModelError {
    ModelError::BadConfig {
        file: dir.join("config.json"),
        message: "does not name a vision-language model this version runs".into(),
    }
}

/// A vision-language model with its tokenizer (the network holds its image processor).
#[derive(Debug)]
pub struct VisionLanguageModel<B: Backend> {
    /// The network and its image processor.
    pub model: VisionNetwork<B>,
    /// Its tokenizer and chat template.
    pub tokenizer: Tokenizer,
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

impl<B: Backend> ImageTokens for VisionLanguageModel<B> {
    fn image_token(&self) -> i64 {
        self.model.image_token()
    }

    fn process_images(&self, images: &[DynamicImage]) -> Result<(ProcessedImages, Vec<usize>)> {
        self.model.process_images(images)
    }

    fn token_layouts(&self, images: &ProcessedImages) -> Vec<ImageTokenLayout> {
        self.model.token_layouts(images)
    }
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

impl<B: Backend> VisionLanguageModel<B> {
    /// Loads all of `spec` (a folder or a hub id) computing in `dtype`.
    pub fn load_as(spec: &str, dtype: DType, device: &B::Device) -> Result<Self> {
        Self::load_scoped(spec, dtype, &LoadScope::whole(true), device)
    }

    /// Loads what `scope` needs of `spec` (a folder or a hub id), computing in `dtype`.
    pub fn load_scoped(
        spec: &str,
        dtype: DType,
        scope: &LoadScope,
        device: &B::Device,
    ) -> Result<Self> {
        let dir = ModelSource::parse(spec).local_dir()?;
        let load = entry_of::<B>(&dir)
            .ok_or_else(|| not_vision_language(&dir))?
            .load;
        let tokenizer = Tokenizer::load(&dir)?;
        let mut stop_tokens = generation_eos(&dir)?;
        add_eos(&mut stop_tokens, &tokenizer);
        let model = load(&dir, dtype, scope, device)?;
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
        let mm_token_type_ids = self.model.token_type_ids().then(|| {
            (input_ids.iter())
                .map(|&id| i64::from(id == image_token))
                .collect()
        });
        Ok(ProcessedPrompt {
            mm_token_type_ids,
            input_ids,
            images,
        })
    }

    /// The most positions a sequence may have.
    pub fn context(&self) -> usize {
        self.model.text_config().max_position_embeddings
    }
}
