//! The hook API: a model names its hook points (HF in-memory module paths) and calls
//! [`Hooks::call`] at each, so an SAE (or anything else) can read or replace what flows on.

use burn::tensor::Tensor;
use burn::tensor::backend::Backend;
use serde::{Deserialize, Serialize};

/// What kind of activation a hook point carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HookKind {
    /// A decoder layer's output (the residual stream).
    Residual,
    /// An MLP or one of its projections.
    Mlp,
    /// Attention or one of its projections.
    Attention,
    /// Anything in a vision tower or projector.
    Vision,
    /// Everything else (norms, heads, a user's own modules).
    Other,
}

/// A named place in a model's forward pass whose output can be hooked.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HookPoint {
    /// The module path, as HF names it in memory (`model.layers.3.mlp.down_proj`).
    pub path: String,
    /// Width of the module's output (the last dimension), i.e. an SAE's `d_in`.
    pub width: usize,
    /// Input width for linear modules; SAE Made Easy sizes `num_latents = 0` SAEs from it.
    pub in_features: Option<usize>,
    /// What the activation is.
    pub kind: HookKind,
}

impl HookPoint {
    /// A hook point on a module that is not a linear layer.
    pub fn new(path: impl Into<String>, width: usize, kind: HookKind) -> Self {
        HookPoint {
            path: path.into(),
            width,
            in_features: None,
            kind,
        }
    }

    /// A hook point on a linear layer `in_features -> width`.
    pub fn linear(
        path: impl Into<String>,
        in_features: usize,
        width: usize,
        kind: HookKind,
    ) -> Self {
        HookPoint {
            in_features: Some(in_features),
            ..Self::new(path, width, kind)
        }
    }
}

/// Receives module outputs during a hooked forward pass.
pub trait Hooks<B: Backend> {
    /// Output `x` (`[batch, tokens, width]`) of the module at `path`; returns what flows on
    /// (the same tensor, a reconstruction, or a steered tensor).
    fn call(&mut self, path: &str, x: Tensor<B, 3>) -> Tensor<B, 3>;

    /// The forward pass may stop after this module: nothing later is needed.
    fn stop_after(&self) -> Option<&str> {
        None
    }
}

/// Hooks that do nothing: the plain forward pass.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoHooks;

impl<B: Backend> Hooks<B> for NoHooks {
    fn call(&mut self, _path: &str, x: Tensor<B, 3>) -> Tensor<B, 3> {
        x
    }
}

/// A model (or any Burn module) with named hook points.
pub trait HookedModule<B: Backend> {
    /// What the forward pass takes.
    type Input;
    /// What the forward pass returns.
    type Output;

    /// Every hook point, in the order the forward pass reaches them.
    fn hook_points(&self) -> Vec<HookPoint>;

    /// The forward pass, calling `hooks.call(path, output)` at each hook point.
    fn forward_hooked(&self, input: Self::Input, hooks: &mut dyn Hooks<B>) -> Self::Output;

    /// The forward pass without hooks.
    fn forward_plain(&self, input: Self::Input) -> Self::Output {
        self.forward_hooked(input, &mut NoHooks)
    }
}

/// A borrowed model is hooked as the model (an SAE can wrap a model that something else keeps).
impl<B: Backend, M: HookedModule<B>> HookedModule<B> for &M {
    type Input = M::Input;
    type Output = M::Output;

    fn hook_points(&self) -> Vec<HookPoint> {
        (**self).hook_points()
    }

    fn forward_hooked(&self, input: Self::Input, hooks: &mut dyn Hooks<B>) -> Self::Output {
        (**self).forward_hooked(input, hooks)
    }
}

/// Runs `first`, then `second` on what `first` returns (e.g. SAEs, then a recorder). The pass
/// never stops early.
pub struct Chain<'a, B: Backend>(pub &'a mut dyn Hooks<B>, pub &'a mut dyn Hooks<B>);

impl<B: Backend> Hooks<B> for Chain<'_, B> {
    fn call(&mut self, path: &str, x: Tensor<B, 3>) -> Tensor<B, 3> {
        let x = self.0.call(path, x);
        self.1.call(path, x)
    }
}

/// Records the output of every hook point whose path one of the patterns matches (full-match
/// regexes, as `sae activations --hooks`), passing it on unchanged.
pub struct Recorder<B: Backend> {
    patterns: Vec<crate::targets::TargetModules>,
    /// `(path, output)` in the order the forward pass reached them.
    pub records: Vec<(String, Tensor<B, 3>)>,
}

impl<B: Backend> Recorder<B> {
    /// A recorder for these regexes; an error names a pattern that does not compile.
    pub fn new(patterns: &[String]) -> crate::Result<Self> {
        let patterns: Vec<_> = patterns
            .iter()
            .map(|p| crate::targets::TargetModules::Regex(p.clone()))
            .collect();
        for p in &patterns {
            p.matches("")?;
        }
        Ok(Recorder {
            patterns,
            records: Vec::new(),
        })
    }
}

impl<B: Backend> Hooks<B> for Recorder<B> {
    fn call(&mut self, path: &str, x: Tensor<B, 3>) -> Tensor<B, 3> {
        if self
            .patterns
            .iter()
            .any(|p| p.matches(path).unwrap_or(false))
        {
            self.records.push((path.to_string(), x.clone()));
        }
        x
    }
}
