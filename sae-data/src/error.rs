//! The crate's error type: one clear sentence naming the file, the row and the cause.

use std::path::PathBuf;

/// What can go wrong reading, converting or batching a dataset.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    /// A file or folder could not be read or written.
    #[error("cannot access {path}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// Polars could not read or write a Parquet file.
    #[error("{path} is not a readable Parquet file")]
    Parquet {
        path: PathBuf,
        #[source]
        source: polars::error::PolarsError,
    },
    /// A column the format needs is absent.
    #[error("{path} has no column `{column}` (its schema: {schema})")]
    MissingColumn {
        path: PathBuf,
        column: String,
        schema: String,
    },
    /// A column has another type than the format needs.
    #[error("column `{column}` of {path} is {found}, expected {expected} (its schema: {schema})")]
    WrongType {
        path: PathBuf,
        column: String,
        expected: String,
        found: String,
        schema: String,
    },
    /// One row cannot be used; `--on-error skip` skips such rows. The message counts rows from
    /// 1 (a JSONL file's row is its line number).
    #[error("row {} of {path}: {reason}", .row + 1)]
    BadRow {
        path: PathBuf,
        /// The row's index in the file, from 0.
        row: usize,
        reason: RowProblem,
    },
    /// The output folder already holds a dataset.
    #[error("{path} already holds a dataset; choose another --output or remove it")]
    OutputExists { path: PathBuf },
    /// A folder holds no input the format reads.
    #[error("found no {what} in {path}")]
    NoInput { path: PathBuf, what: String },
    /// An input file does not have the layout its format needs.
    #[error("{path} is not valid: {reason}")]
    Invalid { path: PathBuf, reason: String },
    /// Preprocessing options that cannot work (a limit or shard size of 0).
    #[error("invalid preprocessing options: {0}")]
    Options(String),
    /// Batch settings that cannot make a batch (no sequences, no tokens).
    #[error("invalid batching: {0}")]
    Batching(String),
    /// A saved cursor does not belong to this dataset or stream.
    #[error("the saved data cursor does not fit this dataset: {0}")]
    Cursor(String),
    /// Tokenizing or rendering a chat template failed.
    #[error(transparent)]
    Model(#[from] sae_models::ModelError),
}

/// Why a single row was rejected (counted by kind when rows are skipped).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RowProblem {
    /// The row has no turns, or no text.
    #[error("the conversation is empty")]
    EmptyConversation,
    /// The text is empty.
    #[error("the text is empty")]
    EmptyText,
    /// An image cannot be decoded.
    #[error("image {index} cannot be decoded: {reason}")]
    Image { index: usize, reason: String },
    /// The model's image processor refuses the row's images.
    #[error("the images cannot be processed: {0}")]
    Images(String),
    /// The row names images it does not hold, or holds images it never shows.
    #[error("the messages show {shown} image(s) but the row holds {held}")]
    ImageCount { shown: usize, held: usize },
    /// A required value is null.
    #[error("`{0}` is null")]
    Null(String),
    /// A JSONL line is not a JSON object.
    #[error("not a JSON object: {0}")]
    Json(String),
    /// The text is not valid UTF-8.
    #[error("the text is not UTF-8 (byte {0} starts an invalid sequence)")]
    NotUtf8(usize),
    /// The tokenized row is longer than the context.
    #[error("{tokens} tokens do not fit the context of {max}")]
    TooLong { tokens: usize, max: usize },
}

impl RowProblem {
    /// A short name for summaries (`skipped: 3 image, 1 too_long`).
    pub fn kind(&self) -> &'static str {
        match self {
            RowProblem::EmptyConversation => "empty_conversation",
            RowProblem::EmptyText => "empty_text",
            RowProblem::Image { .. } | RowProblem::Images(_) => "image",
            RowProblem::ImageCount { .. } => "image_count",
            RowProblem::Null(_) => "null",
            RowProblem::Json(_) => "json",
            RowProblem::NotUtf8(_) => "not_utf8",
            RowProblem::TooLong { .. } => "too_long",
        }
    }
}

/// The crate's result type.
pub type Result<T> = std::result::Result<T, DataError>;

/// `map_err` helper for I/O on `path`.
pub(crate) fn io(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> DataError {
    let path = path.into();
    move |source| DataError::Io { path, source }
}

/// `map_err` helper for polars on `path`.
pub(crate) fn parquet(
    path: impl Into<PathBuf>,
) -> impl FnOnce(polars::error::PolarsError) -> DataError {
    let path = path.into();
    move |source| DataError::Parquet { path, source }
}
