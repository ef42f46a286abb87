//! Project tasks: `cargo xtask demo` (train and evaluate an SAE on SmolLM2-135M + Shakespeare
//! on the CPU), `cargo xtask train <recipe>` (a recipe of `examples/train/`) and
//! `cargo xtask bench [CASE]`.
//!
//! `cargo xtask bench sae-step` times one TopK SAE training step (forward, backward, Adam) at
//! d = 576, 9216 latents, k = 32, 2048 tokens, f32, on flex (or `--backend ndarray`, or
//! `wgpu`/`cuda` in an xtask built with that feature), and prints
//! `sae-step ours=<tokens/s> [ref=<tokens/s> ratio=<r>]`. When `SAE_BENCH_PYTHON` names a Python
//! with torch and eai-sparsify, the same step of sparsify runs in the same invocation as the
//! reference (`tools/bench_sparsify.py step`).
//!
//! `cargo xtask bench sae-encode` times SAE inference (encode + decode) at the same shapes against
//! sparsify's (`tools/bench_sparsify.py encode`), with the same `--backend`; with `cuda`, sparsify
//! runs on the GPU too.
//!
//! `cargo xtask bench sae-kernels` times each sparse kernel of `sae_core::kernels` against its
//! reference implementation on the same backend (`--backend wgpu|cuda`: the CubeCL kernels).
//!
//! `cargo xtask bench lm-forward` times SmolLM2-135M-Instruct's forward pass (batch 8 x 256) and,
//! with `SAE_BENCH_PYTHON`, transformers' on the same GGUF (`tools/bench_lm_forward.py`).
//! `cargo xtask bench data` times `sae preprocess` (easy-VQA, Shakespeare) and the loader
//! (packed Shakespeare, padded easy-VQA chats, SmolLM2's tokenizer) against SmolLM2's forward
//! tokens/s in the same run.
//! `cargo xtask bench train` times end-to-end training of the SmolLM2 + Shakespeare recipe
//! (tokens/s of model forward plus SAE step) and, with `SAE_BENCH_PYTHON`, sparsify's `Trainer`
//! on the same batches (`tools/bench_train.py`).
//! `cargo xtask bench` runs every case.

mod bench;
mod bench_data;
mod bench_dtype;
mod bench_kernels;
mod bench_scale;
mod bench_scaling;
mod cpu;
mod peak;
mod scale_checkpoint;
mod train;

use std::io::IsTerminal;
use std::path::PathBuf;

use anyhow::Result;
use clap::{Parser, Subcommand, ValueEnum};

#[global_allocator]
static GLOBAL: sae_core::allocator::MiMalloc = sae_core::allocator::MiMalloc;

/// Project tasks: the demo, training recipes, benchmarks.
#[derive(Parser)]
#[command(
    name = "cargo xtask",
    bin_name = "cargo xtask",
    after_help = "Examples:
  cargo xtask demo
  cargo xtask train smollm2_shakespeare --set train.steps=50
  cargo xtask bench sae-step --backend ndarray
  cargo xtask bench scale --layers 28 --at 24
  cargo run -p xtask --features cuda -- bench sae-encode --backend cuda

wgpu and cuda need an xtask built with that feature. SAE_BENCH_PYTHON names a Python with the
references (torch, transformers, eai-sparsify) to run them in the same invocation."
)]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Train and evaluate an SAE on SmolLM2-135M and Shakespeare, on the CPU, in a few minutes.
    Demo,
    /// Train a recipe of examples/train/ (fetching SmolLM2 and Shakespeare when it needs them).
    Train(train::Args),
    /// Benchmarks; every CPU case when none is named.
    Bench {
        #[command(subcommand)]
        case: Option<Case>,
    },
    /// Write the scale benchmark's Qwen2.5-VL-7B-shaped checkpoint alone.
    ScaleCheckpoint {
        /// Text layers (28 in the real model).
        #[arg(long)]
        layers: usize,
        /// Folder to write.
        #[arg(long)]
        out: PathBuf,
    },
}

#[derive(Subcommand)]
enum Case {
    /// One TopK SAE training step (d 576, 9216 latents, k 32, 2048 tokens) vs sparsify's.
    SaeStep(Backend),
    /// SAE inference (encode + decode) at the same shapes vs sparsify's.
    SaeEncode(Backend),
    /// Each sparse kernel against its reference on the same backend.
    SaeKernels(Backend),
    /// SmolLM2-135M's forward pass (8 x 256) vs transformers' on the same GGUF.
    LmForward,
    /// `sae preprocess` and the loader against SmolLM2's forward tokens/s.
    Data,
    /// End-to-end training of the SmolLM2 + Shakespeare recipe vs sparsify's Trainer.
    Train,
    /// Small tensor operations of the SAE step.
    Micro,
    /// Matmuls in f32, f16 and bf16.
    MatmulDtype,
    /// Loading and running a Qwen2.5-VL-7B-shaped bf16 checkpoint (written once).
    Scale(bench_scale::Settings),
    /// Data-parallel training at 1 and 2 ranks (builds sae with the mpi feature).
    Scaling {
        /// `zero3`: ZeRO-3's memory per rank on the 6-layer 7B-shaped checkpoint instead.
        part: Option<ScalingPart>,
    },
}

/// The part of `bench scaling` to run.
#[derive(Clone, Copy, ValueEnum)]
enum ScalingPart {
    /// Peak memory per rank: one process, DDP and ZeRO-3 on 2 ranks.
    Zero3,
}

/// The backend a benchmark runs on.
#[derive(clap::Args)]
struct Backend {
    /// flex or ndarray; wgpu or cuda in an xtask built with that feature.
    #[arg(long, default_value = "flex")]
    backend: String,
}

fn main() -> Result<()> {
    sae_core::allocator::keep_freed_memory();
    let cli = Cli::parse();
    // What the libraries log (warnings, checkpoints) on stderr, as `sae` shows it.
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none())
        .with_target(false)
        .init();
    match cli.task {
        Task::Demo => train::demo(),
        Task::Train(args) => train::train(&args),
        Task::ScaleCheckpoint { layers, out } => scale_checkpoint::write(&out, layers),
        Task::Bench { case: None } => bench::sae_step("flex")
            .and_then(|()| bench::micro())
            .and_then(|()| bench::sae_encode("flex"))
            .and_then(|()| bench::lm_forward())
            .and_then(|()| bench_data::data())
            .and_then(|()| train::bench()),
        Task::Bench { case: Some(case) } => match case {
            Case::SaeStep(b) => bench::sae_step(&b.backend),
            Case::SaeEncode(b) => bench::sae_encode(&b.backend),
            Case::SaeKernels(b) => bench_kernels::sae_kernels(&b.backend),
            Case::LmForward => bench::lm_forward(),
            Case::Data => bench_data::data(),
            Case::Train => train::bench(),
            Case::Micro => bench::micro(),
            Case::MatmulDtype => bench_dtype::matmul_dtype(),
            Case::Scale(settings) => bench_scale::scale(&settings.checked()?),
            Case::Scaling { part: None } => bench_scaling::scaling(),
            Case::Scaling {
                part: Some(ScalingPart::Zero3),
            } => bench_scaling::zero3_memory(),
        },
    }
}
