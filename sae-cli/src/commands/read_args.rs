//! How `sae eval` and `sae cache` read a dataset: batches, contexts and the tokens that count.

use sae_activations::ReadConfig;

/// Batch size, context and the tokens left out.
#[derive(clap::Args)]
pub struct ReadArgs {
    /// Sequences per batch.
    #[arg(long, default_value_t = 8)]
    pub batch_size: usize,
    /// Tokens per packed context (text data).
    #[arg(long, default_value_t = 256)]
    pub context: usize,
    /// Longest sequence in tokens (chat data; at most the model's context): longer text-only
    /// chats are cut, a longer chat with images stops the command.
    #[arg(long, value_name = "T", default_value_t = 2048)]
    pub max_len: usize,
    /// Leave special tokens out of the SAE's tokens.
    #[arg(long)]
    pub exclude_special_tokens: bool,
    /// Leave the first N positions of every sequence out of the SAE's tokens (attention sinks).
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub skip_first_tokens: usize,
}

impl ReadArgs {
    /// The reading these flags ask for.
    pub fn config(&self) -> ReadConfig {
        ReadConfig {
            batch_size: self.batch_size,
            context: self.context,
            max_len: self.max_len,
            exclude_special_tokens: self.exclude_special_tokens,
            skip_first_tokens: self.skip_first_tokens,
        }
    }
}
