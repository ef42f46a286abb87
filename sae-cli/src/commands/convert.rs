//! `sae convert`: rewrite an SAE checkpoint in another layout.

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use sae_core::{Layout, StorageDtype};

/// Convert an SAE checkpoint between the PEFT adapter, sparsify and SAELens layouts.
#[derive(clap::Args)]
#[command(after_help = "Examples:
  sae convert --sae runs/sae --to sparsify --out runs/sae-sparsify
  sae convert --sae sparsify-run --to peft --out adapter --dtype bf16")]
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
    let checkpoint = super::load_checkpoint(&args.sae)?;
    sae_core::formats::save_replacing(&checkpoint, args.to, &args.out, args.dtype)
        .with_context(|| format!("cannot write {} as {}", args.out.display(), args.to))?;
    tracing::info!(from = %checkpoint.layout, to = %args.to, saes = checkpoint.saes.len(), out = %args.out.display(), "converted");
    Ok(())
}
