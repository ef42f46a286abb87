//! `cargo xtask bench scaling`: data-parallel training on this machine's cores, 1 rank against
//! 2 (DDP, ZeRO-1, ZeRO-2) for one global batch: tokens per second, the seconds per step spent
//! in collectives (communication and waiting), and each rank's peak memory. SmolLM2-135M to
//! layer 15 on Shakespeare, the `smollm2_shakespeare` recipe's SAE, a global batch of 8 x 128
//! tokens; then the peak memory of each strategy with an SAE 8 times as wide, where the
//! optimiser state is most of it. It builds and runs the `sae` binary with the `mpi` feature
//! (OpenMPI installed).

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, ensure};
use sae_train::TrainConfig;
use sae_train::config::parse_value;

use sae_core::StorageDtype;

use crate::bench::smollm2_gguf;
use crate::train::{prepare_shakespeare, recipe_path};
use crate::{bench_scale, scale_checkpoint};

const STEPS: usize = 12;
/// Steps left out of the means (the first batch sets b_dec; caches warm up).
const SKIP: usize = 2;
const GLOBAL_BATCH: usize = 8;

pub fn scaling() -> Result<()> {
    let sae = build_sae()?;
    let dir = tempfile::tempdir()?;
    let data = dir.path().join("shakespeare");
    prepare_shakespeare(&data, None)?;
    let mut config = TrainConfig::load(
        &recipe_path("smollm2_shakespeare"),
        &[
            ("train.steps".into(), parse_value(&STEPS.to_string())),
            ("checkpoint.save_every".into(), parse_value("0")),
            ("log.tensorboard".into(), parse_value("false")),
            ("log.progress".into(), parse_value("false")),
        ],
    )?;
    config.data.path = data;
    config.model.name = smollm2_gguf()?;
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    eprintln!(
        "{}; {cores} cores. SmolLM2-135M (GGUF as f32) to layer 15, TopK SAE {} latents, global batch {GLOBAL_BATCH} x {}, {STEPS} steps (means of the last {}); flex, one rank per process (mpirun, cores shared: {} threads per rank at 2 ranks)",
        crate::cpu::describe(),
        config.sae.num_latents,
        config.data.context,
        STEPS - SKIP,
        (cores / 2).max(1),
    );
    let mut single = None;
    for (strategy, ranks) in [("ddp", 1), ("ddp", 2), ("zero1", 2), ("zero2", 2)] {
        let case = measure(&sae, &config, (strategy, ranks), dir.path())?;
        let speed = match single {
            None => {
                single = Some(case.tokens_per_s);
                String::new()
            }
            Some(one) => format!(" ({:.2}x one rank)", case.tokens_per_s / one),
        };
        let peaks: Vec<String> = case.peak_mib.iter().map(|m| format!("{m:.0}")).collect();
        println!(
            "scaling-{strategy}-{ranks} tokens_per_s={:.1}{speed} collective_s_per_step={:.3} step_s={:.3} peak_mib_per_rank=[{}]",
            case.tokens_per_s,
            case.collective_s,
            case.step_s,
            peaks.join(", ")
        );
    }
    config.sae.num_latents *= 8;
    config.train.steps = 3;
    let p = 4 * (2 * config.sae.num_latents * 576 + config.sae.num_latents + 576);
    eprintln!(
        "memory: the same with {} latents (P = {:.0} MiB of SAE parameters), 3 steps",
        config.sae.num_latents,
        p as f64 / f64::from(1 << 20)
    );
    for (strategy, ranks) in [("ddp", 1), ("ddp", 2), ("zero1", 2), ("zero2", 2)] {
        let case = measure(&sae, &config, (strategy, ranks), dir.path())?;
        let peaks: Vec<String> = case.peak_mib.iter().map(|m| format!("{m:.0}")).collect();
        println!(
            "scaling-memory-{strategy}-{ranks} peak_mib_per_rank=[{}]",
            peaks.join(", ")
        );
    }
    Ok(())
}

/// Text layers of the 7B-shaped checkpoint ZeRO-3's memory is measured on, and the layer hooked.
const ZERO3_LAYERS: usize = 6;
const ZERO3_AT: usize = 4;

/// `cargo xtask bench scaling zero3`: each rank's peak memory when ZeRO-3 shares the frozen
/// model between 2 ranks, against one process and DDP on 2, for one training job on the
/// 6-layer Qwen2.5-VL-7B-shaped checkpoint (`bench scale`'s, written once): layer 4's residual,
/// the 72B recipe's SAE (TopK, k 32, 4,096 latents), a global batch of 8 x 64 tokens, 3 steps,
/// the model computing in bf16 (a view of the mapped file) and in f32 (converted at load).
pub fn zero3_memory() -> Result<()> {
    let sae = build_sae()?;
    let dir = tempfile::tempdir()?;
    let data = dir.path().join("shakespeare");
    prepare_shakespeare(&data, None)?;
    let model = bench_scale::checkpoint_dir(ZERO3_LAYERS);
    scale_checkpoint::write(&model, ZERO3_LAYERS)?;
    eprintln!(
        "{}. {} ({ZERO3_LAYERS} text layers, bf16 stored), a TopK SAE on layer {ZERO3_AT}, 3 steps of 8 x 64 tokens; peak RSS (VmHWM) per rank",
        crate::cpu::describe(),
        model.display()
    );
    for dtype in [StorageDtype::BF16, StorageDtype::F32] {
        let name = format!("{dtype:?}").to_lowercase();
        let file = dir.path().join(format!("{name}.toml"));
        std::fs::write(
            &file,
            format!(
                "out = \"unused\"\n\
                 target_modules = [\"model.language_model.layers.{ZERO3_AT}\"]\n\
                 [model]\nname = {:?}\ndtype = \"{name}\"\n\
                 [data]\npath = {:?}\ncontext = 64\n\
                 [sae]\nk = 32\nnum_latents = 4096\n\
                 [train]\nsteps = 3\n\
                 [checkpoint]\nsave_every = 0\n\
                 [log]\ntensorboard = false\nprogress = false\n",
                model.display().to_string(),
                data.display().to_string(),
            ),
        )?;
        let config = TrainConfig::load(&file, &[])?;
        let runs = dir.path().join(&name);
        std::fs::create_dir_all(&runs)?;
        let (_, needed) = bench_scale::needed_bytes(&model, ZERO3_AT, dtype)?;
        let one = measure(&sae, &config, ("ddp", 1), &runs)?.peak_mib;
        let ddp = measure(&sae, &config, ("ddp", 2), &runs)?.peak_mib;
        let zero3 = measure(&sae, &config, ("zero3", 2), &runs)?.peak_mib;
        let (one, most) = (
            one.first().copied().unwrap_or(f64::NAN),
            zero3.iter().copied().fold(f64::NAN, f64::max),
        );
        let list = |peaks: &[f64]| {
            let peaks: Vec<String> = peaks.iter().map(|m| format!("{m:.0}")).collect();
            peaks.join(", ")
        };
        println!(
            "scaling-zero3-{name} one_process_mib={one:.0} ddp_2_mib=[{}] zero3_2_mib=[{}] zero3_over_one={:.2} model_bytes_needed_mib={:.0}",
            list(&ddp),
            list(&zero3),
            most / one,
            needed as f64 / f64::from(1 << 20),
        );
    }
    Ok(())
}

/// What one run measured.
struct Case {
    tokens_per_s: f64,
    step_s: f64,
    collective_s: f64,
    peak_mib: Vec<f64>,
}

/// Trains the run of `config` by `strategy` on `ranks` processes, for the same global batch,
/// in a new folder of `dir`.
fn measure(
    sae: &Path,
    config: &TrainConfig,
    (strategy, ranks): (&str, usize),
    dir: &Path,
) -> Result<Case> {
    let mut run = config.clone();
    let name = format!("{strategy}-{ranks}-{}", config.sae.num_latents);
    run.out = dir.join(&name);
    run.train.batch_size = GLOBAL_BATCH / ranks;
    run.parallel.strategy = parse_strategy(strategy)?;
    let file = dir.join(format!("{name}.toml"));
    std::fs::write(&file, run.to_toml())?;
    let output = Command::new(sae)
        .args(["train", "--config"])
        .arg(&file)
        .args(["--devices", &ranks.to_string()])
        .env("RUST_LOG", "warn")
        .output()
        .with_context(|| format!("cannot run {}", sae.display()))?;
    ensure!(
        output.status.success(),
        "sae train on {ranks} ranks failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let summary: serde_json::Value = serde_json::from_slice(&output.stdout)?;
    let peak_mib = (summary["peak_mib"].as_array())
        .map(|a| a.iter().filter_map(|v| v.as_f64()).collect())
        .unwrap_or_default();
    let metrics = run.out.join(sae_train::log::metrics::METRICS_FILE);
    let lines: Vec<serde_json::Value> = std::fs::read_to_string(&metrics)?
        .lines()
        .map(serde_json::from_str)
        .collect::<Result<_, _>>()?;
    let timed = &lines[SKIP.min(lines.len())..];
    let mean = |f: &dyn Fn(&serde_json::Value) -> f64| {
        timed.iter().map(f).sum::<f64>() / timed.len().max(1) as f64
    };
    Ok(Case {
        tokens_per_s: mean(&|l| l["tokens_per_s"].as_f64().unwrap_or(f64::NAN)),
        step_s: mean(&|l| {
            l["tokens"].as_f64().unwrap_or(f64::NAN) / l["tokens_per_s"].as_f64().unwrap_or(1.0)
        }),
        collective_s: mean(&|l| l["collective_s"].as_f64().unwrap_or(0.0)),
        peak_mib,
    })
}

fn parse_strategy(name: &str) -> Result<sae_train::Strategy> {
    Ok(serde_json::from_value(serde_json::Value::String(
        name.into(),
    ))?)
}

/// Builds the `sae` binary with the `mpi` feature beside this xtask (same profile and target
/// folder) and returns its path.
fn build_sae() -> Result<PathBuf> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let here = std::env::current_exe()?;
    let profile_dir = here.parent().context("the xtask binary has a folder")?;
    let release = profile_dir.file_name().is_some_and(|n| n == "release");
    let mut build = Command::new(cargo);
    build.args(["build", "-p", "sae-cli", "--features", "mpi"]);
    if release {
        build.arg("--release");
    }
    let status = build.status().context("cannot run cargo")?;
    ensure!(
        status.success(),
        "cannot build sae with the mpi feature (it needs OpenMPI: apt-get install openmpi-bin libopenmpi-dev libclang-dev)"
    );
    Ok(profile_dir.join("sae"))
}
