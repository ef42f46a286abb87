//! A language model ready to use: the network, its tokenizer and its stop tokens, loaded from
//! any [`ModelSource`].

use std::path::Path;

use burn::tensor::DType;
use burn::tensor::backend::Backend;
use serde_json::Value;

use crate::decoder::DecoderLm;
use crate::error::Result;
use crate::scope::LoadScope;
use crate::source::ModelSource;
use crate::tokenizer::{Message, Tokenizer};

/// How a prompt becomes token ids.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Prompt<'a> {
    /// Tokenized as it is.
    Text(&'a str),
    /// Wrapped in one user turn with the chat template and the generation prompt.
    Chat(&'a str),
}

/// A decoder LM with its tokenizer.
#[derive(Debug)]
pub struct LanguageModel<B: Backend> {
    /// The network.
    pub model: DecoderLm<B>,
    /// Its tokenizer and chat template.
    pub tokenizer: Tokenizer,
    /// Tokens that end generation (`generation_config.json`'s `eos_token_id`, and the
    /// tokenizer's end-of-sequence token).
    pub stop_tokens: Vec<i64>,
}

impl<B: Backend> LanguageModel<B> {
    /// Loads `--model` `spec`: a folder, a hub id or a GGUF file.
    pub fn load(spec: &str, device: &B::Device) -> Result<Self> {
        Self::load_as(spec, DType::F32, device)
    }

    /// Loads `spec` computing in `dtype` (F32, F16 or BF16; weights are cast once at load).
    pub fn load_as(spec: &str, dtype: DType, device: &B::Device) -> Result<Self> {
        Self::load_scoped(spec, dtype, &LoadScope::whole(false), device)
    }

    /// Loads what `scope` needs of `spec`, computing in `dtype`.
    pub fn load_scoped(
        spec: &str,
        dtype: DType,
        scope: &LoadScope,
        device: &B::Device,
    ) -> Result<Self> {
        let (model, tokenizer, mut stop_tokens) = match ModelSource::parse(spec) {
            ModelSource::Gguf(path) => crate::gguf_model::load(&path, dtype, scope, device)?,
            source => {
                let dir = source.local_dir()?;
                let tokenizer = Tokenizer::load(&dir)?;
                let stop = generation_eos(&dir)?;
                (
                    DecoderLm::load_scoped(&dir, dtype, scope, device)?,
                    tokenizer,
                    stop,
                )
            }
        };
        tokenizer.check_fits(model.config().vocab_size, Path::new(spec))?;
        add_eos(&mut stop_tokens, &tokenizer);
        Ok(LanguageModel {
            model,
            tokenizer,
            stop_tokens,
        })
    }

    /// The token ids of a prompt.
    pub fn prompt_ids(&self, prompt: Prompt) -> Result<Vec<i64>> {
        match prompt {
            Prompt::Text(text) => self.tokenizer.encode(text, true),
            Prompt::Chat(text) => {
                let rendered = self
                    .tokenizer
                    .apply_chat_template(&[Message::user(text, 0)], true)?;
                // The template already holds any BOS token.
                self.tokenizer.encode(&rendered, false)
            }
        }
    }
}

/// Adds the tokenizer's end-of-sequence token to `stop_tokens`, sorted without repeats.
pub(crate) fn add_eos(stop_tokens: &mut Vec<i64>, tokenizer: &Tokenizer) {
    stop_tokens.extend(tokenizer.eos_token_id());
    stop_tokens.sort();
    stop_tokens.dedup();
}

/// `eos_token_id` of `generation_config.json` (a number or a list), if the file exists.
pub(crate) fn generation_eos(dir: &Path) -> Result<Vec<i64>> {
    let path = dir.join("generation_config.json");
    if !path.is_file() {
        return Ok(Vec::new());
    }
    let config: Value = sae_core::tensor_file::read_json(&path)?;
    Ok(match &config["eos_token_id"] {
        Value::Number(n) => n.as_i64().into_iter().collect(),
        Value::Array(ids) => ids.iter().filter_map(Value::as_i64).collect(),
        _ => Vec::new(),
    })
}
