//! The crate's error type: one clear sentence, with the underlying cause as its source.

use std::path::{Path, PathBuf};

/// What can stop a training or evaluation run.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    /// A configuration that does not parse, has an unknown key or an impossible value.
    #[error("bad training configuration in {origin}: {message}")]
    Config { origin: String, message: String },
    /// A file or folder could not be read or written.
    #[error("cannot access {path}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The model could not be loaded or run.
    #[error(transparent)]
    Model(#[from] sae_models::ModelError),
    /// The data could not be read.
    #[error(transparent)]
    Data(#[from] sae_data::DataError),
    /// The frozen model could not be run over the data.
    #[error(transparent)]
    Activations(#[from] sae_activations::ActivationsError),
    /// An SAE could not be built, run, saved or loaded.
    #[error(transparent)]
    Sae(#[from] sae_core::SaeError),
    /// Activations or the loss stopped being finite numbers.
    #[error(
        "step {step}: {what} is not finite (NaN or infinite); the run stopped and the last checkpoint is intact"
    )]
    NonFinite { step: u64, what: String },
    /// The SAE's weights stopped being finite numbers while its input was finite.
    #[error(
        "step {step}: the SAE at {path} diverged (its weights are no longer finite numbers): lower train.lr; the run stopped and the last checkpoint is intact"
    )]
    Diverged { step: u64, path: String },
    /// A checkpoint or run folder that is incomplete or from another run.
    #[error("{path}: {message}")]
    BadCheckpoint { path: PathBuf, message: String },
    /// The dataset ended before the first step.
    #[error("{0} gives no batch: it has fewer tokens than one batch needs")]
    NoData(PathBuf),
    /// Settings that cannot work with this model or data (a context longer than the model's).
    #[error("{0}")]
    Invalid(String),
    /// Something this build cannot do.
    #[error("{0}")]
    Unsupported(String),
}

/// The crate's result type.
pub type Result<T, E = TrainError> = std::result::Result<T, E>;

/// Maps an I/O error to [`TrainError::Io`] for `path`.
pub fn io(path: &Path) -> impl FnOnce(std::io::Error) -> TrainError + '_ {
    move |source| TrainError::Io {
        path: path.to_path_buf(),
        source,
    }
}
