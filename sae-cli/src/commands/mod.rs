//! One module per subcommand: argument parsing and wiring to the libraries.

pub mod activations;
mod api_args;
pub mod cache;
pub mod convert;
pub mod dashboard;
pub mod encode;
pub mod eval;
pub mod explain;
pub mod generate;
pub mod inspect;
mod model_args;
pub mod preprocess;
mod read_args;
mod sae_args;
pub mod score;
pub mod train;

use std::path::Path;

use anyhow::{Context, Result};
use sae_core::Checkpoint;

/// Loads the SAE checkpoint in `dir` (any layout) with a contextual error.
pub fn load_checkpoint(dir: &Path) -> Result<Checkpoint> {
    sae_core::formats::load(dir)
        .with_context(|| format!("cannot load the SAE checkpoint in {}", dir.display()))
}

/// Warns when the SAE checkpoint in `sae` records another model than `model` as the one it
/// was trained on.
pub fn warn_if_other_model(sae: &Path, model: &str) {
    if let Some(warning) = sae_core::formats::trained_on_other_model(sae, model) {
        tracing::warn!("{warning}");
    }
}

/// Whether `a` and `b` name the same existing file (through links and relative paths).
pub fn same_file(a: &Path, b: &Path) -> bool {
    match (std::fs::canonicalize(a), std::fs::canonicalize(b)) {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    }
}
