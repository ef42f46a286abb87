//! One module per subcommand: argument parsing and wiring to the libraries.

pub mod activations;
pub mod convert;
pub mod encode;
pub mod eval;
pub mod generate;
pub mod inspect;
mod model_args;
pub mod preprocess;
pub mod train;

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{Context, Result};
use sae_core::{Checkpoint, HookedModule, Hooks, NoHooks, SaeModel};

use crate::backend::{self, Backend};

/// Loads the SAE checkpoint in `dir` (any layout) with a contextual error.
pub fn load_checkpoint(dir: &Path) -> Result<Checkpoint> {
    sae_core::formats::load(dir)
        .with_context(|| format!("cannot load the SAE checkpoint in {}", dir.display()))
}

/// Runs `f` on `model` with the hooks of the SAE in `sae` injected (eval mode: reconstructions
/// replace the module outputs), or with no hooks; an SAE that failed on the way is an error.
pub fn with_sae<M: HookedModule<Backend>, T>(
    model: M,
    sae: Option<&Path>,
    f: impl FnOnce(&M, &mut dyn Hooks<Backend>) -> Result<T>,
) -> Result<T> {
    let Some(dir) = sae else {
        return f(&model, &mut NoHooks);
    };
    let sae_model = SaeModel::from_pretrained(model, dir, &backend::device()?)
        .with_context(|| format!("cannot inject the SAE in {}", dir.display()))?;
    let empty = BTreeMap::new();
    let mut hooks = sae_model.hooks(&empty);
    let out = f(sae_model.model(), &mut hooks)?;
    hooks.finish().context("the SAE failed")?;
    Ok(out)
}

/// Whether `a` and `b` name the same existing file (through links and relative paths).
pub fn same_file(a: &Path, b: &Path) -> bool {
    match (std::fs::canonicalize(a), std::fs::canonicalize(b)) {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    }
}
