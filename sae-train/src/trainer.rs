//! The SAE trainer: given the activations of each hook point (the tokens that count only),
//! accumulates gradients over micro-batches, then takes one AdamW step per SAE with sparsify's
//! extras (decoder rows kept at unit norm with the parallel gradient removed, dead-latent
//! tracking feeding the AuxK loss) and reports the step's metrics.
//!
//! Activations come on the inner backend of the autodiff backend `B`, so the frozen model never
//! records a graph. Each SAE's parameters, gradients and moments live on the host, where the
//! optimiser updates them in one fused pass; the SAE on the backend is a copy of them, renewed
//! after each step, for the forward passes that need it.

use burn::module::{AutodiffModule, Param};
use burn::tensor::backend::AutodiffBackend;
use burn::tensor::{ElementConversion, Tensor};
use rayon::prelude::*;
use sae_core::reduce::{dot, norm_sq};
use sae_core::sae::{int_to_host, to_host};
use sae_core::{Architecture, HookPoint, HostParams, Sae, SaeConfig, SaeError, gemm_on_host};
use serde::Serialize;

use crate::adamw::{AdamW, Moments};
use crate::config::{BiasInit, OptimConfig};
use crate::error::{Result, TrainError};
use crate::init;
use crate::schedule::lr_factor;

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

/// What one micro-batch gives an SAE besides its gradients: loss terms and selected latents.
struct MicroStep {
    loss: f64,
    fvu: f64,
    auxk: f64,
    multi_topk_fvu: Option<f64>,
    values: Vec<f32>,
    indices: Vec<i64>,
}

/// One SAE being trained, with its optimiser and bookkeeping.
#[derive(Debug)]
pub struct HookTrainer<B: AutodiffBackend> {
    /// The hook path.
    pub path: String,
    /// Activations are multiplied by this before the SAE sees them.
    pub scale: f32,
    /// Tokens seen since each latent last fired.
    pub tokens_since_fired: Vec<u64>,
    /// The SAE's parameters (in the scaled activation space when `scale != 1`), the
    /// optimiser's master copy.
    params: HostParams,
    /// The same SAE on the backend, renewed from `params` when a pass needs it.
    sae: Sae<B>,
    /// `params` changed since `sae` was last renewed.
    stale: bool,
    /// AdamW moments, from the first step on.
    moments: Option<Moments>,
    /// The step's gradients so far (one buffer kept for the whole run).
    grads: HostParams,
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
    /// A trainer for `sae` at `path`, before its first step.
    pub fn new(path: String, sae: Sae<B>) -> Self {
        let latents = sae.num_latents();
        Self::restore(path, sae, 1.0, vec![0; latents], None)
    }

    /// A trainer restored from a checkpoint's parts.
    pub fn restore(
        path: String,
        sae: Sae<B>,
        scale: f32,
        tokens_since_fired: Vec<u64>,
        moments: Option<Moments>,
    ) -> Self {
        let latents = sae.num_latents();
        let params = sae.host_params();
        HookTrainer {
            path,
            scale,
            tokens_since_fired,
            grads: params.zeros_like(),
            params,
            sae,
            stale: false,
            moments,
            did_fire: vec![false; latents],
            sums: HookMetrics::default(),
            micro_batches: 0,
        }
    }

    /// The SAE being trained (in the scaled activation space when `scale != 1`).
    pub fn sae(&mut self) -> &Sae<B> {
        if self.stale {
            self.sync();
        }
        &self.sae
    }

    /// Its configuration.
    pub fn config(&self) -> &SaeConfig {
        &self.sae.config
    }

    /// Its parameters on the host.
    pub fn params(&self) -> &HostParams {
        &self.params
    }

    /// AdamW's moments, once a step has been taken.
    pub fn moments(&self) -> Option<&Moments> {
        self.moments.as_ref()
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
            self.params.b_dec = init::decoder_bias(optim.b_dec_init, &scaled, d);
        }
        // sparsify normalises before every forward pass, the first one included; after this,
        // `apply` does it after every step, which is the same sequence.
        if self.sae.config.normalize_decoder {
            unit_norm_rows(&mut self.params.w_dec, d);
        }
        self.stale = true;
        Ok(())
    }

    /// Copies the host parameters to the SAE on the backend.
    fn sync(&mut self) {
        self.stale = false;
        let device = self.sae.w_enc.device();
        self.sae = Sae::from_host_params(self.sae.config.clone(), &self.params, &device)
            .expect("the trainer's parameters keep the SAE's shapes");
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
        // The host-gradient path reads only `params` when the product runs on the host.
        let host_only =
            self.sae.has_host_gradients() && gemm_on_host::<B::InnerBackend>(&x.device());
        if self.stale && !host_only {
            self.sync();
        }
        let grads = &mut self.grads;
        let micro = if self.sae.has_host_gradients() {
            self.sae
                .valid()
                .add_loss_grads(&self.params, x, dead.as_deref(), weight, grads)
                .map(MicroStep::from)
        } else {
            autodiff_micro_step(&self.sae, x, dead.as_deref(), weight, grads)
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
        Ok(())
    }

    /// The optimiser step and the step's metrics.
    fn apply(&mut self, optim: &OptimConfig, lr: f64, step: u64) -> Result<HookMetrics> {
        let config = self.sae.config.clone();
        let d = self.sae.d_in();
        let grads = &mut self.grads;
        if config.normalize_decoder {
            remove_parallel_component(&mut grads.w_dec, &self.params.w_dec, d);
        }
        // One partial sum per row (f32 within a row), added in order: the same total on any
        // thread count.
        let norm_sq: f64 = grads
            .iter()
            .flat_map(|(_, g)| {
                g.par_chunks(d)
                    .map(|row| f64::from(norm_sq(row)))
                    .collect::<Vec<_>>()
            })
            .sum();
        let grad_norm = norm_sq.sqrt();
        if !grad_norm.is_finite() {
            return Err(self.non_finite(step, "the gradient"));
        }
        let clip = optim
            .grad_clip
            .map_or(1.0, |max| (max / (grad_norm + 1e-6)).min(1.0));
        let moments = self
            .moments
            .get_or_insert_with(|| Moments::zeros_like(&self.params));
        for (name, g) in grads.iter_mut() {
            if clip < 1.0 {
                g.iter_mut().for_each(|v| *v *= clip as f32);
            }
            let hp = AdamW {
                lr,
                beta1: optim.beta1,
                beta2: optim.beta2,
                eps: optim.eps,
                weight_decay: if name.starts_with("w_") {
                    optim.weight_decay
                } else {
                    0.0
                },
            };
            let param = self.params.get_mut(name).expect("grads mirror the params");
            let m = moments.exp_avg.get_mut(name).expect("moments too");
            let v = moments.exp_avg_sq.get_mut(name).expect("moments too");
            hp.update(param, g, m, v, step);
        }
        if config.normalize_decoder {
            unit_norm_rows(&mut self.params.w_dec, d);
        }
        self.stale = true;

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

    /// The SAE for raw activations: the activation scale folded into the weights
    /// (`W_enc s`, `W_dec / s`, `b_dec / s`), on the inner backend.
    pub fn export(&self) -> Result<Sae<B::InnerBackend>> {
        let (s, p) = (self.scale, &self.params);
        let scaled = |v: &[f32], f: &dyn Fn(f32) -> f32| v.iter().map(|&x| f(x)).collect();
        let raw = HostParams {
            w_enc: scaled(&p.w_enc, &|x| x * s),
            w_dec: scaled(&p.w_dec, &|x| x / s),
            b_dec: scaled(&p.b_dec, &|x| x / s),
            b_enc: p.b_enc.clone(),
            threshold: p.threshold.clone(),
        };
        let device = self.sae.w_enc.val().inner().device();
        Ok(Sae::from_host_params(
            self.sae.config.clone(),
            &raw,
            &device,
        )?)
    }
}

impl From<sae_core::HostStep> for MicroStep {
    fn from(out: sae_core::HostStep) -> Self {
        MicroStep {
            loss: f64::from(out.loss),
            fvu: f64::from(out.fvu),
            auxk: out.auxk.map_or(0.0, f64::from),
            multi_topk_fvu: out.multi_topk_fvu.map(f64::from),
            values: out.values,
            indices: out.indices,
        }
    }
}

/// Loss and selection by the SAE's forward pass, gradients (of `weight x loss`) by Burn's
/// autodiff, added to `grads`.
fn autodiff_micro_step<B: AutodiffBackend>(
    sae: &Sae<B>,
    x: Tensor<B::InnerBackend, 2>,
    dead: Option<&[bool]>,
    weight: f32,
    grads: &mut HostParams,
) -> Result<MicroStep, SaeError> {
    let out = sae.forward(Tensor::from_inner(x), dead)?;
    let loss = out.loss(&sae.config);
    let host = |t: &Tensor<B, 1>| f64::from(t.clone().into_scalar().elem::<f32>());
    let backward = loss.clone().mul_scalar(weight).backward();
    let add = |sum: Option<&mut Vec<f32>>, g: Option<Vec<f32>>| {
        if let (Some(sum), Some(g)) = (sum, g) {
            sum.iter_mut().zip(g).for_each(|(s, v)| *s += v);
        }
    };
    let two = |p: &Param<Tensor<B, 2>>| p.grad(&backward).map(to_host);
    let one = |p: &Param<Tensor<B, 1>>| p.grad(&backward).map(to_host);
    add(Some(&mut grads.w_enc), two(&sae.w_enc));
    add(Some(&mut grads.w_dec), two(&sae.w_dec));
    add(Some(&mut grads.b_dec), one(&sae.b_dec));
    add(grads.b_enc.as_mut(), sae.b_enc.as_ref().and_then(one));
    add(
        grads.threshold.as_mut(),
        sae.threshold.as_ref().and_then(one),
    );
    Ok(MicroStep {
        loss: host(&loss),
        fvu: host(&out.fvu),
        auxk: out.auxk_loss.as_ref().map_or(0.0, host),
        multi_topk_fvu: out.multi_topk_fvu.as_ref().map(host),
        values: to_host(out.latents.values),
        indices: int_to_host(out.latents.indices),
    })
}

/// Removes from each row of `grad` (`d` wide) its component along the same (unit) row of `w`.
fn remove_parallel_component(grad: &mut [f32], w: &[f32], d: usize) {
    grad.par_chunks_mut(d)
        .zip(w.par_chunks(d))
        .for_each(|(g, w)| {
            let along = dot(g, w);
            g.iter_mut().zip(w).for_each(|(g, w)| *g -= w * along);
        });
}

/// Divides each row (`d` wide) by `(its L2 norm + eps)`, as sparsify normalises decoder rows.
fn unit_norm_rows(w: &mut [f32], d: usize) {
    w.par_chunks_mut(d).for_each(|row| {
        let norm = norm_sq(row).sqrt() + f32::EPSILON;
        row.iter_mut().for_each(|v| *v /= norm);
    });
}
