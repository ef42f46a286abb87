//! `sae generate`: generate text, greedy or sampled, optionally with an SAE injected or steering.

use anyhow::Result;
use sae_models::{AnyModel, GenerateConfig, Sampling, generate};

use super::model_args::ModelArgs;
use super::sae_args::SaeArgs;
use crate::backend;

/// Generate text from a prompt with a KV cache; greedy unless --temperature, --top-p or --seed
/// is given.
#[derive(clap::Args)]
#[command(after_help = "Examples:
  sae generate --model ./smollm2 --chat \"What is a sparse autoencoder?\" --max-new-tokens 64
  sae generate --model ./qwen2 --text \"Shall I compare thee\" --max-new-tokens 8 --json
  sae generate --model ./qwen2 --text \"Once\" --max-new-tokens 20 --temperature 0.8 --top-p 0.9 --seed 1
  sae generate --model Qwen/Qwen2-VL-2B-Instruct --image cat.png --chat \"What is in the picture?\" --max-new-tokens 32

Steering (the SAE's reconstruction replaces the hooked output; --keep-error keeps its error):
  sae generate --model ./smollm2 --sae runs/sae --clamp 1234=40 --chat \"Tell me a story.\" --max-new-tokens 64
  sae generate --model ./smollm2 --sae runs/sae --add 1234=8 --keep-error --chat \"Hi\" --max-new-tokens 32 --compare
  sae generate --model ./qwen2-vl --sae saes/ --steer-hook model.language_model.layers.24 \\
      --clamp 77=50 --steer-prompt-only --image cat.png --chat \"What is this?\" --max-new-tokens 32

--json prints {\"tokens\": [ids of the generated tokens only], \"text\": \"...\"}.")]
pub struct Args {
    #[command(flatten)]
    model: ModelArgs,
    /// Most tokens to generate.
    #[arg(long, value_name = "N")]
    max_new_tokens: usize,
    /// Print JSON: the generated token ids and their text.
    #[arg(long)]
    json: bool,
    /// Sampling temperature (default 1.0 when sampling).
    #[arg(long)]
    temperature: Option<f32>,
    /// Nucleus sampling threshold (default 1.0 when sampling).
    #[arg(long)]
    top_p: Option<f32>,
    /// Random seed for sampling (default 0 when sampling).
    #[arg(long)]
    seed: Option<u64>,
    #[command(flatten)]
    sae: SaeArgs,
    /// Also generate without the SAE and print both (Multimodal-SAE's original and clamped
    /// responses); with --json the plain run is under "without_sae".
    #[arg(long, requires = "sae")]
    compare: bool,
}

pub fn run(args: Args) -> Result<()> {
    args.sae.warn_if_other_model(&args.model.model);
    let loaded = args.model.load(&args.model.whole())?;
    let processed = args.model.process(&loaded)?;
    let sampling = (args.temperature.is_some() || args.top_p.is_some() || args.seed.is_some())
        .then(|| Sampling {
            temperature: args.temperature.unwrap_or(1.0),
            top_p: args.top_p.unwrap_or(1.0),
            seed: args.seed.unwrap_or(0),
        });
    if let Some(s) = sampling {
        anyhow::ensure!(s.temperature > 0.0, "--temperature must be positive");
        anyhow::ensure!(s.top_p > 0.0 && s.top_p <= 1.0, "--top-p must be in (0, 1]");
    }
    let (stop_tokens, tokenizer) = (loaded.stop_tokens().to_vec(), loaded.tokenizer().clone());
    let config = GenerateConfig {
        max_new_tokens: args.max_new_tokens,
        sampling,
        stop_tokens,
        pad_token: tokenizer.pad_token_id().unwrap_or(0),
    };
    let device = backend::device()?;
    let prompts = [processed.input_ids.clone()];
    let run = |sae: &SaeArgs| -> Result<Vec<i64>> {
        let tokens = match &loaded {
            AnyModel::Text(lm) => sae.run(&lm.model, |model, hooks| {
                Ok(generate(*model, &prompts, &config, hooks, &device)?)
            })?,
            AnyModel::Vision(vlm) => sae.run(&vlm.model, |model, hooks| {
                let generator = model.generator(processed.images.clone());
                Ok(generate(&generator, &prompts, &config, hooks, &device)?)
            })?,
        };
        Ok(tokens.into_iter().next().unwrap_or_default())
    };
    let tokens = run(&args.sae)?;
    let text = tokenizer.decode(&tokens)?;
    let plain = match args.compare {
        true => {
            let tokens = run(&SaeArgs::default())?;
            let text = tokenizer.decode(&tokens)?;
            Some((tokens, text))
        }
        false => None,
    };
    match (args.json, plain) {
        (true, None) => println!("{}", serde_json::json!({"tokens": tokens, "text": text})),
        (true, Some((plain_tokens, plain_text))) => println!(
            "{}",
            serde_json::json!({
                "tokens": tokens,
                "text": text,
                "without_sae": {"tokens": plain_tokens, "text": plain_text},
            })
        ),
        (false, None) => println!("{text}"),
        (false, Some((_, plain_text))) => {
            println!("with the SAE:\n{text}\n\nwithout the SAE:\n{plain_text}")
        }
    }
    Ok(())
}
