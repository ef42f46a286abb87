//! Arguments shared by the commands that run a model: `--model` and the prompt.

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use sae_core::StorageDtype;
use sae_models::{AnyModel, ImageTokens, LoadScope, ProcessedPrompt, Prompt, load_image};

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
    /// The dtype the model computes in: f32, f16 or bf16 (weights are converted once, as they
    /// are read). Default: on cuda and wgpu the checkpoint's own (config.json's dtype); on the
    /// CPU backends f32, the fastest there (flex's bf16 matmul ran at 0.69x of f32, see
    /// docs/perf.md).
    #[arg(long)]
    pub dtype: Option<StorageDtype>,
}

impl ModelArgs {
    /// Loads what `scope` needs of the model, text-only or vision-language, whichever
    /// `config.json` names.
    pub fn load(&self, scope: &LoadScope) -> Result<AnyModel<Backend>> {
        let _span = tracing::info_span!("load", model = %self.model).entered();
        let model =
            AnyModel::load_scoped(&self.model, self.dtype().into(), scope, &backend::device()?)
                .with_context(|| format!("cannot load model {}", self.model))?;
        match scope.last() {
            Some(last) => tracing::info!(
                backend = backend::NAME,
                through = last,
                "model loaded up to the last hook read"
            ),
            None => tracing::info!(backend = backend::NAME, "model loaded"),
        }
        Ok(model)
    }

    /// `--dtype`, or the backend's default for this checkpoint.
    pub fn dtype(&self) -> StorageDtype {
        self.dtype.unwrap_or_else(|| {
            backend::default_dtype(AnyModel::<Backend>::stored_dtype(&self.model))
        })
    }

    /// The whole model, with its vision tower when `--image` is given.
    pub fn whole(&self) -> LoadScope {
        LoadScope::whole(!self.image.is_empty())
    }

    /// The prompt (and images) as `loaded` takes them.
    pub fn process(&self, loaded: &AnyModel<Backend>) -> Result<ProcessedPrompt> {
        let prompt = match (&self.text, &self.chat) {
            (Some(t), None) => Prompt::Text(t),
            (None, Some(c)) => Prompt::Chat(c),
            _ => bail!("give the prompt with --text or --chat"),
        };
        if matches!(loaded, AnyModel::Text(_)) && !self.image.is_empty() {
            bail!("{} is a text-only model: it takes no --image", self.model);
        }
        let images = (self.image.iter())
            .map(|path| load_image(path))
            .collect::<sae_models::Result<Vec<_>>>()?;
        let text_prompt = matches!(prompt, Prompt::Text(_));
        let processed = loaded
            .process(prompt, &images)
            .with_context(|| match loaded {
                AnyModel::Vision(vlm) if text_prompt => {
                    let id = vlm.image_token();
                    let token = vlm.tokenizer.token(id).unwrap_or_else(|| id.to_string());
                    format!(
                        "with --text, the text holds one {token} per --image; --chat places them"
                    )
                }
                _ => "cannot prepare the prompt".to_string(),
            })?;
        let (n, limit) = (processed.input_ids.len(), loaded.context());
        if n == 0 {
            bail!("the prompt has no tokens");
        }
        if n > limit {
            bail!("the prompt has {n} tokens, more than the model's context of {limit}");
        }
        Ok(processed)
    }
}
