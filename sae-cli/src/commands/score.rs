//! `sae score`: score explanations by detection.

use std::path::PathBuf;

use anyhow::{Context, Result};
use sae_interp::{Cache, SamplingConfig, ScoreConfig, read_explanations, score_explanations};

use super::api_args::{ApiArgs, progress_reporter};

/// Score the explanations of `sae explain` by detection: a chat model behind an
/// OpenAI-compatible API reads each explanation and a shuffled mix of excerpts where the latent
/// fires and where it does not, and says where it would fire. Writes OUT/scores.json (per hook
/// point and latent: accuracy, precision, recall, F1; a latent that cannot be scored gets an
/// `error`) and prints the mean of each over the scored latents of the file. Scores are saved
/// after each latent: run it again on the same OUT to continue after an interruption or
/// failures (latents scored without error for the same explanation are not asked again). Fails
/// when no latent could be scored.
#[derive(clap::Args)]
#[command(after_help = "Examples:
  sae score --cache cache/smollm2 --explanations explanations/smollm2 --base-url http://localhost:8000/v1 --model Qwen/Qwen2.5-72B-Instruct --out scores/smollm2")]
pub struct Args {
    /// A cache folder written by `sae cache`.
    #[arg(long, value_name = "DIR")]
    cache: PathBuf,
    /// A folder holding explanations.json.
    #[arg(long, value_name = "DIR")]
    explanations: PathBuf,
    #[command(flatten)]
    api: ApiArgs,
    /// Excerpts where the latent fires, per latent (drawn at random, apart from the --top
    /// contexts the explainer saw).
    #[arg(long, default_value_t = 10)]
    activating: usize,
    /// Excerpts where it does not fire, per latent.
    #[arg(long, default_value_t = 10)]
    non_activating: usize,
    /// The --top the explanations were made with (those contexts are not scored on).
    #[arg(long, default_value_t = 10)]
    top: usize,
    /// Tokens on each side of an excerpt's centre.
    #[arg(long, default_value_t = 12)]
    window: usize,
    /// Seeds the choice and order of the excerpts.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// The folder for scores.json (latents it scores already are kept and not asked again).
    #[arg(long, value_name = "DIR")]
    out: PathBuf,
}

pub fn run(args: Args) -> Result<()> {
    let cache = Cache::open(&args.cache)?;
    let explanations = read_explanations(&args.explanations)?;
    let client = args.api.client();
    let config = ScoreConfig {
        sampling: SamplingConfig {
            top: args.top,
            window: args.window,
            random: args.activating,
            non_activating: args.non_activating,
            seed: args.seed,
            images: 0,
        },
        concurrency: args.api.concurrency,
    };
    let mut progress = progress_reporter("scored");
    let scores = score_explanations(
        &cache,
        &explanations,
        &client,
        &args.out,
        &config,
        &mut progress,
    )
    .context("cannot score the explanations")?;
    let all: Vec<_> = scores.values().flat_map(|s| s.values()).collect();
    let scored: Vec<_> = all.iter().filter(|s| s.error.is_none()).collect();
    let mean = |f: fn(&sae_interp::LatentScore) -> f64| {
        scored.iter().map(|s| f(s)).sum::<f64>() / scored.len().max(1) as f64
    };
    let summary = serde_json::json!({
        "scored": scored.len(),
        "not_scored": all.len() - scored.len(),
        "accuracy": mean(|s| s.accuracy),
        "precision": mean(|s| s.precision),
        "recall": mean(|s| s.recall),
        "f1": mean(|s| s.f1),
        "scores": args.out.join(sae_interp::SCORES_FILE),
    });
    println!("{}", serde_json::to_string_pretty(&summary)?);
    Ok(())
}
