//! `sae activations`: run a model and write hook outputs, logits and inputs to safetensors.

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use sae_core::{Chain, HookedModule, HostTensor, Recorder, StorageDtype};
use sae_models::{AnyModel, LmInput, qwen2_vl};

use super::model_args::{ModelArgs, Processed};
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
    /// Print the model's hook points (path, width, kind) and exit.
    #[arg(long)]
    list_hooks: bool,
}

pub fn run(args: Args) -> Result<()> {
    let loaded = args.model.load()?;
    if args.list_hooks {
        for p in loaded.hook_points() {
            println!("{}\t{}\t{:?}", p.path, p.width, p.kind);
        }
        return Ok(());
    }
    let out = args.out.expect("clap requires --out");
    let processed = args.model.process(&loaded)?;
    let device = backend::device()?;
    let mut recorder = Recorder::new(&args.hooks).context("bad --hooks pattern")?;
    // Hook outputs are written in the shapes transformers gives them.
    let (logits, shape_of): (_, ShapeOf) = match (loaded, &processed) {
        (AnyModel::Text(lm), Processed::Text(ids)) => {
            let input = LmInput::from_ids(ids, &device);
            let out = args.sae.run(lm.model, |model, hooks| {
                Ok(model.forward_hooked(input, &mut Chain(hooks, &mut recorder)))
            })?;
            (out.logits, |_, shape| shape.to_vec())
        }
        (AnyModel::Vision(vlm), Processed::Vision(prompt)) => {
            let input = prompt.to_input(&device);
            let out = args.sae.run(vlm.model, |model, hooks| {
                Ok(model.forward_hooked(input, &mut Chain(hooks, &mut recorder))?)
            })?;
            (out.logits, qwen2_vl::transformers_shape)
        }
        _ => unreachable!("a prompt is processed for the model that was loaded"),
    };
    if !args.hooks.is_empty() && recorder.records.is_empty() {
        bail!("no hook point matches {:?}; see --list-hooks", args.hooks);
    }
    let mut tensors = processed.tensors();
    tensors.push((
        "logits".to_string(),
        HostTensor::from_float(logits.expect("the pass runs to the end")),
    ));
    let hooked = recorder.records.len();
    for (path, x) in recorder.records {
        let mut t = HostTensor::from_float(x);
        t.shape = shape_of(&path, &t.shape);
        tensors.push((format!("hook.{path}"), t));
    }
    sae_core::tensor_file::write_tensors(&out, &tensors, StorageDtype::F32, None)?;
    let tokens = processed.ids().len();
    tracing::info!(tokens, hooks = hooked, out = %out.display(), "wrote");
    Ok(())
}

/// The shape transformers gives a hook's output, from its path and shape here.
type ShapeOf = fn(&str, &[usize]) -> Vec<usize>;
