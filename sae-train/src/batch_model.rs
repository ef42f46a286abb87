//! The models that run on data batches (evaluation, latent caching): a decoder LM or a
//! vision-language model, with its input for a batch and the logits of its output.

use burn::tensor::Tensor;
use sae_core::{HookedModule, SaeBackend};
use sae_data::Batch;
use sae_models::{DecoderLm, LmOutput, VisionNetwork};

use crate::error::Result;
use crate::run::{lm_input, vision_input};

/// A hooked model that runs on [`Batch`]es.
pub trait BatchModel<B: SaeBackend>: HookedModule<B> + Sized {
    /// The model's input for `batch`.
    fn input(batch: &Batch, device: &B::Device) -> Self::Input;

    /// The logits of a forward pass (`None` when the pass stopped early).
    fn logits(output: Self::Output) -> Result<Option<Tensor<B, 3>>>;
}

impl<B: SaeBackend> BatchModel<B> for DecoderLm<B> {
    fn input(batch: &Batch, device: &B::Device) -> Self::Input {
        lm_input(batch, device)
    }

    fn logits(output: LmOutput<B>) -> Result<Option<Tensor<B, 3>>> {
        Ok(output.logits)
    }
}

impl<B: SaeBackend> BatchModel<B> for &VisionNetwork<B> {
    fn input(batch: &Batch, device: &B::Device) -> Self::Input {
        vision_input(batch, device)
    }

    fn logits(output: sae_models::Result<LmOutput<B>>) -> Result<Option<Tensor<B, 3>>> {
        Ok(output?.logits)
    }
}
