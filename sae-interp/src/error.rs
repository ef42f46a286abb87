//! Errors of the interpretation tools.

use std::path::PathBuf;

use sae_activations::ActivationsError;
use sae_core::SaeError;
use sae_data::DataError;
use sae_models::ModelError;

/// What can go wrong while interpreting or steering latents.
#[derive(Debug, thiserror::Error)]
pub enum InterpError {
    /// A `LATENT=VALUE` pair that does not parse.
    #[error("{0:?} is not LATENT=VALUE (a latent index and a finite number, e.g. 123=8.5)")]
    BadLatentValue(String),
    /// Which SAE to steer is ambiguous or names no SAE of the checkpoint.
    #[error("{0}")]
    NoSteeredSae(String),
    /// Options that cannot work.
    #[error("{0}")]
    Invalid(String),
    /// Something this version does not do.
    #[error("{0}")]
    Unsupported(String),
    /// An output folder that already holds files.
    #[error("{0} already exists and is not empty: choose a new folder, nothing was written")]
    OutputExists(PathBuf),
    /// A dataset that gave no sequence.
    #[error(
        "{0} gave no sequence to cache: its text is shorter than one context (--context), or no row is usable"
    )]
    NoData(PathBuf),
    /// A folder without a complete cache.
    #[error("{0} holds no latent cache (no cache.json): make one with `sae cache`")]
    NotACache(PathBuf),
    /// A cache file whose contents contradict each other.
    #[error("corrupt cache: {0}")]
    Corrupt(String),
    /// The explainer model's API failed or answered something unusable.
    #[error("the chat API at {url} failed: {reason}")]
    Api { url: String, reason: String },
    /// Every latent to score failed: there is no score to report.
    #[error("none of the {latents} explained latents could be scored ({first}); each one's error is in {}", file.display())]
    NothingScored {
        latents: usize,
        first: String,
        file: PathBuf,
    },
    /// Running the model over the data (batching, activations) failed.
    #[error(transparent)]
    Activations(#[from] ActivationsError),
    /// The dataset failed.
    #[error(transparent)]
    Data(#[from] DataError),
    /// The model failed.
    #[error(transparent)]
    Model(#[from] ModelError),
    /// An SAE operation failed.
    #[error(transparent)]
    Sae(#[from] SaeError),
}

/// `Result` with [`InterpError`].
pub type Result<T, E = InterpError> = std::result::Result<T, E>;
