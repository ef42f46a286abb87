//! A prompt as a model's processor returns it, on the host: token ids (image placeholders
//! expanded), the processed images, and the tensors transformers' processor would return.

use burn::tensor::backend::Backend;
use burn::tensor::{Int, Tensor, TensorData};
use sae_core::HostTensor;

use crate::decoder::LmInput;
use crate::vision_language::{ProcessedImages, VisionInput};

/// A prompt ready for the model that processed it.
#[derive(Debug, Clone)]
pub struct ProcessedPrompt {
    /// Token ids, images expanded.
    pub input_ids: Vec<i64>,
    /// The processed images, when there are any.
    pub images: Option<ProcessedImages>,
    /// 1 for image tokens, 0 for text, where the processor returns them (Qwen2-VL's
    /// `mm_token_type_ids`).
    pub mm_token_type_ids: Option<Vec<i64>>,
}

impl ProcessedPrompt {
    /// A text prompt's token ids.
    pub fn text(input_ids: Vec<i64>) -> Self {
        ProcessedPrompt {
            input_ids,
            images: None,
            mm_token_type_ids: None,
        }
    }

    /// The language model's input, one unpadded row.
    pub fn to_lm_input<B: Backend>(&self, device: &B::Device) -> LmInput<B> {
        LmInput::from_ids(&self.input_ids, device)
    }

    /// The vision-language model's input, one unpadded row.
    pub fn to_input<B: Backend>(&self, device: &B::Device) -> VisionInput<B> {
        let t = self.input_ids.len();
        VisionInput {
            input_ids: Tensor::<B, 2, Int>::from_data(
                TensorData::new(self.input_ids.clone(), [1, t]),
                device,
            ),
            attention_mask: None,
            images: self.images.clone(),
        }
    }

    /// The processor's outputs as transformers names them (`input_ids`, `attention_mask`,
    /// then the image tensors where there are images).
    pub fn tensors(&self) -> Vec<(&'static str, HostTensor)> {
        let t = self.input_ids.len();
        let row = |values: Vec<i64>| HostTensor::i64(vec![1, t], values);
        let mut out = vec![
            ("input_ids", row(self.input_ids.clone())),
            ("attention_mask", row(vec![1; t])),
        ];
        if let Some(images) = &self.images {
            if let Some(types) = &self.mm_token_type_ids {
                out.push(("mm_token_type_ids", row(types.clone())));
            }
            out.extend(images.tensors());
        }
        out
    }
}
