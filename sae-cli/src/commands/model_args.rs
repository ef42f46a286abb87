//! Arguments shared by the commands that run a model: `--model` and the prompt.

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use burn::tensor::DType;
use sae_core::{HostTensor, StorageDtype};
use sae_models::{AnyModel, ImageTokens, ProcessedPrompt, Prompt, load_image};

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

/// A prompt ready for the model it was made for.
pub enum Processed {
    /// The token ids of a text model's prompt.
    Text(Vec<i64>),
    /// What a vision-language model's processor returns.
    Vision(ProcessedPrompt),
}

impl Processed {
    /// The token ids.
    pub fn ids(&self) -> &[i64] {
        match self {
            Processed::Text(ids) => ids,
            Processed::Vision(p) => &p.input_ids,
        }
    }

    /// The inputs as transformers' processor names them, for an activations file.
    pub fn tensors(&self) -> Vec<(String, HostTensor)> {
        match self {
            Processed::Vision(p) => p.tensors(),
            Processed::Text(ids) => {
                let t = ids.len();
                vec![
                    (
                        "inputs.input_ids".into(),
                        HostTensor::i64(vec![1, t], ids.clone()),
                    ),
                    (
                        "inputs.attention_mask".into(),
                        HostTensor::i64(vec![1, t], vec![1; t]),
                    ),
                ]
            }
        }
    }
}

impl ModelArgs {
    /// The compute dtype.
    fn dtype(&self) -> DType {
        match self.dtype {
            StorageDtype::F32 => DType::F32,
            StorageDtype::F16 => DType::F16,
            StorageDtype::BF16 => DType::BF16,
        }
    }

    /// Loads the model, text-only or vision-language, whichever `config.json` names.
    pub fn load(&self) -> Result<AnyModel<Backend>> {
        let _span = tracing::info_span!("load", model = %self.model).entered();
        let model = AnyModel::load_as(&self.model, self.dtype(), &backend::device()?)
            .with_context(|| format!("cannot load model {}", self.model))?;
        tracing::info!(backend = backend::NAME, "model loaded");
        Ok(model)
    }

    /// The prompt (and images) as `loaded` takes them.
    pub fn process(&self, loaded: &AnyModel<Backend>) -> Result<Processed> {
        let prompt = match (&self.text, &self.chat) {
            (Some(t), None) => Prompt::Text(t),
            (None, Some(c)) => Prompt::Chat(c),
            _ => bail!("give the prompt with --text or --chat"),
        };
        let processed = match loaded {
            AnyModel::Text(lm) => {
                if !self.image.is_empty() {
                    bail!("{} is a text-only model: it takes no --image", self.model);
                }
                Processed::Text(lm.prompt_ids(prompt)?)
            }
            AnyModel::Vision(vlm) => {
                let images = self
                    .image
                    .iter()
                    .map(|path| load_image(path))
                    .collect::<sae_models::Result<Vec<_>>>()?;
                let text_prompt = matches!(prompt, Prompt::Text(_));
                let processed = vlm.process(prompt, &images);
                Processed::Vision(processed.with_context(|| match text_prompt {
                    true => {
                        let id = vlm.image_token();
                        let token = vlm.tokenizer.token(id).unwrap_or_else(|| id.to_string());
                        format!(
                            "with --text, the text holds one {token} per --image; --chat places them"
                        )
                    }
                    false => "cannot prepare the prompt".to_string(),
                })?)
            }
        };
        let (n, limit) = (processed.ids().len(), loaded.context());
        if n == 0 {
            bail!("the prompt has no tokens");
        }
        if n > limit {
            bail!("the prompt has {n} tokens, more than the model's context of {limit}");
        }
        Ok(processed)
    }
}
