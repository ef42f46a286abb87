//! The tensors of an activations file (`sae activations --out`), named as transformers names
//! them so Python reads it like its own: `inputs.<name>` for each of the processor's outputs
//! (`inputs.input_ids`, `inputs.pixel_values`, ...), `logits`, and `hook.<path>` for each
//! recorded hook output, in the shape transformers gives it.

use burn::tensor::Tensor;
use burn::tensor::backend::Backend;
use sae_core::HostTensor;
use sae_models::{AnyModel, ProcessedPrompt};

/// The prefix of the processor's outputs.
pub const INPUTS: &str = "inputs.";
/// The prefix of hook outputs.
pub const HOOKS: &str = "hook.";
/// The name of the logits.
pub const LOGITS: &str = "logits";

/// The name of hook `path`'s output.
pub fn hook_name(path: &str) -> String {
    format!("{HOOKS}{path}")
}

/// An activations file's tensors: `prompt`'s inputs as `model` processed them, the `logits`
/// and the hook outputs `records` (`(path, output)`).
pub fn activation_tensors<B: Backend>(
    model: &AnyModel<B>,
    prompt: &ProcessedPrompt,
    logits: Option<Tensor<B, 3>>,
    records: Vec<(String, Tensor<B, 3>)>,
) -> Vec<(String, HostTensor)> {
    let mut tensors: Vec<(String, HostTensor)> = (prompt.tensors().into_iter())
        .map(|(name, t)| (format!("{INPUTS}{name}"), t))
        .collect();
    if let Some(logits) = logits {
        tensors.push((LOGITS.to_string(), HostTensor::from_float(logits)));
    }
    for (path, x) in records {
        let mut t = HostTensor::from_float(x);
        t.shape = model.transformers_shape(&path, &t.shape);
        tensors.push((hook_name(&path), t));
    }
    tensors
}
