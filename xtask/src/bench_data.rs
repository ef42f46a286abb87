//! `cargo xtask bench data`: preprocessing (rows/s, MB/s) and the loader (tokens/s) on the real
//! datasets, next to SmolLM2-135M's forward tokens/s in the same run, so the ratio says whether
//! the loader could ever hold training back.

use std::path::Path;
use std::time::Instant;

use anyhow::Result;
use sae_data::{Batching, Dataset, Format, Loader, PreprocessOptions, StreamConfig};
use sae_models::ImageTokens;

use crate::bench::{fetch, forward_tokens_per_s, shakespeare_texts, smollm2_gguf};

/// Converts `input`, prints rows/s and MB/s, returns the dataset folder.
fn preprocess(format: Format, input: &Path, out: &Path) -> Result<()> {
    let options = PreprocessOptions::new(format, input, out);
    let summary = sae_data::preprocess(&options, &mut |_| {})?;
    println!(
        "preprocess-{} rows={} rows_per_s={:.0} mb_per_s={:.1}",
        format.name(),
        summary.rows_written,
        summary.rows_written as f64 / summary.seconds,
        summary.bytes as f64 / 1e6 / summary.seconds
    );
    Ok(())
}

/// Tokens/s of a full pass of the loader over `dir` (through `images`' processor when given).
fn load(
    name: &str,
    dir: &Path,
    tokenizer: &sae_models::Tokenizer,
    batching: Batching,
    images: Option<&dyn ImageTokens>,
    forward: f64,
) -> Result<()> {
    let dataset = Dataset::open(dir)?;
    crate::peak::reset();
    let start = Instant::now();
    let (mut tokens, mut batches) = (0, 0);
    let mut loader = Loader::new(
        &dataset,
        tokenizer,
        StreamConfig::default(),
        batching,
        8,
        None,
    )?;
    if let Some(images) = images {
        loader = loader.with_image_tokens(images);
    }
    for batch in loader {
        tokens += batch?.tokens();
        batches += 1;
    }
    let rate = tokens as f64 / start.elapsed().as_secs_f64();
    println!(
        "loader-{name} batches={batches} tokens_per_s={rate:.0} forward_tokens_per_s={forward:.0} loader_over_forward={:.1}",
        rate / forward
    );
    crate::peak::report(&format!("loader-{name}"), None);
    Ok(())
}

/// Runs the data benchmarks.
pub fn data() -> Result<()> {
    let assets = std::path::PathBuf::from(fetch("fetch_data.sh")?);
    let work = tempfile::tempdir()?;
    let (vqa, plays) = (work.path().join("vqa"), work.path().join("plays"));
    preprocess(Format::EasyVqa, &assets.join("easy_vqa/data"), &vqa)?;
    let texts = shakespeare_texts(&assets);
    preprocess(Format::Text, &texts, &plays)?;

    let lm = sae_models::LanguageModel::<burn::backend::Flex>::load(
        &smollm2_gguf()?,
        &Default::default(),
    )?;
    let forward = forward_tokens_per_s(&lm);
    load(
        "pack-shakespeare",
        &plays,
        &lm.tokenizer,
        Batching::Pack { context: 256 },
        None,
        forward,
    )?;
    let pad = Batching::Pad {
        max_len: 256,
        truncate: false,
    };
    // SmolLM2's template takes no images: the chat rows go through the Qwen2-VL style template
    // of the tiny Qwen2 test fixture.
    let fixture =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../sae-models/tests/fixtures/qwen2_tiny");
    let qwen = sae_models::Tokenizer::load(&fixture)?;
    load("chat-easy-vqa", &vqa, &qwen, pad, None, forward)?;
    // The same rows through Qwen2-VL's processor: images decoded, resized, normalised and cut
    // into patches, placeholders expanded (the tiny fixture's processor is the real one).
    let vl_fixture =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../sae-models/tests/fixtures/qwen2_vl_tiny");
    let vlm = sae_models::VisionLanguageModel::<burn::backend::Flex>::load_as(
        &vl_fixture.to_string_lossy(),
        burn::tensor::DType::F32,
        &Default::default(),
    )?;
    load(
        "vlm-easy-vqa",
        &vqa,
        &vlm.tokenizer,
        pad,
        Some(&vlm),
        forward,
    )?;
    Ok(())
}
