//! `sae encode`: run an SAE on activations read from a safetensors file.

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use indicatif::{ProgressBar, ProgressStyle};
use sae_core::{HostTensor, StorageDtype, TensorFile, encode_tokens};

use crate::backend;

/// Run an SAE on activations from a safetensors file; writes latent_acts [N,k],
/// latent_indices [N,k] (int64), sae_out [N,d] and fvu [1].
#[derive(clap::Args)]
#[command(after_help = "Examples:
  sae encode --sae runs/sae --input acts.safetensors --key hook.model.layers.1 --out latents.safetensors
  sae encode --sae sparsify-run --hook layers.6 --input acts.safetensors --key x --out out.safetensors

The tensor NAME may be [N, d] or [B, T, d] (flattened to N = B x T). For SAEs whose tokens have
different numbers of active latents (BatchTopK, JumpReLU, ReLU), the width is the largest count
and empty slots hold index -1 and value 0.")]
pub struct Args {
    /// SAE checkpoint folder (PEFT adapter, sparsify or SAELens; detected).
    #[arg(long, value_name = "DIR")]
    sae: PathBuf,
    /// Safetensors file holding the activations.
    #[arg(long, value_name = "F.safetensors")]
    input: PathBuf,
    /// Name of the activation tensor in the input file.
    #[arg(long, value_name = "NAME")]
    key: String,
    /// Output safetensors file.
    #[arg(long, value_name = "OUT.safetensors")]
    out: PathBuf,
    /// Which SAE, when the checkpoint holds several (its hook point).
    #[arg(long, value_name = "PATH")]
    hook: Option<String>,
    /// Tokens encoded at once (bounds memory: chunk x num_latents floats).
    #[arg(long, default_value_t = 4096)]
    chunk: usize,
}

pub fn run(args: Args) -> Result<()> {
    let checkpoint = super::load_checkpoint(&args.sae)?;
    let hooks: Vec<&String> = checkpoint.saes.keys().collect();
    let host = match &args.hook {
        Some(h) => checkpoint.saes.get(h).with_context(|| {
            format!("the checkpoint has no SAE for hook {h:?}; it has {hooks:?}")
        })?,
        None if hooks.len() == 1 => &checkpoint.saes[hooks[0]],
        None => bail!("the checkpoint holds SAEs for {hooks:?}; choose one with --hook"),
    };
    if super::same_file(&args.input, &args.out) {
        bail!(
            "--out {} is the input file; choose another path (the activations would be lost)",
            args.out.display()
        );
    }
    let file = TensorFile::open(&args.input).context("cannot read the activations")?;
    if !file.contains(&args.key) {
        bail!(
            "{} has no tensor {:?}; it has {:?}",
            args.input.display(),
            args.key,
            file.names()
        );
    }
    let x = file.get(&args.key)?;
    let device = backend::device()?;
    let sae = host.to_sae::<backend::Backend>(&device)?;
    let (n, _) = sae_core::encode_file::token_matrix(&x, sae.d_in())
        .with_context(|| format!("tensor {:?} cannot be encoded by this SAE", args.key))?;
    tracing::info!(
        tokens = n,
        latents = sae.num_latents(),
        backend = backend::NAME,
        "encoding"
    );
    let bar = ProgressBar::new(n as u64).with_style(
        ProgressStyle::with_template("{bar:40} {pos}/{len} tokens {per_sec} eta {eta}")
            .expect("a valid template"),
    );
    let encoded = encode_tokens(&sae, &x, args.chunk, &device, |done, _| {
        bar.set_position(done as u64)
    })
    .with_context(|| format!("cannot encode tensor {:?}", args.key))?;
    bar.finish_and_clear();
    let tensors = [
        ("latent_acts", encoded.latent_acts),
        ("latent_indices", encoded.latent_indices),
        ("sae_out", encoded.sae_out),
        ("fvu", HostTensor::f32(vec![1], vec![encoded.fvu])),
    ]
    .map(|(name, t)| (name.to_string(), t));
    sae_core::tensor_file::write_tensors(&args.out, &tensors, StorageDtype::F32, None)?;
    tracing::info!(fvu = encoded.fvu, out = %args.out.display(), "wrote");
    Ok(())
}
