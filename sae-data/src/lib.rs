//! Parquet datasets for SAE training with polars: the standard format (text rows, or chat rows
//! with images), `sae preprocess` converters, and a streaming loader with deterministic
//! shuffling, sharding across ranks, exact resume and batching through a model's tokenizer.

pub mod convert;
pub mod dataset;
pub mod error;
pub mod loader;
pub mod parquet_file;
pub mod record;
pub mod table;
pub mod writer;

pub use convert::{Format, OnError, PreprocessOptions, Progress, Summary, preprocess};
pub use dataset::{Cursor, Dataset, Example, RowId, Stream, StreamConfig};
pub use error::{DataError, Result, RowProblem};
pub use loader::{Batch, Batching, Loader, LoaderCursor};
pub use record::{Body, Part, Record, Turn};
pub use table::Kind;
pub use writer::{DatasetInfo, ShardOptions, ShardWriter};
