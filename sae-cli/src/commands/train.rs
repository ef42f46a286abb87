//! `sae train`: train SAEs on a frozen model, from a TOML config and/or flags, or resume a run.

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use burn::backend::Autodiff;
use sae_train::TrainConfig;
use sae_train::collective;
use sae_train::config::parse_value;

use crate::backend;

/// Train one SAE per hook point on a frozen model. Flags override the config file's keys; the
/// run folder gets config.toml, metrics.jsonl (one JSON object per step), tensorboard/,
/// curves.svg, checkpoints/step-N/ (PEFT adapter + training state) and, at the end, sae/ (the
/// trained SAEs as a PEFT adapter).
#[derive(clap::Args)]
#[command(after_help = "Examples:
  sae train --config examples/train/smollm2_shakespeare.toml
  sae train --model smollm2.gguf --data data/shakespeare --hook model.layers.15 --k 32 \\
      --num-latents 4608 --steps 200 --batch-size 8 --out runs/smollm2
  sae train --config run.toml --set train.lr=1e-3 --set train.schedule=cosine
  sae train --config run.toml --stop-at 1000      # preemptible: train in chunks
  sae train --resume runs/smollm2                 # continue exactly from the last checkpoint
  sae train --config run.toml --devices 8         # data parallel, one process per device
  mpirun -H a:8,b:8 sae train --config run.toml   # several machines (or srun --mpi=pmix)
  sae train --resume runs/smollm2 --devices 2     # resume on another number of devices

Several devices need a build with the mpi feature and OpenMPI installed; --devices N starts the
N processes through mpirun itself.

Every config key can be set with --set SECTION.KEY=VALUE (TOML values); see docs/src/training.md.")]
pub struct Args {
    /// TOML configuration file.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Continue the run in RUN_DIR from its last checkpoint, with its saved configuration.
    #[arg(long, value_name = "RUN_DIR", conflicts_with = "config")]
    resume: Option<PathBuf>,
    /// Model: a local HF folder, a hub id or a .gguf file (model.name).
    #[arg(long, value_name = "M")]
    model: Option<String>,
    /// Dataset folder written by `sae preprocess` (data.path).
    #[arg(long, value_name = "DIR")]
    data: Option<PathBuf>,
    /// Hook point to train an SAE on (a path or suffix; repeat for several) (target_modules).
    #[arg(long = "hook", value_name = "PATH")]
    hooks: Vec<String>,
    /// Active latents per token (sae.k).
    #[arg(long)]
    k: Option<usize>,
    /// Dictionary size (sae.num_latents).
    #[arg(long, value_name = "L")]
    num_latents: Option<usize>,
    /// Optimiser steps, the run's total length (train.steps).
    #[arg(long, value_name = "N")]
    steps: Option<u64>,
    /// Sequences per micro-batch (train.batch_size).
    #[arg(long, value_name = "B")]
    batch_size: Option<usize>,
    /// Micro-batches per optimiser step (train.grad_acc_steps).
    #[arg(long, value_name = "N")]
    grad_acc_steps: Option<usize>,
    /// Peak learning rate (train.lr).
    #[arg(long)]
    lr: Option<f64>,
    /// Seed of the initialisation and the data order (train.seed).
    #[arg(long, value_name = "S")]
    seed: Option<u64>,
    /// Tokens per packed context for text data (data.context).
    #[arg(long, value_name = "TOKENS")]
    context: Option<usize>,
    /// Run folder (out).
    #[arg(long, value_name = "RUN_DIR")]
    out: Option<PathBuf>,
    /// Checkpoint every N steps (checkpoint.save_every).
    #[arg(long, value_name = "N")]
    save_every: Option<u64>,
    /// End the run at this step with a checkpoint (checkpoint.stop_at).
    #[arg(long, value_name = "STEP")]
    stop_at: Option<u64>,
    /// Any config key, as SECTION.KEY=VALUE with a TOML value (repeatable).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    set: Vec<String>,
    /// Devices to train on, data parallel, one process each (parallel.devices); also with
    /// --resume, to continue on another number of devices.
    #[arg(long, value_name = "N")]
    devices: Option<usize>,
    /// Data-parallel strategy: ddp, zero1, zero2 or zero3 (parallel.strategy).
    #[arg(long, value_name = "MODE")]
    parallel: Option<String>,
}

pub fn run(args: Args) -> Result<()> {
    // The run's configuration: a new one, or the saved one of the run to resume.
    let config = match &args.resume {
        Some(run_dir) => {
            let flags = flag_overrides(&args)?;
            let allowed = ["checkpoint.stop_at", "parallel.devices"];
            if flags.iter().any(|(k, _)| !allowed.contains(&k.as_str())) {
                bail!(
                    "--resume continues a run with its saved configuration: only --stop-at and --devices may be given with it"
                );
            }
            let saved = run_dir.join(sae_train::run::CONFIG_FILE);
            if saved.is_file() {
                Some(TrainConfig::load(&saved, &[])?)
            } else {
                None
            }
        }
        None => Some(load_config(&args)?),
    };
    let devices = args
        .devices
        .or(config.as_ref().map(|c| c.parallel.devices))
        .unwrap_or(1);
    let timeout_s = config.as_ref().map_or(300.0, |c| c.parallel.timeout_s);
    let launched = collective::launched_ranks();
    if launched.is_none() && devices > 1 {
        return start_ranks(devices);
    }
    if let (Some((_, ranks)), Some(asked)) = (launched, args.devices)
        && asked != ranks
    {
        bail!("--devices {asked}, but the launcher started {ranks} processes");
    }
    let collective = collective::from_environment(timeout_s)?;
    let device = backend::device_of_rank(collective::local_rank())?;
    sae_train::interrupt::install().context("cannot listen for SIGTERM and SIGINT")?;
    let writer = collective.rank() == 0;
    let summary = match (&args.resume, config) {
        (Some(run_dir), _) => sae_train::resume::<Autodiff<backend::Backend>>(
            run_dir,
            args.stop_at,
            &device,
            collective,
        )
        .with_context(|| format!("cannot resume the run in {}", run_dir.display()))?,
        (None, config) => {
            let mut config = config.expect("a new run has a configuration");
            config.parallel.devices = collective.ranks();
            if writer {
                tracing::info!(
                    "training on {} ({} devices) into {}",
                    backend::NAME,
                    collective.ranks(),
                    config.out.display()
                );
            }
            sae_train::train::<Autodiff<backend::Backend>>(config, &device, collective)
                .context("training failed")?
        }
    };
    // Rank 0 reports for the job, stopped or not. The other ranks end quietly with status 0:
    // a rank ending otherwise makes mpirun stop the job, rank 0 with it, before it has said
    // where the run stopped.
    if !writer {
        return Ok(());
    }
    let sae_dir = summary.run_dir.join(sae_train::run::SAE_DIR);
    let report = serde_json::json!({
        "run_dir": summary.run_dir,
        "step": summary.step,
        "finished": summary.finished,
        "checkpoint": summary.checkpoint,
        "sae": summary.finished.then_some(sae_dir),
        "last": summary.last,
        "interrupted": summary.interrupted.map(|s| s.to_string()),
        "peak_mib": summary.peak_mib,
    });
    println!("{}", serde_json::to_string_pretty(&report)?);
    if let Some(signal) = summary.interrupted {
        eprintln!(
            "stopped by {signal} after step {}, with a checkpoint; continue with: sae train --resume {}",
            summary.step,
            summary.run_dir.display()
        );
        std::process::exit(signal.exit_code());
    }
    Ok(())
}

/// Runs this same command as `devices` processes under `mpirun`, and exits as it does.
fn start_ranks(devices: usize) -> Result<()> {
    if !collective::launch::HAS_MPI {
        bail!("{}", collective::without_mpi());
    }
    let program = std::env::current_exe().context("cannot find the sae executable")?;
    let command = collective::launch::mpirun(
        devices,
        program.into_os_string(),
        std::env::args_os().skip(1),
    );
    tracing::info!("starting {devices} processes: {command:?}");
    let ended = collective::launch::run(command).map_err(|error| {
        anyhow::anyhow!(
            "--devices {devices} starts its processes with mpirun, which could not be run ({error}): install OpenMPI (Debian: apt-get install openmpi-bin)"
        )
    })?;
    match ended {
        collective::launch::Ended::Exited(status) if status.success() => Ok(()),
        collective::launch::Ended::Exited(status) => {
            bail!("the {devices} training processes failed ({status}); their messages are above")
        }
        // Rank 0 said where the run stopped and how to resume it.
        collective::launch::Ended::Stopped(signal) => std::process::exit(signal.exit_code()),
    }
}

/// The configuration from the file (if any) with the flags applied on top.
fn load_config(args: &Args) -> Result<TrainConfig> {
    let overrides = flag_overrides(args)?;
    Ok(match &args.config {
        Some(path) => TrainConfig::load(path, &overrides)?,
        None => TrainConfig::parse("", "the command-line flags", &overrides)?,
    })
}

/// Each given flag as a dotted config key and TOML value, then the --set pairs.
fn flag_overrides(args: &Args) -> Result<Vec<(String, toml::Value)>> {
    use toml::Value;
    let mut out: Vec<(String, Value)> = Vec::new();
    let mut set = |key: &str, value: Option<Value>| {
        if let Some(v) = value {
            out.push((key.to_string(), v));
        }
    };
    // TOML integers are 64-bit signed: a larger count is refused, not wrapped to a negative.
    let int = |key: &str, v: Option<u64>| -> Result<Option<Value>> {
        v.map(|v| {
            i64::try_from(v)
                .map(Value::Integer)
                .map_err(|_| anyhow::anyhow!("{key} = {v} is too large (at most {})", i64::MAX))
        })
        .transpose()
    };
    let path = |p: &Option<PathBuf>| p.as_ref().map(|p| Value::String(p.display().to_string()));
    set("model.name", args.model.clone().map(Value::String));
    set("data.path", path(&args.data));
    set(
        "target_modules",
        (!args.hooks.is_empty())
            .then(|| Value::Array(args.hooks.iter().cloned().map(Value::String).collect())),
    );
    set("sae.k", int("sae.k", args.k.map(|v| v as u64))?);
    set(
        "sae.num_latents",
        int("sae.num_latents", args.num_latents.map(|v| v as u64))?,
    );
    set("train.steps", int("train.steps", args.steps)?);
    set(
        "train.batch_size",
        int("train.batch_size", args.batch_size.map(|v| v as u64))?,
    );
    set(
        "train.grad_acc_steps",
        int(
            "train.grad_acc_steps",
            args.grad_acc_steps.map(|v| v as u64),
        )?,
    );
    set("train.lr", args.lr.map(Value::Float));
    set("train.seed", int("train.seed", args.seed)?);
    set(
        "data.context",
        int("data.context", args.context.map(|v| v as u64))?,
    );
    set("out", path(&args.out));
    set(
        "checkpoint.save_every",
        int("checkpoint.save_every", args.save_every)?,
    );
    set(
        "checkpoint.stop_at",
        int("checkpoint.stop_at", args.stop_at)?,
    );
    set(
        "parallel.devices",
        int("parallel.devices", args.devices.map(|v| v as u64))?,
    );
    set(
        "parallel.strategy",
        args.parallel.clone().map(Value::String),
    );
    for pair in &args.set {
        let (key, value) = pair
            .split_once('=')
            .with_context(|| format!("--set {pair:?} is not KEY=VALUE"))?;
        out.push((key.trim().to_string(), parse_value(value.trim())));
    }
    Ok(out)
}
