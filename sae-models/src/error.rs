//! The error type of `sae-models`.

use std::path::PathBuf;

/// What can go wrong loading or running a model.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// A `model_type` we have no port of.
    #[error("model type {found:?} is not supported; supported: {supported}")]
    UnsupportedArchitecture { found: String, supported: String },
    /// A config value we cannot honour.
    #[error("{file}: {message}")]
    BadConfig { file: PathBuf, message: String },
    /// A weight whose shape disagrees with the config.
    #[error("weight {name:?} has shape {got:?}, but the config implies {expected:?}")]
    WeightShape {
        name: String,
        expected: Vec<usize>,
        got: Vec<usize>,
    },
    /// A weight that no checkpoint file holds.
    #[error("no checkpoint file in {dir} holds weight {name:?}")]
    MissingWeight { dir: PathBuf, name: String },
    /// A folder without `model.safetensors` or `model.safetensors.index.json`.
    #[error("{0} has neither model.safetensors nor model.safetensors.index.json")]
    NoWeights(PathBuf),
    /// A shard the index names that is not in the folder.
    #[error(
        "{dir}/model.safetensors.index.json lists shard {shard}, which is missing from the folder (an interrupted download?)"
    )]
    MissingShard { dir: PathBuf, shard: String },
    /// A `--model` path that is not a model folder.
    #[error("{0} is not a model folder (no config.json)")]
    NotAModel(PathBuf),
    /// A `--model` path that does not exist.
    #[error("{0} does not exist: expected a model folder, a .gguf file or a hub id (org/name)")]
    NoSuchModel(PathBuf),
    /// A GGUF file that is corrupt, truncated or uses something we cannot read.
    #[error("{file}: {message}")]
    BadGguf { file: PathBuf, message: String },
    /// The hub could not provide a model.
    #[error("cannot get {id} from the Hugging Face hub: {message}")]
    Hub { id: String, message: String },
    /// A model folder without `tokenizer.json`.
    #[error("{0} has no tokenizer.json")]
    MissingTokenizer(PathBuf),
    /// A tokenizer file the `tokenizers` crate cannot read.
    #[error("cannot read tokenizer {file}: {message}")]
    BadTokenizer { file: PathBuf, message: String },
    /// Encoding or decoding failed.
    #[error("tokenization failed: {0}")]
    Tokenize(String),
    /// `--chat` on a model without a chat template.
    #[error(
        "the model has no chat template (no chat_template.jinja, no chat_template in tokenizer_config.json)"
    )]
    NoChatTemplate,
    /// The chat template does not render.
    #[error("the chat template failed: {0}")]
    ChatTemplate(String),
    /// A prompt longer than the model's context.
    #[error(
        "the prompt plus generation needs {needed} positions, but the model's context is {limit}"
    )]
    TooLong { needed: usize, limit: usize },
    /// An image file that cannot be opened or decoded.
    #[error("cannot read image {file}: {message}")]
    BadImage { file: PathBuf, message: String },
    /// An image the image processor cannot take (transformers refuses it too).
    #[error("cannot preprocess the image: {0}")]
    ImagePreprocess(String),
    /// Model inputs that disagree with each other (image tokens against image features).
    #[error("bad model input: {0}")]
    BadInput(String),

    #[error("exchanging the model's weight slices between the ranks failed: {0}")]
    Shards(String),
    /// Images given to a vision-language model loaded for text only.
    #[error(
        "the model was loaded without its vision tower (the job said it gives no images), but the input has images"
    )]
    NoVisionTower,
    /// Reading a checkpoint or config file failed (the cause says why).
    #[error(transparent)]
    Checkpoint(#[from] sae_core::SaeError),
}

/// `Result` with [`ModelError`].
pub type Result<T, E = ModelError> = std::result::Result<T, E>;

/// Makes [`ModelError::BadConfig`]s about `file` from messages.
pub(crate) fn bad_config(file: &std::path::Path) -> impl Fn(String) -> ModelError + '_ {
    move |message| ModelError::BadConfig {
        file: file.to_path_buf(),
        message,
    }
}
