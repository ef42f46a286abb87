//! `sae`: train, evaluate, convert and inspect sparse autoencoders (see `sae --help`).

mod backend;
mod commands;

use std::io::IsTerminal;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[global_allocator]
static GLOBAL: sae_core::allocator::MiMalloc = sae_core::allocator::MiMalloc;

/// Sparse autoencoders for multimodal models: preprocess data, train and evaluate SAEs on
/// frozen models, run models with hook points, encode activations, cache, explain, score and
/// steer latents, and convert or inspect SAE checkpoints (SAE Made Easy PEFT adapters,
/// EleutherAI sparsify, SAELens).
#[derive(Parser)]
#[command(name = "sae", version, propagate_version = true)]
#[command(after_help = "Examples:
  sae activations --model ./qwen2 --text \"Hello\" --hooks 'model\\.layers\\.1' --out acts.safetensors
  sae generate --model ./smollm2 --chat \"Hi\" --max-new-tokens 32
  sae inspect runs/qwen-sae
  sae encode --sae runs/qwen-sae --input acts.safetensors --key hook.model.layers.1 --out latents.safetensors
  sae convert --sae runs/qwen-sae --to sparsify --out runs/qwen-sae-sparsify
  sae preprocess --format text --input shakespeare/ --output data/shakespeare
  sae train --model ./smollm2 --data data/shakespeare --hook model.layers.15 --k 32 --num-latents 4608 --out runs/smollm2
  sae eval --model ./smollm2 --sae runs/smollm2/sae --data data/shakespeare-test
  sae cache --model ./smollm2 --sae runs/smollm2/sae --data data/shakespeare-test --out cache/smollm2
  sae dashboard --cache cache/smollm2 --out dashboards/smollm2
  sae explain --cache cache/smollm2 --base-url http://localhost:8000/v1 --model Qwen/Qwen2.5-72B-Instruct --out explanations/smollm2
  sae generate --model ./smollm2 --sae runs/smollm2/sae --clamp 123=20 --chat \"Hi\" --max-new-tokens 32

Logging: RUST_LOG=debug for more detail.")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    Activations(commands::activations::Args),
    Generate(commands::generate::Args),
    Encode(commands::encode::Args),
    Convert(commands::convert::Args),
    Inspect(commands::inspect::Args),
    Preprocess(commands::preprocess::Args),
    Train(commands::train::Args),
    Eval(commands::eval::Args),
    Cache(commands::cache::Args),
    Dashboard(commands::dashboard::Args),
    Explain(commands::explain::Args),
    Score(commands::score::Args),
}

fn main() -> ExitCode {
    sae_core::allocator::keep_freed_memory();
    sae_core::mapped::report_bus_errors();
    let cli = Cli::parse();
    // In a job of several processes (mpirun, srun), rank 0 reports progress; the others
    // report only warnings and errors, which name their rank.
    let rank = sae_train::collective::launched_ranks()
        .filter(|&(_, ranks)| ranks > 1)
        .map(|(rank, _)| rank);
    let level = if rank.unwrap_or(0) == 0 {
        "info"
    } else {
        "warn"
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level)),
        )
        .with_writer(std::io::stderr)
        // Colours only on a terminal: logs redirected to a file stay plain text.
        .with_ansi(std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none())
        .with_target(false)
        .init();
    let result = match cli.command {
        Command::Activations(args) => commands::activations::run(args),
        Command::Generate(args) => commands::generate::run(args),
        Command::Encode(args) => commands::encode::run(args),
        Command::Convert(args) => commands::convert::run(args),
        Command::Inspect(args) => commands::inspect::run(args),
        Command::Preprocess(args) => commands::preprocess::run(args),
        Command::Train(args) => commands::train::run(args),
        Command::Eval(args) => commands::eval::run(args),
        Command::Cache(args) => commands::cache::run(args),
        Command::Dashboard(args) => commands::dashboard::run(args),
        Command::Explain(args) => commands::explain::run(args),
        Command::Score(args) => commands::score::run(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            let of_rank = rank.map_or(String::new(), |r| format!(" (rank {r})"));
            eprintln!("error{of_rank}: {error}");
            for cause in error.chain().skip(1) {
                eprintln!("  caused by: {cause}");
            }
            ExitCode::FAILURE
        }
    }
}
