//! `sae preprocess`: convert a dataset to the standard Parquet format.

use std::path::PathBuf;

use anyhow::{Context, Result};
use indicatif::{ProgressBar, ProgressStyle};
use sae_data::{Format, OnError, PreprocessOptions, ShardOptions};

/// Convert a dataset into the standard Parquet format that `sae train` and `sae eval` read:
/// shards `OUTPUT/data/<split>-00000-of-0000N.parquet` (chat rows: `messages` + `images`; text
/// rows: `text`) and `OUTPUT/sae_dataset.json`.
#[derive(clap::Args)]
#[command(after_help = "Formats:
  llava-ov   LLaVA-OneVision-Data Parquet (a file or folder): `image`, `conversations`
  text       .txt files (one row each), JSONL or Parquet with a text column (--text-column)
  easy-vqa   the easy-VQA folder (images/ and questions.json; or its data/ with train/ and test/)

Examples:
  sae preprocess --format llava-ov --input CLEVR-Math/ --output data/clevr
  sae preprocess --format text --input shakespeare/texts --output data/shakespeare --seed 0
  sae preprocess --format easy-vqa --input easy_vqa/data --split test --output data/vqa-test \\
      --on-error skip --limit 1000")]
pub struct Args {
    /// Source format: llava-ov, text or easy-vqa.
    #[arg(long)]
    format: Format,
    /// Input file or folder.
    #[arg(long, value_name = "PATH")]
    input: PathBuf,
    /// Dataset folder to write (must not hold a dataset yet).
    #[arg(long, value_name = "DIR")]
    output: PathBuf,
    /// Bad rows (undecodable image, empty conversation, ...): fail, or skip and count them.
    #[arg(long, default_value = "fail")]
    on_error: OnError,
    /// Stop after this many rows are written.
    #[arg(long)]
    limit: Option<usize>,
    /// Most rows per shard file.
    #[arg(long, value_name = "ROWS", default_value_t = 10_000)]
    shard: usize,
    /// Rows per Parquet row group (the unit the loader streams and shuffles); default 1024
    /// for text, 128 for chat rows.
    #[arg(long, value_name = "ROWS")]
    row_group: Option<usize>,
    /// Shuffle the rows of each shard with this seed (the loader shuffles again at training).
    #[arg(long)]
    seed: Option<u64>,
    /// Split name of the shard files (and easy-VQA's split folder).
    #[arg(long, default_value = "train")]
    split: String,
    /// The text field of JSONL or Parquet text input.
    #[arg(long, default_value = "text")]
    text_column: String,
}

pub fn run(args: Args) -> Result<()> {
    let mut options = PreprocessOptions::new(args.format, &args.input, &args.output);
    options.on_error = args.on_error;
    options.limit = args.limit;
    options.text_column = args.text_column;
    options.shards = ShardOptions {
        split: args.split,
        rows_per_shard: args.shard,
        rows_per_group: args.row_group,
        seed: args.seed,
        ..ShardOptions::default()
    };
    let bar = ProgressBar::new(0).with_style(
        ProgressStyle::with_template("{bar:40} {pos}/{len} rows {per_sec} eta {eta}")
            .expect("a valid template"),
    );
    let summary = sae_data::preprocess(&options, &mut |p| {
        if let Some(total) = p.total {
            bar.set_length(total);
        }
        bar.set_position(p.read);
    })
    .with_context(|| {
        format!(
            "cannot convert {} ({})",
            args.input.display(),
            args.format.name()
        )
    })?;
    bar.finish_and_clear();
    let skipped: usize = summary.skipped.values().sum();
    tracing::info!(
        rows = summary.rows_written,
        skipped,
        shards = summary.shards.len(),
        seconds = format!("{:.1}", summary.seconds),
        out = %args.output.display(),
        "wrote"
    );
    println!("{}", serde_json::to_string(&summary)?);
    Ok(())
}
