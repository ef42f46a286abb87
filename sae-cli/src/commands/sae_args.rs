//! `--sae` and the steering flags, shared by the commands that run a model.

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::{Context, Result};
use sae_core::{HookedModule, Hooks, NoHooks, SaeModel};
use sae_interp::{LatentValue, Steering, SteeringHooks, steered_sae};

use crate::backend::{self, Backend};

/// An SAE to inject, optionally steering the model through one of its latents (the default:
/// none).
#[derive(clap::Args, Default)]
pub struct SaeArgs {
    /// Inject this SAE checkpoint (eval mode: reconstructions replace the module outputs).
    #[arg(long, value_name = "DIR")]
    pub sae: Option<PathBuf>,
    /// Steer: set this latent's pre-activation to VALUE at every token, before the SAE selects
    /// its latents (Multimodal-SAE's clamping). Repeatable.
    #[arg(long, value_name = "LATENT=VALUE", requires = "sae")]
    pub clamp: Vec<LatentValue>,
    /// Steer: add COEF times this latent's decoder direction at every token. Repeatable.
    #[arg(long, value_name = "LATENT=COEF", requires = "sae")]
    pub add: Vec<LatentValue>,
    /// Keep the SAE's reconstruction error: the hook point's output becomes its input plus the
    /// steering's change, instead of the steered reconstruction.
    #[arg(long, requires = "sae")]
    pub keep_error: bool,
    /// Steer the prompt's forward pass only, as Multimodal-SAE does; generated tokens see the
    /// SAE unsteered.
    #[arg(long, requires = "sae")]
    pub steer_prompt_only: bool,
    /// The hook point to steer, when the checkpoint has SAEs at several (a full path or a
    /// `.`-separated suffix). The other SAEs are not injected while steering.
    #[arg(long, value_name = "PATH", requires = "sae")]
    pub steer_hook: Option<String>,
}

impl SaeArgs {
    /// Warns when the SAE checkpoint records another model than `model` as the one it was
    /// trained on.
    pub fn warn_if_other_model(&self, model: &str) {
        if let Some(dir) = &self.sae {
            super::warn_if_other_model(dir, model);
        }
    }

    /// The steering the flags ask for; `None` when they ask for none.
    fn steering(&self) -> Option<Steering> {
        let steering = Steering {
            clamps: self.clamp.clone(),
            adds: self.add.clone(),
            keep_error: self.keep_error,
            prompt_only: self.steer_prompt_only,
        };
        let asked = !steering.is_empty() || steering.keep_error || self.steer_hook.is_some();
        asked.then_some(steering)
    }

    /// Runs `f` on `model` with the hooks these flags ask for: none, the checkpoint's SAEs
    /// injected (eval mode) or its SAE at one hook point steering the model. An SAE that
    /// failed on the way is an error.
    pub fn run<M: HookedModule<Backend>, T>(
        &self,
        model: M,
        f: impl FnOnce(&M, &mut dyn Hooks<Backend>) -> Result<T>,
    ) -> Result<T> {
        let Some(dir) = &self.sae else {
            return f(&model, &mut NoHooks);
        };
        let sae_model = SaeModel::from_pretrained(model, dir, &backend::device()?)
            .with_context(|| format!("cannot inject the SAE in {}", dir.display()))?;
        let Some(steering) = self.steering() else {
            let empty = BTreeMap::new();
            let mut hooks = sae_model.hooks(&empty);
            let out = f(sae_model.model(), &mut hooks)?;
            hooks.finish().context("the SAE failed")?;
            return Ok(out);
        };
        let (path, sae) = steered_sae(&sae_model, self.steer_hook.as_deref())
            .with_context(|| format!("cannot steer with the SAEs in {}", dir.display()))?;
        let mut hooks = SteeringHooks::new(path, sae, steering)
            .with_context(|| format!("cannot steer with the SAE at {path}"))?;
        let out = f(sae_model.model(), &mut hooks)?;
        hooks.finish().context("the steering SAE failed")?;
        Ok(out)
    }
}
