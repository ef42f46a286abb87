//! `sae eval`: FVU, L0, dead and dense latents, and CE / KL loss recovered on held-out data.

use std::path::PathBuf;

use anyhow::{Context, Result};
use burn::tensor::DType;
use sae_activations::has_images;
use sae_data::Dataset;
use sae_models::{AnyModel, LoadScope};
use sae_train::EvalConfig;

use super::read_args::ReadArgs;
use crate::backend;

/// Evaluate trained SAEs on held-out data: per hook point FVU, L0, dead and dense latents; for
/// the model, next-token cross-entropy clean, with every SAE spliced in and with the hooked
/// outputs zero-ablated, and the CE and KL loss recovered. Prints the report as JSON.
#[derive(clap::Args)]
#[command(after_help = "Examples:
  sae eval --model smollm2.gguf --sae runs/smollm2/sae --data data/shakespeare-test
  sae eval --model ./qwen2 --sae runs/qwen/sae --data data/held-out --batches 64 --out eval.json

ce_loss_recovered = (ce_zero - ce_sae) / (ce_zero - ce_clean); kl_loss_recovered =
(kl_zero - kl_sae) / kl_zero, with kl the mean KL(clean || spliced) per next-token prediction.")]
pub struct Args {
    /// Model: a local HF folder, a hub id or a .gguf file.
    #[arg(long, value_name = "M")]
    model: String,
    /// The SAEs (a run's sae/ or checkpoint adapter, or any SAE checkpoint layout).
    #[arg(long, value_name = "DIR")]
    sae: PathBuf,
    /// Held-out dataset folder written by `sae preprocess`.
    #[arg(long, value_name = "DIR")]
    data: PathBuf,
    /// Batches to evaluate.
    #[arg(long, default_value_t = 16)]
    batches: usize,
    #[command(flatten)]
    read: ReadArgs,
    /// A latent firing on more than this fraction of tokens counts as dense.
    #[arg(long, default_value_t = 0.1)]
    dense_threshold: f64,
    /// Also write the report to this file.
    #[arg(long, value_name = "F.json")]
    out: Option<PathBuf>,
}

pub fn run(args: Args) -> Result<()> {
    let device = backend::device()?;
    super::warn_if_other_model(&args.sae, &args.model);
    // The loss with the SAE spliced in needs the logits: the whole model is loaded.
    let dataset = Dataset::open(&args.data)
        .with_context(|| format!("cannot open dataset {}", args.data.display()))?;
    let scope = LoadScope::whole(has_images(&dataset));
    let model = AnyModel::<backend::Backend>::load_scoped(&args.model, DType::F32, &scope, &device)
        .with_context(|| format!("cannot load model {}", args.model))?;
    let config = EvalConfig {
        batches: args.batches,
        read: args.read.config(),
        dense_threshold: args.dense_threshold,
    };
    let report = sae_train::evaluate(model, &args.sae, &args.data, &config, &device)
        .with_context(|| format!("cannot evaluate the SAEs in {}", args.sae.display()))?;
    let text = serde_json::to_string_pretty(&report)?;
    if let Some(out) = &args.out {
        sae_core::tensor_file::write_atomic(out, format!("{text}\n").as_bytes())?;
    }
    println!("{text}");
    Ok(())
}
