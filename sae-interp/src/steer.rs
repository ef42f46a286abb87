//! Steering a model through one SAE at one hook point: clamp latents (their pre-activations are
//! set before selection, as Multimodal-SAE's `clamp_features_max` does) and add latents'
//! decoder directions (`coefficient * W_dec[latent]`, SAELens' steering vectors).
//!
//! The hook point's output becomes the steered reconstruction
//! `x_steer = decode(select(pre with clamps)) + sum_j c_j W_dec[j]`, or with `keep_error`
//! `x + (x_steer - x_hat)`: the SAE's reconstruction error is kept and only the steering's
//! change is applied (the output is exactly `x` when the steering changes nothing).

use std::str::FromStr;

use burn::tensor::backend::Backend;
use burn::tensor::{ElementConversion, Int, Tensor, TensorData};
use sae_core::{
    FirstError, HookedModule, Hooks, Sae, SaeBackend, SaeError, SaeModel, SparseLatents,
};

use crate::error::{InterpError, Result};

/// A latent and a number: a clamp value or a steering coefficient (`LATENT=VALUE`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LatentValue {
    /// The latent's index in the SAE's dictionary.
    pub latent: usize,
    /// The value it is clamped to, or its direction's coefficient.
    pub value: f32,
}

impl FromStr for LatentValue {
    type Err = InterpError;

    fn from_str(s: &str) -> Result<Self> {
        let bad = || InterpError::BadLatentValue(s.to_string());
        let (latent, value) = s.split_once('=').ok_or_else(bad)?;
        let latent = latent.trim().parse().map_err(|_| bad())?;
        let value: f32 = value.trim().parse().map_err(|_| bad())?;
        if !value.is_finite() {
            return Err(bad());
        }
        Ok(LatentValue { latent, value })
    }
}

/// How to steer.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Steering {
    /// Latents whose pre-activation is set to a value at every token, before selection.
    pub clamps: Vec<LatentValue>,
    /// Latents whose decoder direction is added at every token, times a coefficient.
    pub adds: Vec<LatentValue>,
    /// Keep the SAE's reconstruction error: output `x + (x_steer - x_hat)` instead of `x_steer`.
    pub keep_error: bool,
    /// Steer the first forward pass only (the prompt, as Multimodal-SAE does); later passes
    /// (generated tokens) get the SAE unsteered.
    pub prompt_only: bool,
}

impl Steering {
    /// Whether it changes anything.
    pub fn is_empty(&self) -> bool {
        self.clamps.is_empty() && self.adds.is_empty()
    }
}

/// The SAE to steer among an [`SaeModel`]'s active adapters: the one at `hook` (its full path
/// or a `.`-separated suffix of it), or the only one when `hook` is `None`.
pub fn steered_sae<'a, B: SaeBackend, M: HookedModule<B>>(
    model: &'a SaeModel<B, M>,
    hook: Option<&str>,
) -> Result<(&'a str, &'a Sae<B>)> {
    let active = model.active_adapters();
    let saes: Vec<(&str, &Sae<B>)> = (model.adapters().iter())
        .filter(|(name, _)| active.contains(name))
        .flat_map(|(_, adapter)| adapter.saes.iter().map(|(p, s)| (p.as_str(), s)))
        .collect();
    let paths = || {
        let paths: Vec<&str> = saes.iter().map(|(p, _)| *p).collect();
        paths.join(", ")
    };
    let chosen: Vec<_> = match hook {
        None => saes.clone(),
        Some(hook) => (saes.iter().copied())
            .filter(|(p, _)| *p == hook || p.ends_with(&format!(".{hook}")))
            .collect(),
    };
    match (chosen.as_slice(), hook) {
        ([one], _) => Ok(*one),
        ([], Some(hook)) => Err(InterpError::NoSteeredSae(format!(
            "the checkpoint has no SAE at {hook:?}; it has SAEs at {}",
            paths()
        ))),
        (_, None) => Err(InterpError::NoSteeredSae(format!(
            "the checkpoint has SAEs at {}: name the one to steer",
            paths()
        ))),
        (_, Some(hook)) => Err(InterpError::NoSteeredSae(format!(
            "{hook:?} names several SAEs of the checkpoint ({}): give the full path",
            paths()
        ))),
    }
}

/// Hooks that steer the output of one hook point through an SAE and pass every other one on.
pub struct SteeringHooks<'a, B: Backend> {
    path: &'a str,
    sae: &'a Sae<B>,
    steering: Steering,
    clamps: Vec<(usize, f32)>,
    /// `sum_j c_j W_dec[j]` over the added latents, `[d_in]`.
    direction: Option<Tensor<B, 1>>,
    passes: usize,
    error: FirstError<SaeError>,
}

impl<'a, B: SaeBackend> SteeringHooks<'a, B> {
    /// Steering of `sae`'s hook point `path`; an error names a latent beyond its dictionary.
    pub fn new(path: &'a str, sae: &'a Sae<B>, steering: Steering) -> Result<Self> {
        let num_latents = sae.num_latents();
        let all = steering.clamps.iter().chain(&steering.adds);
        if let Some(bad) = all.clone().find(|lv| lv.latent >= num_latents) {
            let latent = bad.latent;
            return Err(SaeError::NoSuchLatent {
                latent,
                num_latents,
            }
            .into());
        }
        if all.clone().any(|lv| !lv.value.is_finite()) {
            return Err(SaeError::NonFinite("a steering value".into()).into());
        }
        let clamps = steering
            .clamps
            .iter()
            .map(|c| (c.latent, c.value))
            .collect();
        let direction = (!steering.adds.is_empty()).then(|| {
            let w_dec = sae.w_dec.val();
            let device = w_dec.device();
            let n = steering.adds.len();
            let latents: Vec<i64> = steering.adds.iter().map(|a| a.latent as i64).collect();
            let coefs: Vec<f32> = steering.adds.iter().map(|a| a.value).collect();
            let latents = Tensor::<B, 1, Int>::from_data(TensorData::new(latents, [n]), &device);
            let coefs = Tensor::<B, 2>::from_data(TensorData::new(coefs, [n, 1]), &device);
            let rows = w_dec.select(0, latents);
            (rows * coefs).sum_dim(0).reshape([sae.d_in()])
        });
        Ok(SteeringHooks {
            path,
            sae,
            steering,
            clamps,
            direction,
            passes: 0,
            error: FirstError::default(),
        })
    }

    /// Done: the first error the SAE met, if any.
    pub fn finish(self) -> Result<()> {
        Ok(self.error.finish(())?)
    }

    /// The SAE's latents of `x`, with the clamps when `clamped`. Both the steered and the plain
    /// pass go through the same encoder path, so an unchanged latent decodes identically.
    fn encode(&self, x: Tensor<B, 2>, clamped: bool) -> Result<SparseLatents<B>, SaeError> {
        if self.clamps.is_empty() {
            return self.sae.encode(x);
        }
        let clamps = if clamped { &self.clamps[..] } else { &[] };
        self.sae.encode_with_overrides(x, clamps)
    }

    fn steer(&mut self, x: Tensor<B, 3>) -> Result<Tensor<B, 3>, SaeError> {
        self.passes += 1;
        let steer_now = !self.steering.prompt_only || self.passes == 1;
        let keep_error = self.steering.keep_error;
        if !steer_now && keep_error {
            return Ok(x);
        }
        let [b, t, d] = x.dims();
        // The SAE keeps its own dtype; a model computing in f16/bf16 is cast there and back.
        let model_dtype = x.dtype();
        let flat = x.reshape([b * t, d]).cast(self.sae.w_enc.val().dtype());
        let reconstruct = |clamped: bool| -> Result<Tensor<B, 2>, SaeError> {
            Ok(self.sae.decode(&self.encode(flat.clone(), clamped)?))
        };
        let out = if steer_now {
            let mut steered = reconstruct(true)?;
            if let Some(direction) = &self.direction {
                steered = steered + direction.clone().unsqueeze_dim(0);
            }
            if keep_error {
                flat.clone() + (steered - reconstruct(false)?)
            } else {
                steered
            }
        } else {
            reconstruct(false)?
        };
        // A clamp or coefficient too large for f32 overflows here: an error, not garbage text.
        let out = out.reshape([b, t, d]).cast(model_dtype);
        let finite = out.clone().is_finite().all().into_scalar();
        if !finite.elem::<bool>() {
            return Err(SaeError::NonFinite("the steered output".into()));
        }
        Ok(out)
    }
}

impl<B: SaeBackend> Hooks<B> for SteeringHooks<'_, B> {
    fn call(&mut self, path: &str, x: Tensor<B, 3>) -> Tensor<B, 3> {
        if path != self.path || self.error.failed() {
            return x;
        }
        let result = self.steer(x.clone());
        self.error.keep(result, x)
    }
}
