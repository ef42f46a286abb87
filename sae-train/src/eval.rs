//! Evaluation of trained SAEs on held-out data: per hook point FVU, L0, dead and dense latents;
//! for the model, next-token cross-entropy clean, with every SAE's reconstruction spliced in,
//! and with the hooked outputs zero-ablated, giving the CE and KL loss recovered.
//!
//! `ce_loss_recovered = (ce_zero - ce_sae) / (ce_zero - ce_clean)` and
//! `kl_loss_recovered = (kl_zero - kl_sae) / kl_zero`, with `kl_x` the mean over tokens of
//! `KL(p_clean || p_x)` of the next-token distributions.

use std::collections::BTreeMap;
use std::path::Path;

use burn::tensor::activation::log_softmax;
use burn::tensor::{DType, Int, Tensor, TensorData};
use sae_activations::{BatchModel, ReadConfig, hook_rows};
use sae_core::host::{int_to_host, to_host as host};
use sae_core::{Hooks, Recorder, SaeBackend, SaeModel};
use sae_data::Dataset;
use sae_models::{AnyModel, ImageTokens, Tokenizer};
use serde::Serialize;

use crate::error::{Result, TrainError};

/// What to evaluate on.
#[derive(Debug, Clone, PartialEq)]
pub struct EvalConfig {
    /// Batches to evaluate (fewer if the data ends first).
    pub batches: usize,
    /// How the data is read, and the tokens the SAE metrics cover.
    pub read: ReadConfig,
    /// A latent firing on more than this fraction of tokens counts as dense.
    pub dense_threshold: f64,
}

impl Default for EvalConfig {
    fn default() -> Self {
        EvalConfig {
            batches: 16,
            read: ReadConfig::default(),
            dense_threshold: 0.1,
        }
    }
}

/// One SAE's numbers.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct HookEval {
    /// Activations the SAE saw: tokens, or image patches for a vision hook.
    pub tokens: u64,
    /// Fraction of variance unexplained over all evaluated tokens.
    pub fvu: f64,
    /// Active latents per token.
    pub l0: f64,
    /// Dictionary size.
    pub num_latents: usize,
    /// Latents that never fired.
    pub dead_latents: usize,
    /// Percentage of latents that never fired.
    pub dead_pct: f64,
    /// Latents firing on more than `dense_threshold` of the tokens.
    pub dense_latents: usize,
    /// Percentage of dense latents.
    pub dense_pct: f64,
}

/// The evaluation report (`sae eval` prints it as JSON).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct EvalReport {
    /// Tokens the first SAE's metrics cover (each hook's count is in `hooks`).
    pub tokens: u64,
    /// Next-token predictions the CE and KL numbers cover.
    pub predictions: u64,
    /// Mean next-token cross-entropy of the clean model.
    pub ce_clean: f64,
    /// ... with the SAE reconstructions spliced in.
    pub ce_sae: f64,
    /// ... with the hooked outputs replaced by zeros.
    pub ce_zero: f64,
    /// `(ce_zero - ce_sae) / (ce_zero - ce_clean)`.
    pub ce_loss_recovered: f64,
    /// Mean KL divergence from the clean distribution with the SAEs spliced in.
    pub kl_sae: f64,
    /// ... with zero ablation.
    pub kl_zero: f64,
    /// `(kl_zero - kl_sae) / kl_zero`.
    pub kl_loss_recovered: f64,
    /// Per hook point.
    pub hooks: BTreeMap<String, HookEval>,
}

/// Running sums of one SAE's metrics.
#[derive(Default)]
struct HookSums {
    tokens: u64,
    residual_sq: f64,
    sum: Vec<f64>,
    sum_sq: Vec<f64>,
    active: u64,
    fires: Vec<u64>,
}

/// Replaces the outputs of the given hook points by zeros.
struct ZeroAblation<'a> {
    paths: &'a [String],
}

impl<B: SaeBackend> Hooks<B> for ZeroAblation<'_> {
    fn call(&mut self, path: &str, x: Tensor<B, 3>) -> Tensor<B, 3> {
        if self.paths.iter().any(|p| p == path) {
            x.zeros_like()
        } else {
            x
        }
    }
}

/// Evaluates the SAEs in `sae_dir` (any layout) on `model` (a language model, or a
/// vision-language model whose data is batched through its processor) over `data`.
pub fn evaluate<B: SaeBackend>(
    model: AnyModel<B>,
    sae_dir: &Path,
    data: &Path,
    config: &EvalConfig,
    device: &B::Device,
) -> Result<EvalReport> {
    if config.batches == 0 {
        return Err(TrainError::Invalid(
            "an evaluation needs at least 1 batch".into(),
        ));
    }
    let limits = (config, model.context());
    match model {
        AnyModel::Text(lm) => {
            let lm = *lm;
            evaluate_model(lm.model, &lm.tokenizer, None, sae_dir, data, limits, device)
        }
        AnyModel::Vision(vlm) => {
            let images: &dyn ImageTokens = vlm.as_ref();
            let tokenizer = &vlm.tokenizer;
            evaluate_model(
                &vlm.model,
                tokenizer,
                Some(images),
                sae_dir,
                data,
                limits,
                device,
            )
        }
    }
}

/// `evaluate` on one model type.
fn evaluate_model<B: SaeBackend, M: BatchModel<B>>(
    model: M,
    tokenizer: &Tokenizer,
    images: Option<&dyn ImageTokens>,
    sae_dir: &Path,
    data: &Path,
    (config, model_context): (&EvalConfig, usize),
    device: &B::Device,
) -> Result<EvalReport> {
    let sae_model: SaeModel<B, M> = SaeModel::from_pretrained(model, sae_dir, device)?;
    let adapter = &sae_model.adapters()[sae_core::DEFAULT_ADAPTER];
    // In the model's hook order, so the clean pass records them as it goes.
    let points: Vec<_> = sae_model
        .hook_points()
        .iter()
        .filter(|p| adapter.saes.contains_key(&p.path))
        .cloned()
        .collect();
    let paths: Vec<String> = points.iter().map(|p| p.path.clone()).collect();
    let dataset = Dataset::open(data)?;
    let mut loader = config
        .read
        .loader(&dataset, tokenizer, images, model_context)?;
    let filter = config.read.filter(tokenizer);
    let mut sums: Vec<HookSums> = paths
        .iter()
        .map(|p| {
            let sae = &adapter.saes[p];
            HookSums {
                sum: vec![0.0; sae.d_in()],
                sum_sq: vec![0.0; sae.d_in()],
                fires: vec![0; sae.num_latents()],
                ..HookSums::default()
            }
        })
        .collect();
    let (mut ce, mut kl, mut predictions) = ([0f64; 3], [0f64; 2], 0u64);
    for _ in 0..config.batches {
        let Some(batch) = loader.next_batch()? else {
            break;
        };
        let mut recorder = Recorder::paths(&paths, false);
        let model = sae_model.model();
        let clean = M::logits(model.forward_hooked(M::input(&batch, device), &mut recorder))?;
        let spliced = M::logits(sae_model.forward(M::input(&batch, device))?.output)?;
        let mut zero_ablation = ZeroAblation { paths: &paths };
        let zero = M::logits(model.forward_hooked(M::input(&batch, device), &mut zero_ablation))?;
        let (Some(clean), Some(spliced), Some(zero)) = (clean, spliced, zero) else {
            return Err(TrainError::Unsupported(
                "the model returned no logits".into(),
            ));
        };
        let tokens = filter.select(&batch.input_ids, &batch.attention_mask, batch.seq_len);
        for ((out, point), s) in recorder
            .outputs(&paths)
            .into_iter()
            .zip(&points)
            .zip(&mut sums)
        {
            // A vision hook is not reached by a batch without images.
            let Some(out) = out else { continue };
            accumulate_sae(
                s,
                &adapter.saes[&point.path],
                hook_rows(out, point, &tokens),
            )?;
        }
        let targets = next_token_targets(&batch.input_ids, &batch.attention_mask, batch.seq_len);
        let lp_clean = log_softmax(clean.clone().cast(DType::F32), 2);
        let p_clean = lp_clean.clone().exp();
        for (i, logits) in [clean, spliced, zero].into_iter().enumerate() {
            let lp = log_softmax(logits.cast(DType::F32), 2);
            ce[i] += masked_sum(&gather_target(lp.clone(), &batch, &targets), &targets);
            if i > 0 {
                let div = (p_clean.clone() * (lp_clean.clone() - lp)).sum_dim(2);
                kl[i - 1] += masked_sum(&host(div), &targets);
            }
        }
        predictions += targets.iter().filter(|t| t.is_some()).count() as u64;
    }
    if predictions == 0 {
        return Err(TrainError::NoData(data.to_path_buf()));
    }
    if let Some((path, _)) = paths.iter().zip(&sums).find(|(_, s)| s.tokens == 0) {
        return Err(TrainError::Invalid(format!(
            "the SAE for {path} saw no activations in {} (a vision hook needs rows with images)",
            data.display()
        )));
    }
    let n = predictions as f64;
    let [ce_clean, ce_sae, ce_zero] = ce.map(|v| -v / n);
    let [kl_sae, kl_zero] = kl.map(|v| v / n);
    let hooks = paths
        .iter()
        .zip(&sums)
        .map(|(p, s)| (p.clone(), finish_hook(s, config.dense_threshold)))
        .collect();
    Ok(EvalReport {
        tokens: sums.first().map_or(0, |s| s.tokens),
        predictions,
        ce_clean,
        ce_sae,
        ce_zero,
        ce_loss_recovered: (ce_zero - ce_sae) / (ce_zero - ce_clean),
        kl_sae,
        kl_zero,
        kl_loss_recovered: (kl_zero - kl_sae) / kl_zero,
        hooks,
    })
}

/// Adds one batch of activations `[n, d]` to an SAE's sums.
fn accumulate_sae<B: SaeBackend>(
    s: &mut HookSums,
    sae: &sae_core::Sae<B>,
    x: Tensor<B, 2>,
) -> Result<()> {
    let [n, d] = x.dims();
    if n == 0 {
        return Ok(());
    }
    let latents = sae.encode(x.clone())?;
    let recon = host(sae.decode(&latents));
    let xs = host(x);
    for (row, rrow) in xs.chunks_exact(d).zip(recon.chunks_exact(d)) {
        for j in 0..d {
            let v = f64::from(row[j]);
            s.sum[j] += v;
            s.sum_sq[j] += v * v;
            s.residual_sq += (v - f64::from(rrow[j])).powi(2);
        }
    }
    let values = host(latents.values);
    for (&v, i) in values.iter().zip(int_to_host(latents.indices)) {
        if v != 0.0 {
            s.active += 1;
            s.fires[i as usize] += 1;
        }
    }
    s.tokens += n as u64;
    Ok(())
}

/// An SAE's final numbers from its sums.
fn finish_hook(s: &HookSums, dense_threshold: f64) -> HookEval {
    let n = s.tokens.max(1) as f64;
    let variance: f64 = s
        .sum
        .iter()
        .zip(&s.sum_sq)
        .map(|(sum, sq)| sq - sum * sum / n)
        .sum();
    let dead = s.fires.iter().filter(|&&f| f == 0).count();
    let dense = s
        .fires
        .iter()
        .filter(|&&f| f as f64 > dense_threshold * n)
        .count();
    let latents = s.fires.len();
    HookEval {
        tokens: s.tokens,
        fvu: s.residual_sq / variance,
        l0: s.active as f64 / n,
        num_latents: latents,
        dead_latents: dead,
        dead_pct: 100.0 * dead as f64 / latents as f64,
        dense_latents: dense,
        dense_pct: 100.0 * dense as f64 / latents as f64,
    }
}

/// For each position, the next token when both it and the next are real tokens.
fn next_token_targets(ids: &[i64], mask: &[i64], seq_len: usize) -> Vec<Option<i64>> {
    (0..ids.len())
        .map(|i| {
            let last = i % seq_len == seq_len - 1;
            (!last && mask[i] != 0 && mask[i + 1] != 0).then(|| ids[i + 1])
        })
        .collect()
}

/// `lp[b, t, target[b, t]]` for every position (0 where there is no target).
fn gather_target<B: SaeBackend>(
    lp: Tensor<B, 3>,
    batch: &sae_data::Batch,
    targets: &[Option<i64>],
) -> Vec<f32> {
    let device = lp.device();
    let ids: Vec<i64> = targets.iter().map(|t| t.unwrap_or(0)).collect();
    let index = Tensor::<B, 3, Int>::from_data(
        TensorData::new(ids, [batch.batch_size, batch.seq_len, 1]),
        &device,
    );
    host(lp.gather(2, index))
}

/// The sum of `values` where there is a target.
fn masked_sum(values: &[f32], targets: &[Option<i64>]) -> f64 {
    values
        .iter()
        .zip(targets)
        .filter(|(_, t)| t.is_some())
        .map(|(&v, _)| f64::from(v))
        .sum()
}
