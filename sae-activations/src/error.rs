//! The crate's error type: one clear sentence, with the underlying cause as its source.

/// What can stop running a model over a dataset.
#[derive(Debug, thiserror::Error)]
pub enum ActivationsError {
    /// Settings that cannot work with this model or data (a context longer than the model's).
    #[error("{0}")]
    Invalid(String),
    /// The model could not be run.
    #[error(transparent)]
    Model(#[from] sae_models::ModelError),
    /// The data could not be read.
    #[error(transparent)]
    Data(#[from] sae_data::DataError),
}

/// The crate's result type.
pub type Result<T, E = ActivationsError> = std::result::Result<T, E>;
