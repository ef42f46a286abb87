//! `cargo xtask bench scale`: a Qwen2.5-VL-7B-shaped checkpoint (random bf16, written once by
//! [`scale_checkpoint`](crate::scale_checkpoint)) loaded up to one text layer and run over one
//! prompt to it, as `sae activations --no-logits` and training do. Prints the load time, the
//! page cache's read speed over the same bytes, the forward pass's tokens/s and the peak
//! resident memory against the bytes of the tensors the job needs; and transformers' load,
//! forward and peak on the same checkpoint and job when `SAE_BENCH_PYTHON` names a Python
//! with torch and transformers.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use burn::tensor::DType;
use burn::tensor::backend::Backend;
use sae_core::{HookedModule, Recorder, StorageDtype, TensorFile};
use sae_models::{AnyModel, LoadScope, VisionInput};

use crate::bench::{Plain, on_backend};
use crate::{peak, scale_checkpoint};

/// The benchmark's settings.
#[derive(clap::Args)]
pub struct Settings {
    /// Text layers of the checkpoint (28 in the real model).
    #[arg(long, default_value_t = 6)]
    layers: usize,
    /// The layer hooked [default: layers - 2, at most 24].
    #[arg(long)]
    at: Option<usize>,
    /// Compute dtype: bf16 or f32.
    #[arg(long, default_value = "bf16")]
    dtype: StorageDtype,
    /// Tokens of the prompt.
    #[arg(long, default_value_t = 128)]
    tokens: usize,
    /// flex or ndarray; wgpu or cuda in an xtask built with that feature.
    #[arg(long, default_value = "flex")]
    backend: String,
}

impl Settings {
    /// The layer hooked.
    fn at(&self) -> usize {
        self.at.unwrap_or(self.layers.saturating_sub(2).min(24))
    }

    /// The settings, checked: `--at` below `--layers`.
    pub fn checked(self) -> Result<Self> {
        anyhow::ensure!(self.at() < self.layers, "--at must be below --layers");
        Ok(self)
    }
}

/// Where the checkpoint of `layers` layers is kept (`SAE_SCALE_DIR`, or the asset cache).
pub(crate) fn checkpoint_dir(layers: usize) -> PathBuf {
    let root = std::env::var_os("SAE_SCALE_DIR").map_or_else(
        || {
            let home = std::env::var_os("HOME").unwrap_or_default();
            PathBuf::from(home).join(".cache/sae-assets/scale")
        },
        PathBuf::from,
    );
    root.join(format!("qwen2_5_vl_7b_shaped_{layers}_layers"))
}

/// Runs the benchmark on the backend `--backend` names.
pub fn scale(settings: &Settings) -> Result<()> {
    on_backend!(settings.backend.as_str(), scale_on, Plain, settings)
}

/// Runs the benchmark on backend `B`.
fn scale_on<B: Backend>(settings: &Settings) -> Result<()> {
    let Settings {
        layers,
        dtype,
        tokens,
        ref backend,
        ..
    } = *settings;
    let at = settings.at();
    let dir = checkpoint_dir(layers);
    scale_checkpoint::write(&dir, layers)?;
    let hook = format!("model.language_model.layers.{at}");
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    eprintln!(
        "checkpoint {} ({layers} text layers, bf16), job: layer {at}, compute {dtype:?}, {tokens} tokens, {backend}, {threads} threads, {}",
        dir.display(),
        crate::cpu::describe()
    );
    let (stored, needed) = needed_bytes(&dir, at, dtype)?;
    let checkpoint: u64 = shards(&dir)?
        .iter()
        .map(|p| p.metadata().map_or(0, |m| m.len()))
        .sum();
    let cache_s = read_from_page_cache(&dir, at)?;

    let spec = dir.to_str().context("a UTF-8 path")?;
    let points = AnyModel::<B>::hook_points_of(spec)?;
    let scope = LoadScope::through(&points, [hook.as_str()], false);
    peak::reset();
    let start = Instant::now();
    let model = AnyModel::<B>::load_scoped(spec, DType::from(dtype), &scope, &Default::default())?;
    let load_s = start.elapsed().as_secs_f64();
    let AnyModel::Vision(vlm) = &model else {
        bail!("the scale checkpoint is a vision-language model");
    };
    let ids: Vec<i64> = (0..tokens as i64).map(|i| 100 + (i * 37) % 900).collect();
    let device = Default::default();
    let input = || VisionInput {
        input_ids: burn::tensor::Tensor::from_data(
            burn::tensor::TensorData::new(ids.clone(), [1, ids.len()]),
            &device,
        ),
        attention_mask: None,
        images: None,
    };
    let mut recorder = Recorder::paths(std::slice::from_ref(&hook), true);
    vlm.model.forward_hooked(input(), &mut recorder)?;
    let start = Instant::now();
    let mut recorder = Recorder::paths(std::slice::from_ref(&hook), true);
    vlm.model.forward_hooked(input(), &mut recorder)?;
    anyhow::ensure!(recorder.records.len() == 1, "the hook was not reached");
    let forward = tokens as f64 / start.elapsed().as_secs_f64();
    let peak_mib = peak::mib().unwrap_or(f64::NAN);
    let gib = |b: f64| b / (1u64 << 30) as f64;
    // A weight converted to another dtype goes to fresh memory, which the kernel must fault in
    // and zero: part of the bound too (timed after the peak was read).
    let fresh_s = if dtype == StorageDtype::BF16 {
        0.0
    } else {
        fault_in_fresh_memory(needed as usize)
    };
    println!(
        "scale-load s={load_s:.1} read_gib={:.2} page_cache_s={cache_s:.1} fresh_memory_s={fresh_s:.1} ratio={:.2}",
        gib(stored as f64),
        load_s / (cache_s + fresh_s)
    );
    println!("scale-forward tokens_per_s={forward:.1}");
    println!(
        "scale-peak-mib ours={peak_mib:.0} needed_mib={:.0} ratio={:.2} checkpoint_mib={:.0}",
        needed as f64 / 1048576.0,
        peak_mib * 1048576.0 / needed as f64,
        checkpoint as f64 / 1048576.0
    );
    if let Some(python) = std::env::var_os("SAE_BENCH_PYTHON") {
        drop(model);
        let device = if backend == "cuda" { "cuda" } else { "cpu" };
        transformers(Path::new(&python), &dir, at, dtype, tokens, device)?;
    }
    Ok(())
}

/// The checkpoint's shard files.
fn shards(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "safetensors"))
        .collect();
    files.sort();
    Ok(files)
}

/// True for the tensors a text job at layer `at` reads: the embedding and layers 0..=at.
fn needed(name: &str, at: usize) -> bool {
    name == "model.embed_tokens.weight"
        || name
            .strip_prefix("model.layers.")
            .and_then(|rest| rest.split('.').next()?.parse::<usize>().ok())
            .is_some_and(|layer| layer <= at)
}

/// The bytes a job at layer `at` reads from the files, and holds in `dtype`.
pub(crate) fn needed_bytes(dir: &Path, at: usize, dtype: StorageDtype) -> Result<(u64, u64)> {
    let size = match dtype {
        StorageDtype::F32 => 4,
        StorageDtype::F16 | StorageDtype::BF16 => 2,
    };
    let (mut stored, mut held) = (0, 0);
    for path in shards(dir)? {
        for (name, _, shape) in TensorFile::open(&path)?.describe() {
            if needed(&name, at) {
                let n: u64 = shape.iter().product::<usize>() as u64;
                stored += 2 * n;
                held += size * n;
            }
        }
    }
    Ok((stored, held))
}

/// Seconds to read the needed tensors' bytes with plain reads (a second pass, so from the page
/// cache where it holds them): the floor for loading them.
fn read_from_page_cache(dir: &Path, at: usize) -> Result<f64> {
    let mut buffer = vec![0u8; 64 << 20];
    let mut read_all = || -> Result<()> {
        for path in shards(dir)? {
            let file = TensorFile::open(&path)?;
            let mut ranges: Vec<(u64, u64)> = Vec::new();
            for name in file.names().into_iter().filter(|n| needed(n, at)) {
                ranges.push(file.byte_range(&name)?);
            }
            let mut f = std::fs::File::open(&path)?;
            for (start, end) in ranges {
                use std::io::Seek;
                f.seek(std::io::SeekFrom::Start(start))?;
                let mut left = end - start;
                while left > 0 {
                    let n = left.min(buffer.len() as u64) as usize;
                    f.read_exact(&mut buffer[..n])?;
                    left -= n as u64;
                }
            }
        }
        Ok(())
    };
    read_all()?;
    let start = Instant::now();
    read_all()?;
    Ok(start.elapsed().as_secs_f64())
}

/// Seconds to fault in `bytes` of fresh zeroed memory from the kernel (one write a page), as a
/// load that converts its weights must; the memory goes straight back to the kernel.
fn fault_in_fresh_memory(bytes: usize) -> f64 {
    use std::alloc::{GlobalAlloc, Layout, System};
    let layout = Layout::from_size_align(bytes.max(1), 4096).expect("a valid layout");
    let start = Instant::now();
    // SAFETY: a non-zero size; every write is inside the allocation, which is freed once.
    unsafe {
        let memory = System.alloc_zeroed(layout);
        assert!(!memory.is_null(), "out of memory");
        for page in (0..bytes).step_by(4096) {
            memory.add(page).write_volatile(1);
        }
        System.dealloc(memory, layout);
    }
    start.elapsed().as_secs_f64()
}

/// transformers on the same checkpoint and job: `tools/bench_scale.py`.
fn transformers(
    python: &Path,
    dir: &Path,
    at: usize,
    dtype: StorageDtype,
    tokens: usize,
    device: &str,
) -> Result<()> {
    let script = crate::bench::tools_dir().join("bench_scale.py");
    let dtype = format!("{dtype:?}").to_lowercase();
    let out = Command::new(python)
        .arg(script)
        .args([
            dir.to_str().unwrap_or_default(),
            &at.to_string(),
            &dtype,
            &tokens.to_string(),
            device,
        ])
        .output()
        .context("cannot run SAE_BENCH_PYTHON")?;
    if !out.status.success() {
        eprintln!(
            "scale: transformers failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        return Ok(());
    }
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        println!("{line}");
    }
    Ok(())
}
