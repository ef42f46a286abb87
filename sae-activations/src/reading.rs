//! How evaluation and latent caching read a dataset: once, in file order, in batches, with the
//! tokens that count for the SAEs.

use sae_data::{Batching, Dataset, Kind, Loader, StreamConfig};
use sae_models::{ImageTokens, Tokenizer};

use crate::error::{ActivationsError, Result};
use crate::tokens::TokenFilter;

/// Batches, contexts and the tokens left out, for reading a dataset once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadConfig {
    /// Sequences per batch (the last batch may hold fewer).
    pub batch_size: usize,
    /// Tokens per packed context (text data).
    pub context: usize,
    /// Longest sequence (chat data).
    pub max_len: usize,
    /// Leave special tokens out of the SAEs' tokens.
    pub exclude_special_tokens: bool,
    /// Leave the first this many positions of every sequence out of the SAEs' tokens.
    pub skip_first_tokens: usize,
}

impl Default for ReadConfig {
    fn default() -> Self {
        ReadConfig {
            batch_size: 8,
            context: 256,
            max_len: 2048,
            exclude_special_tokens: false,
            skip_first_tokens: 0,
        }
    }
}

impl ReadConfig {
    /// A loader that reads `dataset` once, in file order, for a model of `model_context`
    /// positions (chats cut there), a vision-language model's images processed by `images`.
    pub fn loader<'a>(
        &self,
        dataset: &'a Dataset,
        tokenizer: &'a Tokenizer,
        images: Option<&'a dyn ImageTokens>,
        model_context: usize,
    ) -> Result<Loader<'a>> {
        let (kind, context, max_len) = (dataset.kind(), self.context, self.max_len);
        let batching = sequence_batching(kind, context, max_len, true, model_context)?;
        let stream = StreamConfig {
            shuffle: false,
            ..StreamConfig::default()
        };
        let loader = Loader::new(dataset, tokenizer, stream, batching, self.batch_size, None)?
            .with_last_partial_batch();
        Ok(match images {
            Some(images) => loader.with_image_tokens(images),
            None => loader,
        })
    }

    /// The tokens of a batch that count for the SAEs.
    pub fn filter(&self, tokenizer: &Tokenizer) -> TokenFilter {
        let special = self.exclude_special_tokens;
        TokenFilter::new(tokenizer, special, &[], self.skip_first_tokens)
    }
}

/// How rows of `kind` become sequences for a model of `model_context` positions: packed text
/// contexts must fit in it (an error otherwise, before anything runs); chats are cut or skipped
/// at `max_len` or the model's context, whichever is shorter.
pub fn sequence_batching(
    kind: Kind,
    context: usize,
    max_len: usize,
    truncate: bool,
    model_context: usize,
) -> Result<Batching> {
    if kind == Kind::Text && context > model_context {
        return Err(ActivationsError::Invalid(format!(
            "contexts of {context} tokens do not fit the model, whose context is {model_context} positions; use a context of at most {model_context}"
        )));
    }
    Ok(Batching::for_kind(
        kind,
        context,
        max_len.min(model_context),
        truncate,
    ))
}
