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

use std::path::Path;

use anyhow::{Result, bail};

#[global_allocator]
static GLOBAL: sae_core::allocator::MiMalloc = sae_core::allocator::MiMalloc;

const USAGE: &str = "usage: cargo xtask demo
       cargo xtask train <recipe> [--set KEY=VALUE]... [--stop-at STEP]   (recipes: examples/train/)
       cargo xtask bench [sae-step | sae-encode | sae-kernels] [--backend flex|ndarray|wgpu|cuda]
       cargo xtask bench [lm-forward | data | train | micro | matmul-dtype]
       cargo xtask bench scale [--layers N] [--at L] [--dtype bf16|f32] [--tokens T]
         (a Qwen2.5-VL-7B-shaped bf16 checkpoint, written once; 28 layers is the real depth)
       cargo xtask scale-checkpoint --layers N --out DIR   (the benchmark's checkpoint alone)
       cargo xtask bench scaling   (data-parallel training, 1 and 2 ranks; builds sae with mpi)
       cargo xtask bench scaling zero3   (ZeRO-3's memory per rank on the 6-layer 7B-shaped checkpoint)
  (wgpu and cuda need an xtask built with that feature: cargo run -p xtask --features cuda -- bench ...)";

fn main() -> Result<()> {
    sae_core::allocator::keep_freed_memory();
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>()
        .as_slice()
    {
        ["bench"] => bench::sae_step("flex")
            .and_then(|()| bench::micro())
            .and_then(|()| bench::sae_encode("flex"))
            .and_then(|()| bench::lm_forward())
            .and_then(|()| bench_data::data())
            .and_then(|()| train::bench()),
        ["bench", "sae-encode"] => bench::sae_encode("flex"),
        ["bench", "sae-encode", "--backend", backend] => bench::sae_encode(backend),
        ["bench", "micro"] => bench::micro(),
        ["bench", "matmul-dtype"] => bench_dtype::matmul_dtype(),
        ["bench", "scaling"] => bench_scaling::scaling(),
        ["bench", "scaling", "zero3"] => bench_scaling::zero3_memory(),
        ["bench", "scale", rest @ ..] => bench_scale::scale(&bench_scale::Settings::parse(
            &rest.iter().map(|s| s.to_string()).collect::<Vec<_>>(),
        )?),
        ["bench", "sae-step"] => bench::sae_step("flex"),
        ["bench", "lm-forward"] => bench::lm_forward(),
        ["bench", "data"] => bench_data::data(),
        ["bench", "train"] => train::bench(),
        ["bench", "sae-step", "--backend", backend] => bench::sae_step(backend),
        ["bench", "sae-kernels"] => bench_kernels::sae_kernels("flex"),
        ["bench", "sae-kernels", "--backend", backend] => bench_kernels::sae_kernels(backend),
        ["scale-checkpoint", "--layers", layers, "--out", out] => {
            scale_checkpoint::write(Path::new(out), layers.parse()?)
        }
        ["demo"] => train::demo(),
        ["train", ..] => train::train(&args[1..]),
        ["help"] | ["--help"] | ["-h"] | [] | [_, "--help" | "-h"] => {
            println!("{USAGE}");
            Ok(())
        }
        other => bail!("unknown task {other:?}; {USAGE}"),
    }
}
