//! `sae convert`: rewrite an SAE checkpoint in another layout.

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use sae_core::{Layout, StorageDtype};
use sae_models::AnyModel;

use crate::backend;

/// Convert an SAE checkpoint between the PEFT adapter, sparsify and SAELens layouts.
#[derive(clap::Args)]
#[command(after_help = "Examples:
  sae convert --sae runs/sae --to sparsify --out runs/sae-sparsify
  sae convert --sae sparsify-run --to peft --model Qwen/Qwen2-0.5B --out adapter --dtype bf16

sparsify names hook points from the model's base module down (layers.1.mlp.down_proj), SAE Made
Easy by full module path (base_model.model.model.layers.1.mlp.down_proj): writing such SAEs as a
PEFT adapter needs --model, whose hook points give the full paths. Written as sparsify, a full
path loses its base module (model.layers.1 -> layers.1), as sparsify's own loading expects.")]
pub struct Args {
    /// Checkpoint folder to read (layout detected).
    #[arg(long, value_name = "DIR")]
    sae: PathBuf,
    /// Layout to write: peft, sparsify or saelens.
    #[arg(long)]
    to: Layout,
    /// Folder to write; must be empty or absent unless --overwrite.
    #[arg(long, value_name = "DIR")]
    out: PathBuf,
    /// How to store floats: f32, f16 or bf16.
    #[arg(long, default_value = "f32")]
    dtype: StorageDtype,
    /// The model the SAEs belong to (a folder, hub id or .gguf): names are resolved to its
    /// module paths and checked against its widths. Needed to write sparsify's SAEs as PEFT.
    #[arg(long, value_name = "MODEL")]
    model: Option<String>,
    /// Write into a non-empty folder, replacing the SAE checkpoint it holds (any layout; other
    /// files stay).
    #[arg(long)]
    overwrite: bool,
}

pub fn run(args: Args) -> Result<()> {
    if super::same_file(&args.sae, &args.out) {
        bail!(
            "--out {} is the checkpoint being converted; write the conversion to another folder",
            args.out.display()
        );
    }
    let non_empty = std::fs::read_dir(&args.out)
        .map(|mut d| d.next().is_some())
        .unwrap_or(false);
    if non_empty && !args.overwrite {
        bail!(
            "{} is not empty; choose another --out or pass --overwrite",
            args.out.display()
        );
    }
    let mut checkpoint = super::load_checkpoint(&args.sae)?;
    let points = match &args.model {
        Some(model) => {
            let points = AnyModel::<backend::Backend>::hook_points_of(model)
                .with_context(|| format!("cannot read the hook points of {model}"))?;
            checkpoint = checkpoint.on_model(&points).with_context(|| {
                format!("the SAEs in {} do not fit {model}", args.sae.display())
            })?;
            Some(points)
        }
        None => None,
    };
    for warning in checkpoint.warnings(args.to, points.as_deref()) {
        tracing::warn!("{warning}");
    }
    sae_core::formats::save_replacing(&checkpoint, args.to, &args.out, args.dtype)
        .with_context(|| format!("cannot write {} as {}", args.out.display(), args.to))?;
    tracing::info!(from = %checkpoint.layout, to = %args.to, saes = checkpoint.saes.len(), out = %args.out.display(), "converted");
    Ok(())
}
