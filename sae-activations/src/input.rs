//! Dataset batches as model inputs, and the models that run on them (training, evaluation,
//! latent caching): a decoder LM or a vision-language model, with its input for a batch and the
//! logits of its output.

use burn::tensor::backend::Backend;
use burn::tensor::{Int, Tensor, TensorData};
use sae_core::{HookedModule, SaeBackend};
use sae_data::Batch;
use sae_models::{DecoderLm, LmInput, LmOutput, VisionInput, VisionNetwork};

use crate::error::Result;

/// A batch as the model's input (the attention mask only where there is padding).
pub fn lm_input<B: Backend>(batch: &Batch, device: &B::Device) -> LmInput<B> {
    let shape = [batch.batch_size, batch.seq_len];
    let ids =
        Tensor::<B, 2, Int>::from_data(TensorData::new(batch.input_ids.clone(), shape), device);
    let padded = batch.attention_mask.contains(&0);
    LmInput {
        input_ids: ids,
        attention_mask: padded.then(|| {
            Tensor::from_data(TensorData::new(batch.attention_mask.clone(), shape), device)
        }),
    }
}

/// A batch as a vision-language model's input: [`lm_input`] and the batch's processed images.
pub fn vision_input<B: Backend>(batch: &Batch, device: &B::Device) -> VisionInput<B> {
    let input = lm_input(batch, device);
    VisionInput {
        input_ids: input.input_ids,
        attention_mask: input.attention_mask,
        images: batch.vision.clone(),
    }
}

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
