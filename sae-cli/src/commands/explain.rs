//! `sae explain`: explain latents with a larger model behind an OpenAI-compatible API.

use std::path::PathBuf;

use anyhow::{Context, Result};
use sae_interp::{Cache, ExplainConfig, SamplingConfig, explain_latents};

use super::api_args::{ApiArgs, progress_reporter};

/// Explain the latents of a cache (`sae cache`) with a chat model behind an OpenAI-compatible
/// API (vLLM, SGLang, llama.cpp, Ollama, OpenAI): each latent's top contexts, activating tokens
/// marked, go to the model, whose one-line explanation is saved to OUT/explanations.json after
/// each latent. Run it again on the same OUT to continue after an interruption. Sends
/// OPENAI_API_KEY as a bearer token when it is set.
#[derive(clap::Args)]
#[command(after_help = "Examples:
  sae explain --cache cache/smollm2 --base-url http://localhost:8000/v1 --model Qwen/Qwen2.5-72B-Instruct --max-latents 100 --out explanations/smollm2
  OPENAI_API_KEY=... sae explain --cache cache/qwen --base-url https://api.openai.com/v1 --model gpt-4o-mini --out explanations/qwen
  sae explain --cache cache/qwen2-vl --base-url http://localhost:8000/v1 --model llava-hf/llava-onevision-qwen2-72b-ov-hf --images 3 --out explanations/qwen2-vl

Then: sae dashboard --cache cache/smollm2 --explanations explanations/smollm2 --out dash")]
pub struct Args {
    /// A cache folder written by `sae cache`.
    #[arg(long, value_name = "DIR")]
    cache: PathBuf,
    #[command(flatten)]
    api: ApiArgs,
    /// Explain at most N latents per hook point (the first that fired, by index).
    #[arg(long, value_name = "N")]
    max_latents: Option<usize>,
    /// Explain only these latents, e.g. --latents 12,345,6789 (the ones a dashboard or a
    /// steering run points to).
    #[arg(long, value_name = "LIST", value_delimiter = ',')]
    latents: Option<Vec<usize>>,
    /// Contexts shown per latent, most activating first.
    #[arg(long, default_value_t = 10)]
    top: usize,
    /// Tokens shown on each side of the activating token.
    #[arg(long, default_value_t = 12)]
    window: usize,
    /// Also show the N images each latent fires on most, its activation drawn over them in
    /// red (caches of vision-language models; the explainer model must take images).
    #[arg(long, value_name = "N", default_value_t = 0)]
    images: usize,
    /// The folder for explanations.json (kept explanations are not asked again).
    #[arg(long, value_name = "DIR")]
    out: PathBuf,
}

pub fn run(args: Args) -> Result<()> {
    let cache = Cache::open(&args.cache)?;
    let client = args.api.client();
    let config = ExplainConfig {
        sampling: SamplingConfig {
            top: args.top,
            window: args.window,
            images: args.images,
            ..SamplingConfig::default()
        },
        max_latents: args.max_latents,
        latents: args.latents,
        concurrency: args.api.concurrency,
    };
    let mut progress = progress_reporter("explained");
    let summary = explain_latents(&cache, &client, &args.out, &config, &mut progress)
        .with_context(|| format!("cannot explain the latents of {}", args.cache.display()))?;
    println!("{}", serde_json::to_string_pretty(&summary)?);
    Ok(())
}
