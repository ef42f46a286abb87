//! The SAE training-step benchmark, ours and (optionally) sparsify's in the same run.

use std::process::Command;
use std::time::Instant;

use anyhow::{Context, Result};
use burn::backend::{Autodiff, Flex, NdArray};
use burn::optim::{AdamConfig, GradientsParams, Optimizer};
use burn::tensor::backend::AutodiffBackend;
use burn::tensor::{Distribution, Tensor};
use sae_core::{Sae, SaeConfig};

const D: usize = 576;
const LATENTS: usize = 9216;
const K: usize = 32;
const TOKENS: usize = 2048;
const WARMUP: usize = 2;
const STEPS: usize = 10;

/// Times `STEPS` steps after `WARMUP` on `backend` (`flex` or `ndarray`) and prints the
/// contract line.
pub fn sae_step(backend: &str) -> Result<()> {
    let ours = match backend {
        "flex" => step_tokens_per_second::<Autodiff<Flex>>()?,
        "ndarray" => step_tokens_per_second::<Autodiff<NdArray>>()?,
        other => anyhow::bail!("unknown backend {other:?}: expected flex or ndarray"),
    };
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    eprintln!(
        "backend {backend} (f32, {threads} threads), allocator mimalloc, d={D} latents={LATENTS} k={K} tokens={TOKENS}"
    );
    match reference()? {
        Some(r) => println!("sae-step ours={ours:.0} ref={r:.0} ratio={:.2}", ours / r),
        None => println!("sae-step ours={ours:.0}"),
    }
    Ok(())
}

/// Tokens per second of the SAE training step on backend `B`.
fn step_tokens_per_second<B: AutodiffBackend>() -> Result<f64> {
    let device = Default::default();
    B::seed(&device, 0);
    let mut sae = Sae::<B>::new(D, SaeConfig::sparsify_topk(K, LATENTS), &device)?;
    let mut optim = AdamConfig::new().with_epsilon(1e-8).init::<B, Sae<B>>();
    let x = Tensor::<B, 2>::random([TOKENS, D], Distribution::Normal(0.0, 1.0), &device);
    let mut elapsed = 0.0;
    for step in 0..WARMUP + STEPS {
        let start = Instant::now();
        let loss = sae.forward(x.clone(), None)?.fvu;
        let grads = GradientsParams::from_grads(loss.backward(), &sae);
        sae = optim.step(1e-4, sae, grads);
        // Make sure the step's work is done before the clock stops.
        let _ = sae.w_dec.val().slice([0..1, 0..1]).into_data();
        if step >= WARMUP {
            elapsed += start.elapsed().as_secs_f64();
        }
    }
    Ok((TOKENS * STEPS) as f64 / elapsed)
}

/// sparsify's tokens/s for the same step, when `SAE_BENCH_PYTHON` is set.
fn reference() -> Result<Option<f64>> {
    let Ok(python) = std::env::var("SAE_BENCH_PYTHON") else {
        eprintln!("SAE_BENCH_PYTHON is not set: skipping the sparsify reference");
        return Ok(None);
    };
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../tools/bench_sparsify_step.py"
    );
    let out = Command::new(&python)
        .args([
            script,
            &D.to_string(),
            &LATENTS.to_string(),
            &K.to_string(),
            &TOKENS.to_string(),
        ])
        .args([WARMUP.to_string(), STEPS.to_string()])
        .env("SPARSIFY_DISABLE_TRITON", "1")
        .output()
        .with_context(|| format!("cannot run {python}"))?;
    anyhow::ensure!(
        out.status.success(),
        "the sparsify reference failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    let value = text
        .lines()
        .last()
        .unwrap_or_default()
        .trim()
        .parse()
        .with_context(|| format!("unexpected reference output {text:?}"))?;
    Ok(Some(value))
}
