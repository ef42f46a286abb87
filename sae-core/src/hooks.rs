//! The hook API: a model names its hook points (HF in-memory module paths) and calls
//! [`Hooks::call`] at each, so an SAE (or anything else) can read or replace what flows on.

use burn::tensor::Tensor;
use burn::tensor::backend::Backend;
use serde::{Deserialize, Serialize};

use crate::error::SaeError;

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

/// The hook point an SAE of `d_in` inputs saved under `path` attaches to: the point of that
/// path, or the one point whose path ends in `.{path}` (sparsify names hook points relative to
/// the base model, `layers.1.mlp.down_proj` for `model.layers.1.mlp.down_proj`). An error when
/// none or several do, or when its width is not `d_in`.
pub fn hook_point_for<'a>(
    points: &'a [HookPoint],
    path: &str,
    d_in: usize,
) -> crate::Result<&'a HookPoint> {
    let point = named_point(points, path)?;
    if point.width != d_in {
        return Err(SaeError::InvalidConfig(format!(
            "the SAE for {path} has d_in {d_in}, but the model's {} has width {}",
            point.path, point.width
        )));
    }
    Ok(point)
}

/// The point of `path`, or the one point `path` is a `.`-separated suffix of.
fn named_point<'a>(points: &'a [HookPoint], path: &str) -> crate::Result<&'a HookPoint> {
    if let Some(point) = points.iter().find(|p| p.path == path) {
        return Ok(point);
    }
    let suffix = format!(".{path}");
    let matches: Vec<&HookPoint> = points
        .iter()
        .filter(|p| p.path.ends_with(&suffix))
        .collect();
    match matches.as_slice() {
        [point] => Ok(point),
        [] => Err(SaeError::NoTargetMatched {
            targets: format!("{path:?}"),
            available: points
                .iter()
                .map(|p| p.path.as_str())
                .collect::<Vec<_>>()
                .join(", "),
        }),
        several => {
            let paths: Vec<&str> = several.iter().map(|p| p.path.as_str()).collect();
            Err(SaeError::InvalidConfig(format!(
                "the SAE saved for {path:?} could attach to any of {}; save it under the full path",
                paths.join(", ")
            )))
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
/// stops where `second` says it may (`first` must not need anything later).
pub struct Chain<'a, B: Backend>(pub &'a mut dyn Hooks<B>, pub &'a mut dyn Hooks<B>);

impl<B: Backend> Hooks<B> for Chain<'_, B> {
    fn call(&mut self, path: &str, x: Tensor<B, 3>) -> Tensor<B, 3> {
        let x = self.0.call(path, x);
        self.1.call(path, x)
    }

    fn stop_after(&self) -> Option<&str> {
        self.1.stop_after()
    }
}

/// Records hook outputs and passes them on unchanged: those of chosen paths (what training,
/// evaluation and caching read, optionally ending the pass after the deepest), or of every
/// path one of a set of full-match regexes matches (`sae activations --hooks`).
pub struct Recorder<B: Backend> {
    wanted: Wanted,
    stop: Option<String>,
    /// `(path, output)` in the order the forward pass reached them.
    pub records: Vec<(String, Tensor<B, 3>)>,
}

/// Which paths a [`Recorder`] keeps.
enum Wanted {
    Paths(Vec<String>),
    Patterns(Vec<regex::Regex>),
}

impl<B: Backend> Recorder<B> {
    /// A recorder of the paths these regexes match in full; an error names a pattern that does
    /// not compile.
    pub fn new(patterns: &[String]) -> crate::Result<Self> {
        let patterns = (patterns.iter())
            .map(|p| crate::targets::full_match(p))
            .collect::<crate::Result<_>>()?;
        Ok(Self::of(Wanted::Patterns(patterns), None))
    }

    /// A recorder of `paths` (given in the model's hook order); `stop_early` ends the pass
    /// after the last of them.
    pub fn paths(paths: &[String], stop_early: bool) -> Self {
        let stop = stop_early.then(|| paths.last().cloned()).flatten();
        Self::of(Wanted::Paths(paths.to_vec()), stop)
    }

    /// True when this recorder keeps the output of `path`.
    pub fn wants(&self, path: &str) -> bool {
        match &self.wanted {
            Wanted::Paths(paths) => paths.iter().any(|p| p == path),
            Wanted::Patterns(patterns) => patterns.iter().any(|p| p.is_match(path)),
        }
    }

    fn of(wanted: Wanted, stop: Option<String>) -> Self {
        Recorder {
            wanted,
            stop,
            records: Vec::new(),
        }
    }

    /// The last output recorded at each of `paths`, in their order (`None` where the pass
    /// never reached one).
    pub fn outputs(self, paths: &[String]) -> Vec<Option<Tensor<B, 3>>> {
        let mut outputs = vec![None; paths.len()];
        for (path, x) in self.records {
            if let Some(i) = paths.iter().position(|p| *p == path) {
                outputs[i] = Some(x);
            }
        }
        outputs
    }
}

impl<B: Backend> Hooks<B> for Recorder<B> {
    fn call(&mut self, path: &str, x: Tensor<B, 3>) -> Tensor<B, 3> {
        if self.wants(path) {
            self.records.push((path.to_string(), x.clone()));
        }
        x
    }

    fn stop_after(&self) -> Option<&str> {
        self.stop.as_deref()
    }
}

/// The first error a [`Hooks`] implementation met. `call` cannot return an error, so hooks
/// keep the first one here, pass their input on unchanged from then on, and return it when the
/// pass is done ([`finish`](Self::finish)).
#[derive(Debug)]
pub struct FirstError<E>(Option<E>);

impl<E> Default for FirstError<E> {
    fn default() -> Self {
        FirstError(None)
    }
}

impl<E> FirstError<E> {
    /// True once an error was met.
    pub fn failed(&self) -> bool {
        self.0.is_some()
    }

    /// What `result` holds, or `input` (passed on unchanged) when it is the first error, kept.
    pub fn keep<B: Backend>(
        &mut self,
        result: Result<Tensor<B, 3>, E>,
        input: Tensor<B, 3>,
    ) -> Tensor<B, 3> {
        match result {
            Ok(y) => y,
            Err(e) => {
                self.0.get_or_insert(e);
                input
            }
        }
    }

    /// `value`, or the error met.
    pub fn finish<T>(self, value: T) -> Result<T, E> {
        match self.0 {
            Some(e) => Err(e),
            None => Ok(value),
        }
    }
}
