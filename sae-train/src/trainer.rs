//! The SAE trainer: given the activations of each hook point (the tokens that count only),
//! accumulates gradients over micro-batches, then takes one AdamW step per SAE with sparsify's
//! extras (decoder rows kept at unit norm with the parallel gradient removed, dead-latent
//! tracking feeding the AuxK loss) and reports the step's metrics.
//!
//! SAEs live on the autodiff backend `B`; activations, gradients and optimiser moments on its
//! inner backend, so the frozen model never records a graph.

use std::collections::BTreeMap;

use burn::module::{AutodiffModule, Param};
use burn::tensor::backend::AutodiffBackend;
use burn::tensor::{ElementConversion, Tensor, TensorData};
use sae_core::sae::{to_host, unit_norm_rows};
use sae_core::{Architecture, HookPoint, Sae, SaeConfig, SaeError};
use serde::Serialize;

use crate::adamw::{AdamW, Moments};
use crate::config::{BiasInit, OptimConfig};
use crate::error::{Result, TrainError};
use crate::init;
use crate::schedule::lr_factor;

/// The trainable tensors of an SAE, by the names checkpoints use.
pub const PARAMS: [&str; 5] = ["w_enc", "b_enc", "w_dec", "b_dec", "threshold"];

/// One step's numbers for one SAE (means over the step's micro-batches).
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct HookMetrics {
    /// The training objective.
    pub loss: f64,
    /// Fraction of variance unexplained.
    pub fvu: f64,
    /// Active latents per token.
    pub l0: f64,
    /// Percentage of latents that have not fired for `dead_tokens_threshold` tokens.
    pub dead_pct: f64,
    /// AuxK loss (0 while no latent is dead).
    pub auxk: f64,
    /// Multi-TopK FVU, when on.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub multi_topk_fvu: Option<f64>,
    /// Global L2 norm of the gradient, before clipping.
    pub grad_norm: f64,
    /// Learning rate of the step.
    pub lr: f64,
    /// Tokens the SAE trained on in the step.
    pub tokens: u64,
}

/// What one micro-batch gives an SAE: its loss terms, selected latents and gradients.
struct MicroStep<B: burn::tensor::backend::Backend> {
    loss: f64,
    fvu: f64,
    auxk: f64,
    multi_topk_fvu: Option<f64>,
    values: Vec<f32>,
    indices: Vec<i64>,
    grads: Vec<(&'static str, Tensor<B, 2>)>,
}

/// One SAE being trained, with its optimiser and bookkeeping.
#[derive(Debug)]
pub struct HookTrainer<B: AutodiffBackend> {
    /// The hook path.
    pub path: String,
    /// The SAE, in the scaled activation space when `scale != 1`.
    pub sae: Sae<B>,
    /// Activations are multiplied by this before the SAE sees them.
    pub scale: f32,
    /// Tokens seen since each latent last fired.
    pub tokens_since_fired: Vec<u64>,
    /// AdamW moments by parameter name (1-D parameters stored as `[1, n]`).
    pub moments: BTreeMap<String, Moments<B::InnerBackend, 2>>,
    grads: BTreeMap<&'static str, Tensor<B::InnerBackend, 2>>,
    did_fire: Vec<bool>,
    sums: HookMetrics,
    micro_batches: usize,
}

/// The SAEs of a run and the step counter.
#[derive(Debug)]
pub struct Trainer<B: AutodiffBackend> {
    /// One per hook point, in the model's order.
    pub hooks: Vec<HookTrainer<B>>,
    /// Optimiser steps done.
    pub step: u64,
    /// The first batch has set `b_dec` and the scales.
    pub initialised: bool,
    optim: OptimConfig,
}

impl<B: AutodiffBackend> Trainer<B> {
    /// Fresh SAEs (seeded by `optim.seed`) at each of `points`, sized as SAE Made Easy does when
    /// `sae.num_latents` is 0.
    pub fn new(
        points: &[HookPoint],
        sae: &SaeConfig,
        optim: &OptimConfig,
        device: &B::Device,
    ) -> Result<Self> {
        B::seed(device, optim.seed);
        let hooks = points
            .iter()
            .map(|point| {
                let mut config = sae.clone();
                if config.num_latents == 0 {
                    config.num_latents =
                        config.expansion_factor * point.in_features.unwrap_or(point.width);
                }
                Ok(HookTrainer::new(
                    point.path.clone(),
                    Sae::new(point.width, config, device)?,
                ))
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self::from_parts(hooks, 0, false, optim))
    }

    /// A trainer from restored parts (a checkpoint).
    pub fn from_parts(
        hooks: Vec<HookTrainer<B>>,
        step: u64,
        initialised: bool,
        optim: &OptimConfig,
    ) -> Self {
        Trainer {
            hooks,
            step,
            initialised,
            optim: optim.clone(),
        }
    }

    /// Forward and backward of every SAE on one micro-batch: `acts[i]` are hook `i`'s
    /// activations, `[tokens, d_in]`, of the tokens that count.
    pub fn accumulate(&mut self, acts: Vec<Tensor<B::InnerBackend, 2>>) -> Result<()> {
        let step = self.step + 1;
        if !self.initialised {
            for (hook, x) in self.hooks.iter_mut().zip(&acts) {
                hook.initialise(x, &self.optim)?;
            }
            self.initialised = true;
        }
        let acc = self.optim.grad_acc_steps;
        for (hook, x) in self.hooks.iter_mut().zip(acts) {
            hook.accumulate(x, acc, step)?;
        }
        Ok(())
    }

    /// The optimiser step after `grad_acc_steps` calls to [`accumulate`](Self::accumulate):
    /// returns each hook's metrics for the step.
    pub fn finish_step(&mut self) -> Result<Vec<HookMetrics>> {
        let factor = lr_factor(
            self.optim.schedule,
            self.step,
            self.optim.warmup_steps,
            self.optim.steps,
        );
        self.step += 1;
        let step = self.step;
        self.hooks
            .iter_mut()
            .map(|hook| {
                let lr = self.optim.lr_for(hook.sae.num_latents()) * factor;
                hook.apply(&self.optim, lr, step)
            })
            .collect()
    }
}

impl<B: AutodiffBackend> HookTrainer<B> {
    /// A trainer for `sae` at `path`, with zero moments.
    pub fn new(path: String, sae: Sae<B>) -> Self {
        let latents = sae.num_latents();
        Self::restore(path, sae, 1.0, vec![0; latents], BTreeMap::new())
    }

    /// A trainer restored from a checkpoint's parts.
    pub fn restore(
        path: String,
        sae: Sae<B>,
        scale: f32,
        tokens_since_fired: Vec<u64>,
        moments: BTreeMap<String, Moments<B::InnerBackend, 2>>,
    ) -> Self {
        let latents = sae.num_latents();
        HookTrainer {
            path,
            sae,
            scale,
            tokens_since_fired,
            moments,
            grads: BTreeMap::new(),
            did_fire: vec![false; latents],
            sums: HookMetrics::default(),
            micro_batches: 0,
        }
    }

    /// The first batch sets the scale and `b_dec`.
    fn initialise(&mut self, x: &Tensor<B::InnerBackend, 2>, optim: &OptimConfig) -> Result<()> {
        let [n, d] = x.dims();
        if n == 0 {
            return Ok(());
        }
        let rows = to_host(x.clone());
        if rows.iter().any(|v| !v.is_finite()) {
            return Err(self.non_finite(1, "the activations"));
        }
        if optim.normalize_activations {
            self.scale = init::norm_scale(&rows, d);
        }
        if optim.b_dec_init != BiasInit::Zeros {
            let scaled: Vec<f32> = rows.iter().map(|v| v * self.scale).collect();
            let bias = init::decoder_bias(optim.b_dec_init, &scaled, d);
            let device = x.device();
            let bias = Tensor::<B::InnerBackend, 1>::from_data(TensorData::new(bias, [d]), &device);
            set_param(&mut self.sae, "b_dec", bias.reshape([1, d]));
        }
        // sparsify normalises before every forward pass, the first one included; after this,
        // `apply` does it after every step, which is the same sequence.
        if self.sae.config.normalize_decoder {
            self.normalize_decoder();
        }
        Ok(())
    }

    fn non_finite(&self, step: u64, what: &str) -> TrainError {
        TrainError::NonFinite {
            step,
            what: format!("{what} at {}", self.path),
        }
    }

    /// Forward and backward on one micro-batch; gradients are summed, scaled by `1 / acc`.
    fn accumulate(&mut self, x: Tensor<B::InnerBackend, 2>, acc: usize, step: u64) -> Result<()> {
        let n = x.dims()[0];
        if n == 0 {
            return Ok(());
        }
        let x = if self.scale != 1.0 {
            x.mul_scalar(self.scale)
        } else {
            x
        };
        let config = self.sae.config.clone();
        let dead: Option<Vec<bool>> = (config.aux_k_alpha > 0.0).then(|| {
            self.tokens_since_fired
                .iter()
                .map(|&t| t > config.dead_tokens_threshold)
                .collect()
        });
        let weight = 1.0 / acc as f32;
        let micro = if self.sae.has_host_gradients() {
            self.host_micro_step(x, dead.as_deref(), weight)
        } else {
            self.autodiff_micro_step(x, dead.as_deref(), weight)
        };
        let micro = match micro {
            Err(SaeError::NonFinite(_)) => return Err(self.non_finite(step, "the activations")),
            other => other?,
        };
        if !micro.loss.is_finite() {
            return Err(self.non_finite(step, "the loss"));
        }
        self.sums.loss += micro.loss;
        self.sums.fvu += micro.fvu;
        self.sums.auxk += micro.auxk;
        if let Some(mt) = micro.multi_topk_fvu {
            *self.sums.multi_topk_fvu.get_or_insert(0.0) += mt;
        }
        // As sparsify, every latent TopK selects counts as fired (even at a ReLU'd zero); the
        // other architectures pad their selections with zeros, so there only non-zeros count.
        let all_selected = config.architecture == Architecture::TopK;
        let mut active = 0usize;
        for (&v, &i) in micro.values.iter().zip(&micro.indices) {
            if v != 0.0 {
                active += 1;
            }
            if v != 0.0 || all_selected {
                self.did_fire[i as usize] = true;
            }
        }
        self.sums.l0 += active as f64 / n as f64;
        self.sums.tokens += n as u64;
        self.micro_batches += 1;
        for (name, g) in micro.grads {
            let sum = match self.grads.remove(name) {
                Some(prev) => prev + g,
                None => g,
            };
            self.grads.insert(name, sum);
        }
        Ok(())
    }

    /// Loss, selection and gradients (of `weight x loss`) by Burn's autodiff.
    fn autodiff_micro_step(
        &self,
        x: Tensor<B::InnerBackend, 2>,
        dead: Option<&[bool]>,
        weight: f32,
    ) -> Result<MicroStep<B::InnerBackend>, SaeError> {
        let out = self.sae.forward(Tensor::from_inner(x), dead)?;
        let loss = out.loss(&self.sae.config);
        let host = |t: &Tensor<B, 1>| f64::from(t.clone().into_scalar().elem::<f32>());
        let grads = loss.clone().mul_scalar(weight).backward();
        Ok(MicroStep {
            loss: host(&loss),
            fvu: host(&out.fvu),
            auxk: out.auxk_loss.as_ref().map_or(0.0, host),
            multi_topk_fvu: out.multi_topk_fvu.as_ref().map(host),
            values: to_host(out.latents.values),
            indices: out
                .latents
                .indices
                .into_data()
                .convert::<i64>()
                .into_vec()
                .expect("i64"),
            grads: PARAMS
                .iter()
                .filter_map(|&name| param_grad(&self.sae, name, &grads).map(|g| (name, g)))
                .collect(),
        })
    }

    /// The same from sae-core's hand-derived host gradients (TopK, BatchTopK).
    fn host_micro_step(
        &self,
        x: Tensor<B::InnerBackend, 2>,
        dead: Option<&[bool]>,
        weight: f32,
    ) -> Result<MicroStep<B::InnerBackend>, SaeError> {
        let device = x.device();
        let sae = self.sae.valid();
        let (latents, d) = (sae.num_latents(), sae.d_in());
        let out = sae.loss_and_grads(x, dead, weight)?;
        let tensor = |values: Vec<f32>, rows: usize, cols: usize| {
            Tensor::<B::InnerBackend, 2>::from_data(TensorData::new(values, [rows, cols]), &device)
        };
        let g = out.grads;
        let mut grads = vec![
            ("w_enc", tensor(g.w_enc, latents, d)),
            ("w_dec", tensor(g.w_dec, latents, d)),
            ("b_dec", tensor(g.b_dec, 1, d)),
        ];
        grads.extend(g.b_enc.map(|b| ("b_enc", tensor(b, 1, latents))));
        Ok(MicroStep {
            loss: f64::from(out.loss),
            fvu: f64::from(out.fvu),
            auxk: out.auxk.map_or(0.0, f64::from),
            multi_topk_fvu: out.multi_topk_fvu.map(f64::from),
            values: out.values,
            indices: out.indices,
            grads,
        })
    }

    /// The optimiser step and the step's metrics.
    fn apply(&mut self, optim: &OptimConfig, lr: f64, step: u64) -> Result<HookMetrics> {
        let config = self.sae.config.clone();
        let mut grads = std::mem::take(&mut self.grads);
        if config.normalize_decoder
            && let (Some(g), Some(w)) = (grads.remove("w_dec"), param_value(&self.sae, "w_dec"))
        {
            // Remove the component of each row's gradient along the (unit) row itself.
            let along = (g.clone() * w.clone()).sum_dim(1);
            grads.insert("w_dec", g - w * along);
        }
        let norm_sq: f64 = grads
            .values()
            .map(|g| f64::from(g.clone().powi_scalar(2).sum().into_scalar().elem::<f32>()))
            .sum();
        let grad_norm = norm_sq.sqrt();
        if !grad_norm.is_finite() {
            return Err(self.non_finite(step, "the gradient"));
        }
        let clip = optim
            .grad_clip
            .map_or(1.0, |max| (max / (grad_norm + 1e-6)).min(1.0));
        for (name, g) in grads {
            let g = if clip < 1.0 { g.mul_scalar(clip) } else { g };
            let value = param_value(&self.sae, name).expect("a parameter with a gradient exists");
            let decays = name.starts_with("w_");
            let hp = AdamW {
                lr,
                beta1: optim.beta1,
                beta2: optim.beta2,
                eps: optim.eps,
                weight_decay: if decays { optim.weight_decay } else { 0.0 },
            };
            let moments = self
                .moments
                .entry(name.to_string())
                .or_insert_with(|| Moments::zeros_like(&value));
            let updated = hp.update(value, g, moments, step);
            set_param(&mut self.sae, name, updated);
        }
        if config.normalize_decoder {
            self.normalize_decoder();
        }

        let tokens = self.sums.tokens;
        for (count, fired) in self.tokens_since_fired.iter_mut().zip(&mut self.did_fire) {
            *count = if *fired { 0 } else { *count + tokens };
            *fired = false;
        }
        let dead = self
            .tokens_since_fired
            .iter()
            .filter(|&&t| t > config.dead_tokens_threshold)
            .count();
        let m = self.micro_batches.max(1) as f64;
        let sums = std::mem::take(&mut self.sums);
        self.micro_batches = 0;
        Ok(HookMetrics {
            loss: sums.loss / m,
            fvu: sums.fvu / m,
            l0: sums.l0 / m,
            dead_pct: 100.0 * dead as f64 / self.tokens_since_fired.len() as f64,
            auxk: sums.auxk / m,
            multi_topk_fvu: sums.multi_topk_fvu.map(|v| v / m),
            grad_norm,
            lr,
            tokens,
        })
    }

    /// Divides each decoder row by its norm (plus epsilon).
    fn normalize_decoder(&mut self) {
        let w = param_value(&self.sae, "w_dec").expect("an SAE has a decoder");
        set_param(&mut self.sae, "w_dec", unit_norm_rows(w));
    }

    /// The SAE for raw activations: the activation scale folded into the weights
    /// (`W_enc s`, `W_dec / s`, `b_dec / s`), on the inner backend.
    pub fn export(&self) -> Result<Sae<B::InnerBackend>> {
        let s = self.scale;
        let sae = &self.sae;
        let inner1 = |p: &Param<Tensor<B, 1>>| p.val().inner();
        Ok(Sae::from_tensors(
            sae.config.clone(),
            sae.w_enc.val().inner().mul_scalar(s),
            sae.b_enc.as_ref().map(inner1),
            sae.w_dec.val().inner().div_scalar(s),
            sae.b_dec.val().inner().div_scalar(s),
            sae.threshold.as_ref().map(inner1),
        )?)
    }
}

/// A parameter's value on the inner backend, 1-D ones as `[1, n]`.
pub fn param_value<B: AutodiffBackend>(
    sae: &Sae<B>,
    name: &str,
) -> Option<Tensor<B::InnerBackend, 2>> {
    let row = |p: &Param<Tensor<B, 1>>| {
        let t = p.val().inner();
        let n = t.dims()[0];
        t.reshape([1, n])
    };
    match name {
        "w_enc" => Some(sae.w_enc.val().inner()),
        "w_dec" => Some(sae.w_dec.val().inner()),
        "b_dec" => Some(row(&sae.b_dec)),
        "b_enc" => sae.b_enc.as_ref().map(row),
        "threshold" => sae.threshold.as_ref().map(row),
        _ => None,
    }
}

/// A parameter's gradient, 1-D ones as `[1, n]`.
fn param_grad<B: AutodiffBackend>(
    sae: &Sae<B>,
    name: &str,
    grads: &B::Gradients,
) -> Option<Tensor<B::InnerBackend, 2>> {
    let row = |p: &Param<Tensor<B, 1>>| {
        p.grad(grads).map(|g| {
            let n = g.dims()[0];
            g.reshape([1, n])
        })
    };
    match name {
        "w_enc" => sae.w_enc.grad(grads),
        "w_dec" => sae.w_dec.grad(grads),
        "b_dec" => row(&sae.b_dec),
        "b_enc" => sae.b_enc.as_ref().and_then(row),
        "threshold" => sae.threshold.as_ref().and_then(row),
        _ => None,
    }
}

/// Replaces a parameter's value (1-D ones given as `[1, n]`), keeping its id.
pub fn set_param<B: AutodiffBackend>(
    sae: &mut Sae<B>,
    name: &str,
    value: Tensor<B::InnerBackend, 2>,
) {
    let two = |p: &mut Param<Tensor<B, 2>>, v: Tensor<B::InnerBackend, 2>| {
        *p = Param::initialized(p.id, Tensor::from_inner(v).require_grad());
    };
    let one = |p: &mut Param<Tensor<B, 1>>, v: Tensor<B::InnerBackend, 2>| {
        let n = v.dims()[1];
        *p = Param::initialized(p.id, Tensor::from_inner(v.reshape([n])).require_grad());
    };
    match name {
        "w_enc" => two(&mut sae.w_enc, value),
        "w_dec" => two(&mut sae.w_dec, value),
        "b_dec" => one(&mut sae.b_dec, value),
        "b_enc" => {
            if let Some(p) = sae.b_enc.as_mut() {
                one(p, value)
            }
        }
        "threshold" => {
            if let Some(p) = sae.threshold.as_mut() {
                one(p, value)
            }
        }
        _ => {}
    }
}
