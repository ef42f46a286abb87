//! The error type of `sae-core`: one variant per kind of bad input, each a readable sentence.

use std::path::PathBuf;

/// Everything that can go wrong when building, running, loading or saving an SAE.
#[derive(Debug, thiserror::Error)]
pub enum SaeError {
    /// The SAE configuration is inconsistent (e.g. `k` larger than the number of latents).
    #[error("invalid SAE configuration: {0}")]
    InvalidConfig(String),
    /// Activations that are not a float matrix of tokens (a wrong rank, no tokens, integers).
    #[error("invalid activations: {0}")]
    InvalidActivations(String),
    /// Activations whose last dimension differs from the SAE's input width.
    #[error("activation width {got} does not match the SAE's d_in {expected}")]
    WidthMismatch { expected: usize, got: usize },
    /// A latent index beyond the SAE's dictionary.
    #[error("latent {latent} does not exist: the SAE has {num_latents} latents")]
    NoSuchLatent { latent: usize, num_latents: usize },
    /// The input (or something computed from it) holds NaN or infinity.
    #[error("{0} contains NaN or infinite values")]
    NonFinite(String),
    /// A kernel of the backend disagrees with its reference
    /// ([`check_kernels`](crate::kernels::check_kernels)).
    #[error(
        "the {0} kernel disagrees with its reference on this device: the SAE kernels do not run correctly on this GPU or driver"
    )]
    KernelMismatch(&'static str),
    /// `target_modules` matched no hook point of the model.
    #[error("target_modules {targets} matched no hook point; available hook points: {available}")]
    NoTargetMatched { targets: String, available: String },
    /// A `target_modules` string is not a valid regular expression.
    #[error("target_modules regex {pattern:?} is invalid")]
    BadTargetRegex {
        pattern: String,
        #[source]
        source: regex::Error,
    },
    /// A named adapter does not exist.
    #[error("no adapter named {0:?}")]
    UnknownAdapter(String),
    /// A checkpoint lacks a tensor its layout requires.
    #[error("checkpoint {file} has no tensor {name:?}")]
    MissingTensor { file: PathBuf, name: String },
    /// A checkpoint tensor's shape disagrees with the configuration.
    #[error("tensor {name:?} in {file} has shape {got:?}, but the config implies {expected:?}")]
    ShapeMismatch {
        file: PathBuf,
        name: String,
        expected: Vec<usize>,
        got: Vec<usize>,
    },
    /// A checkpoint tensor has a dtype we cannot read.
    #[error("tensor {name:?} in {file} has dtype {dtype}, expected F32, F16 or BF16{}", computed.as_ref().map(|d| format!(" (to compute in {d})")).unwrap_or_default())]
    UnsupportedDtype {
        file: PathBuf,
        name: String,
        dtype: String,
        /// The dtype it was to be computed in, when it was read as a model weight.
        computed: Option<String>,
    },
    /// `adapter_config.json` names a PEFT type other than `TOPK_SAE`.
    #[error("{file}: peft_type {found:?} is not supported (only \"TOPK_SAE\")")]
    UnknownPeftType { file: PathBuf, found: String },
    /// A folder that holds no SAE checkpoint itself, but a PEFT adapter one level down (a
    /// training run's `sae/`, a checkpoint's `adapter/`).
    #[error("{dir} holds no SAE checkpoint itself, but {inner} does: pass that folder")]
    NestedCheckpoint { dir: PathBuf, inner: PathBuf },
    /// A folder that holds no SAE checkpoint in any known layout.
    #[error(
        "{0} holds no SAE checkpoint: expected adapter_config.json (PEFT), cfg.json + sae.safetensors (sparsify) or cfg.json + sae_weights.safetensors (SAELens), directly or one level down"
    )]
    UnknownLayout(PathBuf),
    /// The SAE cannot be written in the requested layout.
    #[error("cannot save as {layout}: {reason}")]
    CannotSave { layout: String, reason: String },
    /// A config file that is not valid JSON, or lacks a required key.
    #[error("cannot parse {file}")]
    BadJson {
        file: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    /// A safetensors file that is truncated or otherwise corrupt.
    #[error("cannot read safetensors file {file}")]
    BadSafetensors {
        file: PathBuf,
        #[source]
        source: safetensors::SafeTensorError,
    },
    /// A mapped file that changed (was cut short or rewritten) after it was opened.
    #[error("{file} changed while in use: {what}")]
    ChangedFile { file: PathBuf, what: String },
    /// Another process writes the folder (it holds its [`crate::FolderLock`]).
    #[error("{} is in use by {}; wait for it to end, or choose another folder", dir.display(), pid.map_or("another process".to_string(), |p| format!("process {p}")))]
    InUse { dir: PathBuf, pid: Option<u32> },
    /// An I/O failure, with the path involved.
    #[error("cannot access {path}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl SaeError {
    /// Wraps an I/O error with the path it concerns.
    pub fn io(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> SaeError {
        let path = path.into();
        move |source| SaeError::Io { path, source }
    }
}

/// `Result` with [`SaeError`].
pub type Result<T, E = SaeError> = std::result::Result<T, E>;
