//! Errors of the interpretation tools.

use sae_core::SaeError;

/// What can go wrong while interpreting or steering latents.
#[derive(Debug, thiserror::Error)]
pub enum InterpError {
    /// A `LATENT=VALUE` pair that does not parse.
    #[error("{0:?} is not LATENT=VALUE (a latent index and a finite number, e.g. 123=8.5)")]
    BadLatentValue(String),
    /// Which SAE to steer is ambiguous or names no SAE of the checkpoint.
    #[error("{0}")]
    NoSteeredSae(String),
    /// An SAE operation failed.
    #[error(transparent)]
    Sae(#[from] SaeError),
}

/// `Result` with [`InterpError`].
pub type Result<T, E = InterpError> = std::result::Result<T, E>;
