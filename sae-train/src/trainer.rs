//! The SAE trainer: given the activations of each hook point (the tokens that count only),
//! accumulates gradients over micro-batches, then takes one AdamW step per SAE with sparsify's
//! extras (decoder rows kept at unit norm with the parallel gradient removed, dead-latent
//! tracking feeding the AuxK loss) and reports the step's metrics.
//!
//! Activations come on the inner backend of the autodiff backend `B`, so the frozen model never
//! records a graph. On the CPU backends each SAE's parameters, gradients and moments live on the
//! host, where the hand-derived gradients and the optimiser run as fused loops; on the GPU
//! backends (TopK and BatchTopK) they stay on the device, where the same math runs as tensor
//! operations ([`sae_core::sae::device_grad`]) and only the selection and a few scalars are read
//! back (BatchTopK: each token's `4k` largest pre-activations, for its batch-wide selection).
//! The SAE on the backend is renewed from them after each step for the forward passes that
//! need it.
//!
//! Data parallel (DDP), each rank trains on its part of every batch through a [`Collective`]:
//! rank 0's parameters are broadcast at the start, the first batch's rows are gathered to set
//! `b_dec` and the scale, each micro-batch's losses are normalised by the whole batch's
//! statistics ([`BatchShare`]), and before each optimiser step the gradients, the fired
//! latents and the metric sums are summed over the ranks. Every rank then takes the same step,
//! so that the ranks stay identical and equal one process that trains on whole batches.

use std::borrow::Cow;
use std::rc::Rc;

use burn::module::{AutodiffModule, Param};
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{ElementConversion, Tensor};
use sae_core::host::{int_to_host, to_host};
use sae_core::sae::share::{column_sums, squared_deviation};
use sae_core::{
    Architecture, BatchShare, HookPoint, HostParams, Params, Sae, SaeAutodiffBackend, SaeBackend,
    SaeConfig, SaeError,
};
use serde::Serialize;

use crate::adamw::{AdamW, Moments};
use crate::collective::{Collective, Single, gather_rows};
use crate::config::Strategy;
use crate::config::{BiasInit, OptimConfig};
use crate::error::{Result, TrainError};
use crate::init;
use crate::schedule::lr_factor;
use crate::storage::Storage;
use crate::zero::{Partition, Stage};

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
    /// Parameters (in the scaled activation space when `scale != 1`), gradients and moments.
    residence: Residence<B::InnerBackend>,
    /// The same SAE on the backend, renewed from `state` when a pass needs it.
    sae: Sae<B>,
    /// The parameters changed since `sae` was last renewed.
    stale: bool,
    did_fire: Vec<bool>,
    sums: HookMetrics,
    micro_batches: usize,
}

/// The optimiser's master copy of one SAE: parameters, the step's gradients so far (one buffer
/// kept for the whole run) and AdamW's moments from the first step on.
#[derive(Debug)]
struct Optimised<T> {
    params: Params<T>,
    grads: Params<T>,
    moments: Option<Moments<T>>,
    /// Under ZeRO: the latents this rank steps, their moments (`moments` stays empty) and,
    /// stage 2, their gradients.
    partition: Option<Partition<T>>,
}

/// `$body` with `$state` bound to the [`Optimised`] state of `$residence`, wherever it lives
/// (the same code over either storage).
macro_rules! on_state {
    ($residence:expr, $state:ident => $body:expr) => {
        match $residence {
            Residence::Host($state) => $body,
            Residence::Device($state) => $body,
        }
    };
}

/// Where an SAE's [`Optimised`] state lives.
#[derive(Debug)]
enum Residence<B: Backend> {
    /// On the host: the CPU backends, and the architectures without hand-derived gradients.
    Host(Box<Optimised<Vec<f32>>>),
    /// On the device: TopK and BatchTopK on the GPU backends.
    Device(Optimised<Tensor<B, 1>>),
}

impl<T: Storage> Optimised<T> {
    fn new(params: Params<T>, moments: Option<Moments<T>>) -> Self {
        Optimised {
            grads: params.map(Storage::zeros_like),
            params,
            moments,
            partition: None,
        }
    }

    /// Under ZeRO from now on: this rank keeps the moments of its latents only (and what else
    /// `stage` says).
    fn partition(&mut self, ranks: (usize, usize), stage: Stage, d: usize) {
        let latents = self.params.w_enc.count() / d;
        let moments = self.moments.take();
        self.partition = Some(Partition::new(ranks, latents, moments.as_ref(), (d, stage)));
        self.release_params(d);
    }

    /// Stage 3, between steps: this rank keeps its slice of the parameters, and releases the
    /// whole ones.
    fn release_params(&mut self, d: usize) {
        let Some(part) = &mut self.partition else {
            return;
        };
        if part.stage == Stage::Three && self.params.w_enc.count() > 0 {
            part.params = Some(part.slice(&self.params, d));
            self.params = self.params.map(|p| p.like(Vec::new()));
        }
    }

    /// Stage 3, before a step's passes (or a checkpoint): the whole parameters, gathered from
    /// every rank's slice.
    fn gather_params(&mut self, collective: &dyn Collective, d: usize) -> Result<()> {
        if let Some(part) = &mut self.partition
            && let Some(slice) = part.params.take()
        {
            self.params = part.gather_params(collective, &slice, d)?;
        }
        Ok(())
    }

    /// Zeroed gradients where stage 2 released them after the last micro-batch.
    fn ensure_grads(&mut self) {
        if self.grads.w_enc.count() == 0 {
            self.grads = self.params.map(Storage::zeros_like);
        }
    }

    /// Stages 2 and 3, after each micro-batch: this rank's slice of the gradients summed over
    /// the ranks is added to its own, and the whole gradients are released.
    fn scatter_grads(&mut self, collective: &dyn Collective, d: usize) -> Result<()> {
        if self.partition.as_ref().is_none_or(|p| p.stage < Stage::Two) {
            return Ok(());
        }
        self.ensure_grads();
        let part = self.partition.as_mut().expect("checked above");
        let summed = part.reduce_scatter(collective, &self.grads, d)?;
        part.add_grads(summed);
        self.grads = self.grads.map(|g| g.like(Vec::new()));
        Ok(())
    }

    /// Removes the gradient along the decoder rows (when they are kept at unit norm), clips
    /// the global norm, takes AdamW's step `t` and renormalises the decoder rows; returns the
    /// gradient's norm before clipping (NaN or infinite leaves the parameters unchanged).
    /// Under ZeRO this rank steps its latents and the parameters are gathered.
    fn step(
        &mut self,
        collective: &dyn Collective,
        (config, optim): (&SaeConfig, &OptimConfig),
        lr: f64,
        t: u64,
        d: usize,
    ) -> Result<f64> {
        let Some(part) = &mut self.partition else {
            remove_parallel_component(&mut self.grads, &self.params, config, d);
            let grad_norm = norm_sq(&self.grads, d, |_| true).sqrt();
            if grad_norm.is_finite() {
                let state = (&mut self.params, &mut self.grads, &mut self.moments);
                update(state, (config, optim), lr, t, d, grad_norm);
            }
            return Ok(grad_norm);
        };
        let mut grads = match part.grads.take() {
            Some(grads) => grads,
            None => {
                let grads = part.reduce_scatter(collective, &self.grads, d)?;
                for (_, g) in self.grads.iter_mut() {
                    g.fill_zero();
                }
                grads
            }
        };
        let mut params = part.slice(&self.params, d);
        remove_parallel_component(&mut grads, &params, config, d);
        // The latents' squared norms summed over the ranks, and b_dec's (whole on every rank).
        let mut sq = [norm_sq(&grads, d, |name| name != "b_dec")];
        collective.all_reduce_f64(&mut sq)?;
        let grad_norm = (sq[0] + grads.b_dec.norm_sq(d)).sqrt();
        if grad_norm.is_finite() {
            let state = (&mut params, &mut grads, &mut part.moments);
            update(state, (config, optim), lr, t, d, grad_norm);
            if part.stage == Stage::Three {
                // Gathered at the start of the next step.
                part.params = Some(params);
                self.params = self.params.map(|p| p.like(Vec::new()));
            } else {
                part.all_gather(collective, &params, &mut self.params, d)?;
            }
        }
        Ok(grad_norm)
    }

    /// The whole moments on the host of rank 0 (`None` on the others); under ZeRO gathered
    /// from every rank (a collective).
    fn whole_moments(&self, collective: &dyn Collective, d: usize) -> Result<Option<Moments>> {
        match &self.partition {
            Some(part) => part.gather_moments(collective, d),
            None if collective.rank() != 0 => Ok(None),
            None => Ok(self.moments.as_ref().map(|m| Moments {
                exp_avg: m.exp_avg.map(Storage::to_vec),
                exp_avg_sq: m.exp_avg_sq.map(Storage::to_vec),
            })),
        }
    }
}

/// With `normalize_decoder`, removes from each decoder row's gradient its component along the
/// row.
fn remove_parallel_component<T: Storage>(
    grads: &mut Params<T>,
    params: &Params<T>,
    config: &SaeConfig,
    d: usize,
) {
    if config.normalize_decoder {
        grads.w_dec.remove_parallel_component(&params.w_dec, d);
    }
}

/// The sum of the squares of the gradients of the parameters `named` picks.
fn norm_sq<T: Storage>(grads: &Params<T>, d: usize, named: impl Fn(&str) -> bool) -> f64 {
    (grads.iter())
        .filter(|(name, _)| named(name))
        .map(|(_, g)| g.norm_sq(d))
        .sum()
}

/// Clips the gradients to `grad_clip` by their global norm `grad_norm`, takes AdamW's step
/// `t` (moments created at the first) and renormalises the decoder rows.
fn update<T: Storage>(
    (params, grads, moments): (&mut Params<T>, &mut Params<T>, &mut Option<Moments<T>>),
    (config, optim): (&SaeConfig, &OptimConfig),
    lr: f64,
    t: u64,
    d: usize,
    grad_norm: f64,
) {
    let clip = optim
        .grad_clip
        .map_or(1.0, |max| (max / (grad_norm + 1e-6)).min(1.0));
    let moments = moments.get_or_insert_with(|| Moments::zeros_like(params));
    for (name, g) in grads.iter_mut() {
        if clip < 1.0 {
            g.scale(clip as f32);
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
        let param = params.get_mut(name).expect("grads mirror the params");
        let m = moments.exp_avg.get_mut(name).expect("moments too");
        let v = moments.exp_avg_sq.get_mut(name).expect("moments too");
        param.adamw(g, (m, v), &hp, t);
    }
    if config.normalize_decoder {
        params.w_dec.unit_norm_rows(d);
    }
    // JumpReLU thresholds stay non-negative (as SAELens projects them), else the gate
    // would pass negative pre-activations.
    if let Some(threshold) = &mut params.threshold {
        threshold.clamp_min(0.0);
    }
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
    /// The ranks this trainer trains with (one: [`Single`]).
    collective: Rc<dyn Collective>,
}

impl<B: SaeAutodiffBackend> Trainer<B> {
    /// Fresh SAEs (seeded by `optim.seed`) at each of `points`, sized as SAE Made Easy does when
    /// `sae.num_latents` is 0.
    pub fn new(
        points: &[HookPoint],
        sae: &SaeConfig,
        optim: &OptimConfig,
        device: &B::Device,
    ) -> Result<Self> {
        let configs: Vec<SaeConfig> = points.iter().map(|p| sae.sized_for(p)).collect();
        if B::InnerBackend::HOST_GEMM {
            let matrices = points
                .iter()
                .zip(&configs)
                .map(|(p, c)| (c.num_latents, p.width));
            check_host_memory(matrices)?;
        }
        B::seed(device, optim.seed);
        let hooks = points
            .iter()
            .zip(configs)
            .map(|(point, config)| {
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
            collective: Single::shared(),
        }
    }

    /// The same trainer training data parallel with the ranks of `collective` by `strategy`:
    /// every rank takes rank 0's parameters; under ZeRO each rank keeps the optimiser state of
    /// its slice of the latents ([`crate::zero`]).
    pub fn with_collective(
        mut self,
        collective: Rc<dyn Collective>,
        strategy: Strategy,
    ) -> Result<Self> {
        let ranks = (collective.rank(), collective.ranks());
        if ranks.1 > 1 {
            let stage = match strategy {
                Strategy::Ddp => None,
                Strategy::Zero1 => Some(Stage::One),
                Strategy::Zero2 => Some(Stage::Two),
                Strategy::Zero3 => Some(Stage::Three),
            };
            for hook in &mut self.hooks {
                hook.broadcast_params(collective.as_ref())?;
                if let Some(stage) = stage {
                    let d = hook.d_in();
                    on_state!(&mut hook.residence, state => state.partition(ranks, stage, d));
                }
            }
        }
        self.collective = collective;
        Ok(self)
    }

    /// Under ZeRO-3, every SAE's whole parameters, gathered from the ranks (a collective: every
    /// rank calls it) for a checkpoint or an export; [`release_params`](Self::release_params)
    /// drops them again. A no-op otherwise.
    pub fn gather_params(&mut self) -> Result<()> {
        let collective = self.collective.as_ref();
        for hook in &mut self.hooks {
            let d = hook.d_in();
            on_state!(&mut hook.residence, state => state.gather_params(collective, d)?);
        }
        Ok(())
    }

    /// Under ZeRO-3, keeps only this rank's slice of every SAE's parameters again.
    pub fn release_params(&mut self) {
        for hook in &mut self.hooks {
            let d = hook.d_in();
            on_state!(&mut hook.residence, state => state.release_params(d));
        }
    }

    /// Every SAE's AdamW moments, whole, on the host of rank 0 (none before the first step, nor
    /// on the other ranks): what a checkpoint stores. Under ZeRO they are gathered from the
    /// ranks, so every rank calls it.
    pub fn whole_moments(&self) -> Result<Vec<Option<Moments>>> {
        let collective = self.collective.as_ref();
        (self.hooks.iter())
            .map(|hook| {
                on_state!(&hook.residence, state => state.whole_moments(collective, hook.d_in()))
            })
            .collect()
    }

    /// The ranks this trainer trains with.
    pub fn collective(&self) -> &dyn Collective {
        self.collective.as_ref()
    }

    /// Forward and backward of every SAE on one micro-batch: `acts[i]` are hook `i`'s
    /// activations, `[tokens, d_in]`, of the tokens that count.
    pub fn accumulate(&mut self, acts: Vec<Tensor<B::InnerBackend, 2>>) -> Result<()> {
        let step = self.step + 1;
        self.gather_params()?;
        if !self.initialised {
            for (hook, x) in self.hooks.iter_mut().zip(&acts) {
                hook.initialise(x, &self.optim, self.collective.as_ref())?;
            }
            self.initialised = true;
        }
        let acc = self.optim.grad_acc_steps;
        let collective = self.collective.as_ref();
        for (hook, x) in self.hooks.iter_mut().zip(acts) {
            hook.accumulate(x, acc, step, collective)?;
            let d = hook.d_in();
            on_state!(&mut hook.residence, state => state.scatter_grads(collective, d)?);
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
                hook.reduce_over_ranks(self.collective.as_ref())?;
                hook.apply(self.collective.as_ref(), &self.optim, lr, step)
            })
            .collect()
    }
}

impl<B: SaeAutodiffBackend> HookTrainer<B> {
    /// A trainer for `sae` at `path`, before its first step.
    pub fn new(path: String, sae: Sae<B>) -> Self {
        let latents = sae.num_latents();
        Self::restore(path, sae, 1.0, vec![0; latents], None)
    }

    /// A trainer restored from a checkpoint's parts. The state lives on the device on the GPU
    /// backends for the architectures with hand-derived gradients, else on the host.
    pub fn restore(
        path: String,
        sae: Sae<B>,
        scale: f32,
        tokens_since_fired: Vec<u64>,
        moments: Option<Moments>,
    ) -> Self {
        let latents = sae.num_latents();
        let on_device = sae.has_host_gradients() && B::InnerBackend::DEVICE_SELECT;
        let residence = if on_device {
            let device = sae.w_enc.device();
            let moments = moments.map(|m| m.to_device(&device));
            Residence::Device(Optimised::new(sae.valid().device_params(), moments))
        } else {
            Residence::Host(Box::new(Optimised::new(sae.host_params(), moments)))
        };
        HookTrainer {
            path,
            scale,
            tokens_since_fired,
            residence,
            sae,
            stale: false,
            did_fire: vec![false; latents],
            sums: HookMetrics::default(),
            micro_batches: 0,
        }
    }

    /// The same trainer with its state on the device (`true`) or the host; the default is
    /// chosen by [`restore`](Self::restore). Only TopK and BatchTopK train on the device.
    pub fn on_device(mut self, on_device: bool) -> Result<Self> {
        if on_device && !self.sae.has_host_gradients() {
            return Err(SaeError::InvalidConfig(format!(
                "only TopK and BatchTopK SAEs train with their state on the device, not {:?}",
                self.sae.config.architecture
            ))
            .into());
        }
        if on_state!(&self.residence, state => state.partition.is_some()) {
            return Err(TrainError::Unsupported(
                "the state of a ZeRO trainer cannot move between the host and the device".into(),
            ));
        }
        let device = self.sae.w_enc.device();
        self.residence = match (self.residence, on_device) {
            (Residence::Host(h), true) => Residence::Device(Optimised {
                params: h.params.to_device(&device),
                grads: h.grads.to_device(&device),
                moments: h.moments.map(|m| m.to_device(&device)),
                partition: None,
            }),
            (Residence::Device(t), false) => Residence::Host(Box::new(Optimised {
                params: t.params.to_host(),
                grads: t.grads.to_host(),
                moments: t.moments.map(|m| m.to_host()),
                partition: None,
            })),
            (state, _) => state,
        };
        Ok(self)
    }

    /// True when the parameters, gradients and moments live on the device.
    pub fn is_on_device(&self) -> bool {
        matches!(self.residence, Residence::Device(_))
    }

    /// The SAE being trained (in the scaled activation space when `scale != 1`).
    pub fn sae(&mut self) -> &Sae<B> {
        if self.stale {
            self.sync();
        }
        &self.sae
    }

    /// Its input width.
    pub fn d_in(&self) -> usize {
        self.sae.d_in()
    }

    /// Its configuration.
    pub fn config(&self) -> &SaeConfig {
        &self.sae.config
    }

    /// Its parameters on the host (copied from the device when they live there).
    pub fn params(&self) -> Cow<'_, HostParams> {
        match &self.residence {
            Residence::Host(h) => Cow::Borrowed(&h.params),
            Residence::Device(t) => Cow::Owned(t.params.to_host()),
        }
    }

    /// AdamW's moments on the host, once a step has been taken.
    pub fn moments(&self) -> Option<Cow<'_, Moments>> {
        match &self.residence {
            Residence::Host(h) => h.moments.as_ref().map(Cow::Borrowed),
            Residence::Device(t) => t.moments.as_ref().map(|m| Cow::Owned(m.to_host())),
        }
    }

    /// The first batch sets the scale and `b_dec`.
    fn initialise(
        &mut self,
        x: &Tensor<B::InnerBackend, 2>,
        optim: &OptimConfig,
        collective: &dyn Collective,
    ) -> Result<()> {
        let d = x.dims()[1];
        let rows = to_host(x.clone());
        if rows.iter().any(|v| !v.is_finite()) {
            return Err(self.non_finite(1, "the activations"));
        }
        let rows = gather_rows(collective, &rows, d)?;
        if rows.is_empty() {
            return Ok(());
        }
        if optim.normalize_activations {
            self.scale = init::norm_scale(&rows, d);
        }
        // Once per run: on the host, whichever side the state lives on.
        let mut params = self.params().into_owned();
        if optim.b_dec_init != BiasInit::Zeros {
            let scaled: Vec<f32> = rows.iter().map(|v| v * self.scale).collect();
            params.b_dec = init::decoder_bias(optim.b_dec_init, &scaled, d);
        }
        // sparsify normalises before every forward pass, the first one included; after this,
        // `apply` does it after every step, which is the same sequence.
        if self.sae.config.normalize_decoder {
            params.w_dec.unit_norm_rows(d);
        }
        match &mut self.residence {
            Residence::Host(h) => h.params = params,
            Residence::Device(t) => t.params = params.to_device(&x.device()),
        }
        self.stale = true;
        Ok(())
    }

    /// Renews the SAE on the backend from the optimiser's parameters (not while ZeRO-3 holds
    /// only a slice of them: see [`Trainer::gather_params`]).
    fn sync(&mut self) {
        if on_state!(&self.residence, state => state.params.w_enc.count() == 0) {
            return;
        }
        self.stale = false;
        let config = self.sae.config.clone();
        let device = self.sae.w_enc.device();
        self.sae = match &self.residence {
            Residence::Host(h) => Sae::from_host_params(config, &h.params, &device),
            Residence::Device(t) => {
                Sae::from_device_params(config, &t.params.map(|p| Tensor::from_inner(p.clone())))
            }
        }
        .expect("the trainer's parameters keep the SAE's shapes");
    }

    fn non_finite(&self, step: u64, what: &str) -> TrainError {
        TrainError::NonFinite {
            step,
            what: format!("{what} at {}", self.path),
        }
    }

    /// The error for a forward pass that stopped being finite: the SAE diverged when its input
    /// `x` was finite, else `what` (the model's activations or the loss) is named.
    fn blame(&self, x: Tensor<B::InnerBackend, 2>, step: u64, what: &str) -> TrainError {
        if to_host(x).iter().all(|v| v.is_finite()) {
            TrainError::Diverged {
                step,
                path: self.path.clone(),
            }
        } else {
            self.non_finite(step, what)
        }
    }

    /// Forward and backward on one micro-batch (this rank's part of it); gradients are summed,
    /// scaled by `1 / acc`.
    fn accumulate(
        &mut self,
        x: Tensor<B::InnerBackend, 2>,
        acc: usize,
        step: u64,
        collective: &dyn Collective,
    ) -> Result<()> {
        on_state!(&mut self.residence, state => state.ensure_grads());
        let x = if self.scale != 1.0 {
            x.mul_scalar(self.scale)
        } else {
            x
        };
        let share = batch_share(&x, collective)?;
        let n = x.dims()[0];
        if share.map_or(n, |s| s.tokens) == 0 {
            return Ok(());
        }
        // Every rank counts the micro-batch; one without rows of it adds nothing else.
        self.micro_batches += 1;
        if n == 0 {
            return Ok(());
        }
        let config = self.sae.config.clone();
        let dead: Option<Vec<bool>> = (config.aux_k_alpha > 0.0).then(|| {
            self.tokens_since_fired
                .iter()
                .map(|&t| t > config.dead_tokens_threshold)
                .collect()
        });
        let weight = 1.0 / acc as f32;
        let input = x.clone();
        // The host-gradient path reads only the host parameters when the product runs on the
        // host.
        let host_only = matches!(self.residence, Residence::Host(_))
            && self.sae.has_host_gradients()
            && B::InnerBackend::HOST_GEMM;
        if self.stale && !host_only {
            self.sync();
        }
        let micro = match &mut self.residence {
            Residence::Device(t) => self
                .sae
                .valid()
                .add_device_loss_grads(x, dead.as_deref(), weight, share.as_ref(), &mut t.grads)
                .map(MicroStep::from),
            Residence::Host(h) if self.sae.has_host_gradients() => self
                .sae
                .valid()
                .add_loss_grads(
                    &h.params,
                    x,
                    dead.as_deref(),
                    weight,
                    share.as_ref(),
                    &mut h.grads,
                )
                .map(MicroStep::from),
            Residence::Host(h) => autodiff_micro_step(
                &self.sae,
                x,
                (dead.as_deref(), share.as_ref()),
                weight,
                &mut h.grads,
            ),
        };
        let micro = match micro {
            Err(SaeError::NonFinite(_)) => return Err(self.blame(input, step, "the activations")),
            other => other?,
        };
        if !micro.loss.is_finite() {
            return Err(self.blame(input, step, "the loss"));
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
        self.sums.l0 += active as f64 / share.map_or(n, |s| s.tokens) as f64;
        self.sums.tokens += n as u64;
        Ok(())
    }

    /// Sets every rank's parameters to rank 0's.
    fn broadcast_params(&mut self, collective: &dyn Collective) -> Result<()> {
        let mut params = self.params().into_owned();
        for (_, p) in params.iter_mut() {
            collective.broadcast(bytemuck::cast_slice_mut(p), 0)?;
        }
        match &mut self.residence {
            Residence::Host(h) => h.params = params,
            Residence::Device(t) => t.params = params.to_device(&self.sae.w_enc.device()),
        }
        self.stale = true;
        Ok(())
    }

    /// Sums the step's gradients, fired latents and metric sums over the ranks: afterwards
    /// every rank holds those of the whole step.
    fn reduce_over_ranks(&mut self, collective: &dyn Collective) -> Result<()> {
        if collective.ranks() == 1 {
            return Ok(());
        }
        // Under ZeRO the optimiser step reduce-scatters the gradients instead.
        let partitioned = on_state!(&self.residence, state => state.partition.is_some());
        match &mut self.residence {
            _ if partitioned => {}
            Residence::Host(h) => {
                for (_, g) in h.grads.iter_mut() {
                    collective.all_reduce(g)?;
                }
            }
            Residence::Device(t) => {
                let mut grads = t.grads.to_host();
                for (_, g) in grads.iter_mut() {
                    collective.all_reduce(g)?;
                }
                t.grads = grads.to_device(&self.sae.w_enc.device());
            }
        }
        let mut fired: Vec<f32> = self
            .did_fire
            .iter()
            .map(|&f| f32::from(u8::from(f)))
            .collect();
        collective.all_reduce(&mut fired)?;
        self.did_fire = fired.iter().map(|&count| count > 0.0).collect();
        let s = &mut self.sums;
        let mut sums = [
            s.loss,
            s.fvu,
            s.auxk,
            s.multi_topk_fvu.unwrap_or(0.0),
            s.l0,
            s.tokens as f64,
        ];
        collective.all_reduce_f64(&mut sums)?;
        let [loss, fvu, auxk, multi_topk_fvu, l0, tokens] = sums;
        *s = HookMetrics {
            loss,
            fvu,
            auxk,
            multi_topk_fvu: s.multi_topk_fvu.map(|_| multi_topk_fvu),
            l0,
            tokens: tokens as u64,
            ..HookMetrics::default()
        };
        Ok(())
    }

    /// The optimiser step and the step's metrics.
    fn apply(
        &mut self,
        collective: &dyn Collective,
        optim: &OptimConfig,
        lr: f64,
        step: u64,
    ) -> Result<HookMetrics> {
        let config = self.sae.config.clone();
        let d = self.sae.d_in();
        let grad_norm = on_state!(
            &mut self.residence,
            state => state.step(collective, (&config, optim), lr, step, d)?
        );
        if !grad_norm.is_finite() {
            // The forward pass checked its input and loss: the weights made it blow up.
            return Err(TrainError::Diverged {
                step,
                path: self.path.clone(),
            });
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
        let (s, p) = (self.scale, self.params());
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
fn autodiff_micro_step<B: SaeAutodiffBackend>(
    sae: &Sae<B>,
    x: Tensor<B::InnerBackend, 2>,
    (dead, share): (Option<&[bool]>, Option<&BatchShare>),
    weight: f32,
    grads: &mut HostParams,
) -> Result<MicroStep, SaeError> {
    let out = sae.forward_share(Tensor::from_inner(x), dead, share)?;
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

/// The whole micro-batch that `x` (this rank's rows) is part of, when several ranks train.
fn batch_share<B: Backend>(
    x: &Tensor<B, 2>,
    collective: &dyn Collective,
) -> Result<Option<BatchShare>> {
    if collective.ranks() == 1 {
        return Ok(None);
    }
    let [n, d] = x.dims();
    let rows = to_host(x.clone());
    let mut sums = column_sums(&rows, d);
    sums.push(n as f64);
    collective.all_reduce_f64(&mut sums)?;
    let tokens = sums.pop().unwrap_or(0.0);
    let mean: Vec<f64> = sums.iter().map(|s| s / tokens.max(1.0)).collect();
    let mut total_variance = [squared_deviation(&rows, &mean)];
    collective.all_reduce_f64(&mut total_variance)?;
    Ok(Some(BatchShare {
        total_variance: total_variance[0],
        tokens: tokens as usize,
    }))
}

/// Refuses SAEs of `(latents, d_in)` whose training state cannot fit in the memory the system
/// has available (on the CPU backends it all lives on the host): at least eight `[latents, d_in]`
/// f32 matrices each (encoder and decoder, their gradients, two AdamW moments each).
fn check_host_memory(saes: impl Iterator<Item = (usize, usize)>) -> Result<()> {
    let needed = saes
        .map(|(latents, d)| latents.saturating_mul(d).saturating_mul(8 * 4) as u64)
        .fold(0u64, u64::saturating_add);
    let available = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|info| {
            let line = info.lines().find(|l| l.starts_with("MemAvailable:"))?;
            let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
            Some(kib * 1024)
        });
    match available {
        Some(available) if needed > available => Err(TrainError::Invalid(format!(
            "the SAEs' training state needs at least {:.1} GiB, but {:.1} GiB of memory are available; use fewer latents",
            needed as f64 / f64::from(1u32 << 30),
            available as f64 / f64::from(1u32 << 30)
        ))),
        _ => Ok(()),
    }
}
