//! `sae dashboard`: a static HTML dashboard of a latent cache.

use std::path::PathBuf;

use anyhow::{Context, Result};
use sae_interp::{Cache, SamplingConfig, read_explanations, write_dashboard};

/// Write a static HTML dashboard of a latent cache (`sae cache`): OUT/index.html shows, per hook
/// point, a histogram of firing frequencies and every latent that fired with its frequency,
/// activations, explanation and most activating snippet; OUT/<hook index>/<latent>.html shows
/// its top contexts, each token shaded by the latent's activation, and the images it fires on
/// most with its activation drawn over them (copied to OUT/images/).
#[derive(clap::Args)]
#[command(after_help = "Examples:
  sae dashboard --cache cache/smollm2 --out dashboards/smollm2
  sae dashboard --cache cache/smollm2 --explanations explanations/smollm2 --top 20 --window 16 --out dash

--explanations DIR reads DIR/explanations.json: {\"<hook path>\": {\"<latent>\": \"explanation\"}}.")]
pub struct Args {
    /// A cache folder written by `sae cache`.
    #[arg(long, value_name = "DIR")]
    cache: PathBuf,
    /// A folder holding explanations.json, to show each latent's explanation.
    #[arg(long, value_name = "DIR")]
    explanations: Option<PathBuf>,
    /// The dashboard's folder (index.html and one page per latent).
    #[arg(long, value_name = "DIR")]
    out: PathBuf,
    /// Contexts per latent, most activating first.
    #[arg(long, default_value_t = 10)]
    top: usize,
    /// Tokens shown on each side of the activating token.
    #[arg(long, default_value_t = 12)]
    window: usize,
}

pub fn run(args: Args) -> Result<()> {
    let cache = Cache::open(&args.cache)?;
    let explanations = (args.explanations.as_deref())
        .map(read_explanations)
        .transpose()
        .context("cannot read the explanations")?;
    let sampling = SamplingConfig {
        top: args.top,
        window: args.window,
        ..SamplingConfig::default()
    };
    let summary = write_dashboard(&cache, explanations.as_ref(), &args.out, &sampling)
        .with_context(|| format!("cannot write the dashboard to {}", args.out.display()))?;
    println!("{}", serde_json::to_string_pretty(&summary)?);
    Ok(())
}
