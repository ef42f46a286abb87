//! `sae activations`: run a model and write hook outputs, logits and inputs to safetensors.

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use sae_core::{Chain, HookedModule, HostTensor, NoHooks, Recorder, SaeModel, StorageDtype};
use sae_models::LmInput;

use super::model_args::ModelArgs;
use crate::backend;

/// Run a model and write `inputs.input_ids`, `logits` and `hook.<path>` for each hook point a
/// --hooks regex matches (full match) to a safetensors file.
#[derive(clap::Args)]
#[command(after_help = "Examples:
  sae activations --model ./qwen2 --text \"Shall I compare thee\" --hooks 'model\\.layers\\.1' --out acts.safetensors
  sae activations --model HuggingFaceTB/SmolLM2-135M-Instruct --chat \"Hi\" --hooks '.*mlp' --out acts.safetensors
  sae activations --model ./qwen2 --text \"Hi\" --sae runs/sae --hooks '.*down_proj' --out with-sae.safetensors
  sae activations --model ./qwen2 --list-hooks")]
pub struct Args {
    #[command(flatten)]
    model: ModelArgs,
    /// Regexes of hook points to record (full match), e.g. 'model\.layers\.\d+'.
    #[arg(long = "hooks", value_name = "REGEX")]
    hooks: Vec<String>,
    /// Inject this SAE checkpoint (eval mode: reconstructions replace the module outputs).
    #[arg(long, value_name = "DIR")]
    sae: Option<PathBuf>,
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
    let lm = args.model.load()?;
    if args.list_hooks {
        for p in lm.model.hook_points() {
            println!("{}\t{}\t{:?}", p.path, p.width, p.kind);
        }
        return Ok(());
    }
    let out = args.out.expect("clap requires --out");
    let ids = args.model.prompt_ids(&lm)?;
    let device = backend::device();
    let mut recorder = Recorder::new(&args.hooks).context("bad --hooks pattern")?;
    let input = LmInput::from_ids(&ids, &device);
    let output = match &args.sae {
        Some(dir) => {
            let sae_model = SaeModel::from_pretrained(lm.model, dir, &device)
                .with_context(|| format!("cannot inject the SAE in {}", dir.display()))?;
            let empty = BTreeMap::new();
            let mut sae_hooks = sae_model.hooks(&empty);
            let output = sae_model
                .model()
                .forward_hooked(input, &mut Chain(&mut sae_hooks, &mut recorder));
            sae_hooks.finish().context("the SAE failed")?;
            output
        }
        None => lm
            .model
            .forward_hooked(input, &mut Chain(&mut NoHooks, &mut recorder)),
    };
    if !args.hooks.is_empty() && recorder.records.is_empty() {
        bail!("no hook point matches {:?}; see --list-hooks", args.hooks);
    }
    let t = ids.len();
    let mut tensors = vec![
        (
            "inputs.input_ids".to_string(),
            HostTensor::i64(vec![1, t], ids),
        ),
        (
            "inputs.attention_mask".to_string(),
            HostTensor::i64(vec![1, t], vec![1; t]),
        ),
        (
            "logits".to_string(),
            HostTensor::from_float(output.logits.expect("the pass runs to the end")),
        ),
    ];
    let hooked = recorder.records.len();
    for (path, x) in recorder.records {
        tensors.push((format!("hook.{path}"), HostTensor::from_float(x)));
    }
    sae_core::tensor_file::write_tensors(&out, &tensors, StorageDtype::F32, None)?;
    tracing::info!(tokens = t, hooks = hooked, out = %out.display(), "wrote");
    Ok(())
}
