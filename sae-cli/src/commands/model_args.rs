//! Arguments shared by the commands that run a model: `--model` and the prompt.

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use burn::tensor::DType;
use sae_core::StorageDtype;
use sae_models::{LanguageModel, Prompt};

use crate::backend::{self, Backend};

/// The model and the prompt it runs on.
#[derive(clap::Args)]
pub struct ModelArgs {
    /// A Hugging Face model folder, a hub id (cached files first; HF_HOME, HF_HUB_OFFLINE
    /// honoured) or a .gguf file.
    #[arg(long, value_name = "M")]
    pub model: String,
    /// Text tokenized as it is.
    #[arg(long, value_name = "T", conflicts_with = "chat")]
    pub text: Option<String>,
    /// Text wrapped (after the images) in one user turn with the model's chat template and the
    /// generation prompt.
    #[arg(long, value_name = "T")]
    pub chat: Option<String>,
    /// An image to put before the text (vision-language models).
    #[arg(long, value_name = "P")]
    pub image: Vec<PathBuf>,
    /// The dtype the model computes in: f32, f16 or bf16 (weights are cast once at load).
    #[arg(long, default_value = "f32")]
    pub dtype: StorageDtype,
}

impl ModelArgs {
    /// Loads the model.
    pub fn load(&self) -> Result<LanguageModel<Backend>> {
        let _span = tracing::info_span!("load", model = %self.model).entered();
        let dtype = match self.dtype {
            StorageDtype::F32 => DType::F32,
            StorageDtype::F16 => DType::F16,
            StorageDtype::BF16 => DType::BF16,
        };
        let lm = LanguageModel::load_as(&self.model, dtype, &backend::device())
            .with_context(|| format!("cannot load model {}", self.model))?;
        tracing::info!(backend = backend::NAME, "model loaded");
        Ok(lm)
    }

    /// The prompt's token ids.
    pub fn prompt_ids(&self, lm: &LanguageModel<Backend>) -> Result<Vec<i64>> {
        if !self.image.is_empty() {
            bail!("{} is a text-only model: it takes no --image", self.model);
        }
        let prompt = match (&self.text, &self.chat) {
            (Some(t), None) => Prompt::Text(t),
            (None, Some(c)) => Prompt::Chat(c),
            _ => bail!("give the prompt with --text or --chat"),
        };
        let ids = lm.prompt_ids(prompt)?;
        if ids.is_empty() {
            bail!("the prompt has no tokens");
        }
        let limit = lm.model.config().max_position_embeddings;
        if ids.len() > limit {
            bail!(
                "the prompt has {} tokens, more than the model's context of {limit}",
                ids.len()
            );
        }
        Ok(ids)
    }
}
