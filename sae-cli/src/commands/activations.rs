//! `sae activations`: run a model and write hook outputs, logits and inputs to safetensors.

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use sae_activations::file::activation_tensors;
use sae_core::{Chain, HookedModule, Recorder, StorageDtype};
use sae_models::{AnyModel, LoadScope};

use super::model_args::ModelArgs;
use super::sae_args::SaeArgs;
use crate::backend;

/// Run a model and write `inputs.input_ids`, `logits` and `hook.<path>` for each hook point a
/// --hooks regex matches (full match) to a safetensors file.
#[derive(clap::Args)]
#[command(after_help = "Examples:
  sae activations --model ./qwen2 --text \"Shall I compare thee\" --hooks 'model\\.layers\\.1' --out acts.safetensors
  sae activations --model HuggingFaceTB/SmolLM2-135M-Instruct --chat \"Hi\" --hooks '.*mlp' --out acts.safetensors
  sae activations --model ./qwen2 --text \"Hi\" --sae runs/sae --hooks '.*down_proj' --out with-sae.safetensors
  sae activations --model ./qwen2-vl --image a.png --chat \"Describe this image.\" --hooks 'model\\.visual\\.merger' --out acts.safetensors
  sae activations --model ./qwen2 --list-hooks")]
pub struct Args {
    #[command(flatten)]
    model: ModelArgs,
    /// Regexes of hook points to record (full match), e.g. 'model\.layers\.\d+'.
    #[arg(long = "hooks", value_name = "REGEX")]
    hooks: Vec<String>,
    #[command(flatten)]
    sae: SaeArgs,
    /// Output safetensors file.
    #[arg(
        long,
        value_name = "F.safetensors",
        required_unless_present = "list_hooks"
    )]
    out: Option<PathBuf>,
    /// Print the model's hook points (path, width, kind) and exit (reads the config only).
    #[arg(long)]
    list_hooks: bool,
    /// Do not write the logits: the pass stops after the deepest hook, and the layers after it,
    /// the final norm and the LM head are not loaded (a 7B model read at layer 4 loads 5 of
    /// its 28 layers).
    #[arg(long, requires = "hooks")]
    no_logits: bool,
}

pub fn run(args: Args) -> Result<()> {
    let spec = &args.model.model;
    args.sae.warn_if_other_model(spec);
    let points = AnyModel::<backend::Backend>::hook_points_of(spec)
        .with_context(|| format!("cannot read the hook points of {spec}"))?;
    if args.list_hooks {
        for p in points {
            println!("{}\t{}\t{:?}", p.path, p.width, p.kind);
        }
        return Ok(());
    }
    let out = args.out.expect("clap requires --out");
    let patterns = Recorder::<backend::Backend>::new(&args.hooks).context("bad --hooks pattern")?;
    let matched: Vec<String> = (points.iter())
        .filter(|p| patterns.wants(&p.path))
        .map(|p| p.path.clone())
        .collect();
    if !args.hooks.is_empty() && matched.is_empty() {
        bail!("no hook point matches {:?}; see --list-hooks", args.hooks);
    }
    let images = !args.model.image.is_empty();
    let scope = if args.no_logits {
        LoadScope::through(&points, matched.iter().map(String::as_str), images)
    } else {
        LoadScope::whole(images)
    };
    let loaded = args.model.load(&scope)?;
    let processed = args.model.process(&loaded)?;
    let device = backend::device()?;
    let mut recorder = Recorder::paths(&matched, args.no_logits);
    let logits = match &loaded {
        AnyModel::Text(lm) => {
            let input = processed.to_lm_input(&device);
            let out = args.sae.run(&lm.model, |model, hooks| {
                Ok(model.forward_hooked(input, &mut Chain(hooks, &mut recorder)))
            })?;
            out.logits
        }
        AnyModel::Vision(vlm) => {
            let input = processed.to_input(&device);
            let out = args.sae.run(&vlm.model, |model, hooks| {
                Ok(model.forward_hooked(input, &mut Chain(hooks, &mut recorder))?)
            })?;
            out.logits
        }
    };
    let hooked = recorder.records.len();
    if !args.no_logits && logits.is_none() {
        bail!("the forward pass ended before the logits");
    }
    // Hook outputs are written in the shapes transformers gives them.
    let tensors = activation_tensors(&loaded, &processed, logits, recorder.records);
    sae_core::tensor_file::write_tensors(&out, &tensors, StorageDtype::F32, None)?;
    let tokens = processed.input_ids.len();
    tracing::info!(tokens, hooks = hooked, out = %out.display(), "wrote");
    Ok(())
}
