//! `sae cache`: record the latents an SAE finds over a dataset.

use std::path::PathBuf;

use anyhow::{Context, Result};
use burn::tensor::DType;
use sae_activations::dataset_scope;
use sae_data::Dataset;
use sae_interp::CacheConfig;
use sae_models::AnyModel;

use super::read_args::ReadArgs;
use crate::backend;

/// Run a model over a dataset with an SAE checkpoint and record every token's active latents
/// (sequence, position, latent, activation) with the tokens, for `sae dashboard` and
/// `sae explain`. Prints a JSON summary.
#[derive(clap::Args)]
#[command(after_help = "Examples:
  sae cache --model smollm2.gguf --sae runs/smollm2/sae --data data/shakespeare-test --out cache/smollm2
  sae cache --model ./qwen2-vl --sae runs/qwen/sae --data data/vqa --batches 100 --out cache/qwen

OUT holds cache.json, tokens.safetensors and latents/<hook path>/NNNNN.safetensors
(locations [n, 3] = sequence, position, latent; activations [n]); see the book's
Interpretation page.")]
pub struct Args {
    /// Model: a local HF folder, a hub id or a .gguf file.
    #[arg(long, value_name = "M")]
    model: String,
    /// The SAEs (a run's sae/ or any SAE checkpoint layout); language-model hook points only.
    #[arg(long, value_name = "DIR")]
    sae: PathBuf,
    /// Dataset folder written by `sae preprocess`.
    #[arg(long, value_name = "DIR")]
    data: PathBuf,
    /// A new (or empty) folder for the cache.
    #[arg(long, value_name = "DIR")]
    out: PathBuf,
    /// Batches to run (default: the whole dataset, once).
    #[arg(long, value_name = "N")]
    batches: Option<usize>,
    #[command(flatten)]
    read: ReadArgs,
}

pub fn run(args: Args) -> Result<()> {
    let device = backend::device()?;
    super::warn_if_other_model(&args.sae, &args.model);
    // Only the layers up to the deepest SAE are loaded: the pass stops there.
    let saes = sae_core::formats::load(&args.sae)
        .with_context(|| format!("cannot read the SAEs in {}", args.sae.display()))?;
    let dataset = Dataset::open(&args.data)
        .with_context(|| format!("cannot open dataset {}", args.data.display()))?;
    let hooks = saes.saes.keys().map(String::as_str);
    let scope = dataset_scope::<backend::Backend>(&args.model, hooks, &dataset)?;
    let model = AnyModel::<backend::Backend>::load_scoped(&args.model, DType::F32, &scope, &device)
        .with_context(|| format!("cannot load model {}", args.model))?;
    let config = CacheConfig {
        batches: args.batches,
        read: args.read.config(),
        ..CacheConfig::default()
    };
    let info = sae_interp::cache_latents(model, &args.sae, &args.data, &args.out, &config, &device)
        .with_context(|| format!("cannot cache the latents of {}", args.sae.display()))?;
    let summary = serde_json::json!({
        "out": args.out,
        "sequences": info.sequences,
        "tokens": info.tokens,
        "hooks": info.hooks,
    });
    println!("{}", serde_json::to_string_pretty(&summary)?);
    Ok(())
}
