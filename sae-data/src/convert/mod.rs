//! `sae preprocess`: converts a source dataset into the standard format, row by row, checking
//! each row (images decode, turns are not empty) and failing on or skipping bad ones.

mod easy_vqa;
mod llava_ov;
mod text;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::error::{DataError, Result, RowProblem, io};
use crate::record::{Body, Record, RowResult, decode_images};
use crate::table::Kind;
use crate::writer::{ShardOptions, ShardWriter};

/// The source formats `sae preprocess` reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// LLaVA-OneVision-Data Parquet: `image`, `conversations` (`from`/`value`, `<image>`).
    LlavaOv,
    /// `.txt` files (a row each), JSONL or Parquet with a text column.
    Text,
    /// easy-VQA: `images/*.png` and `questions.json` (`[question, answer, image_id]`).
    EasyVqa,
}

impl Format {
    /// The name used on the command line and in `sae_dataset.json`.
    pub fn name(self) -> &'static str {
        match self {
            Format::LlavaOv => "llava-ov",
            Format::Text => "text",
            Format::EasyVqa => "easy-vqa",
        }
    }

    fn kind(self) -> Kind {
        match self {
            Format::Text => Kind::Text,
            Format::LlavaOv | Format::EasyVqa => Kind::Chat,
        }
    }
}

/// What to do with a row that cannot be used.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OnError {
    /// Stop with an error naming the row.
    #[default]
    Fail,
    /// Skip it and count it in the summary.
    Skip,
}

/// What `preprocess` reads and writes.
#[derive(Debug, Clone)]
pub struct PreprocessOptions {
    /// The source format.
    pub format: Format,
    /// A file or folder.
    pub input: PathBuf,
    /// The dataset folder to write (`data/` and `sae_dataset.json`).
    pub output: PathBuf,
    /// Bad rows: fail or skip.
    pub on_error: OnError,
    /// Stop after this many rows written.
    pub limit: Option<usize>,
    /// Shard size, row groups, split name and shuffle seed.
    pub shards: ShardOptions,
    /// The text column of JSONL/Parquet text input.
    pub text_column: String,
}

impl PreprocessOptions {
    /// Options with defaults for everything but the format and paths.
    pub fn new(format: Format, input: &Path, output: &Path) -> Self {
        PreprocessOptions {
            format,
            input: input.to_path_buf(),
            output: output.to_path_buf(),
            on_error: OnError::Fail,
            limit: None,
            shards: ShardOptions::default(),
            text_column: "text".into(),
        }
    }

    /// Refuses counts of 0 (a row limit, rows per shard or per row group, bytes per shard).
    fn check(&self) -> Result<()> {
        let s = &self.shards;
        let counts = [
            ("the row limit", self.limit),
            ("rows per shard", Some(s.rows_per_shard)),
            ("bytes per shard", Some(s.bytes_per_shard)),
            ("rows per row group", s.rows_per_group),
        ];
        match counts.iter().find(|(_, value)| *value == Some(0)) {
            Some((what, _)) => Err(DataError::Options(format!("{what} must be at least 1"))),
            None => Ok(()),
        }
    }
}

/// Where a row came from.
#[derive(Debug, Clone)]
pub struct Origin {
    /// The input file.
    pub path: PathBuf,
    /// The row's index in that file.
    pub row: usize,
}

/// What a converter hands over for each input row.
pub(crate) struct SourceRow {
    origin: Origin,
    record: RowResult,
}

/// Whether a converter should go on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Flow {
    Continue,
    Stop,
}

/// Progress reports: rows read so far and, when known, in all.
#[derive(Debug, Clone, Copy)]
pub struct Progress {
    /// Input rows seen.
    pub read: u64,
    /// Input rows in all, if the format knows it up front.
    pub total: Option<u64>,
}

/// What a run wrote and skipped.
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    /// Rows written.
    pub rows_written: usize,
    /// Rows skipped, by reason.
    pub skipped: BTreeMap<String, usize>,
    /// Shard files written, relative to the output folder.
    pub shards: Vec<String>,
    /// Encoded bytes (texts and images) written.
    pub bytes: u64,
    /// Wall time in seconds.
    pub seconds: f64,
}

/// Converts `options.input` into a standard dataset in `options.output`; `progress` is called
/// as rows are read.
pub fn preprocess(
    options: &PreprocessOptions,
    progress: &mut dyn FnMut(Progress),
) -> Result<Summary> {
    let start = std::time::Instant::now();
    options.check()?;
    refuse_existing(&options.output)?;
    let created = !options.output.exists();
    let result = convert(options, progress, start);
    if result.is_err() {
        // Leave no empty folders behind (shards of this run are already removed).
        let _ = std::fs::remove_dir(options.output.join("data"));
        if created {
            let _ = std::fs::remove_dir(&options.output);
        }
    }
    result
}

fn convert(
    options: &PreprocessOptions,
    progress: &mut dyn FnMut(Progress),
    start: std::time::Instant,
) -> Result<Summary> {
    let mut writer = ShardWriter::new(
        &options.output,
        options.format.kind(),
        options.shards.clone(),
    )?;
    let mut skipped = BTreeMap::new();
    let mut bytes = 0u64;
    let mut read = 0u64;
    let mut failure = None;
    let total = match options.format {
        Format::LlavaOv => llava_ov::count(&options.input)?,
        Format::Text => None,
        Format::EasyVqa => easy_vqa::count(&options.input, &options.shards.split)?,
    };
    let mut emit = |row: SourceRow| -> Result<Flow> {
        read += 1;
        if read.is_multiple_of(64) {
            progress(Progress { read, total });
        }
        match row.record.and_then(|r| check_images(&r).map(|()| r)) {
            Ok(record) => {
                bytes += crate::writer::record_bytes(&record) as u64;
                writer.push(record)?;
            }
            Err(reason) if options.on_error == OnError::Skip => {
                *skipped.entry(reason.kind().to_string()).or_insert(0) += 1;
            }
            Err(reason) => {
                failure = Some(DataError::BadRow {
                    path: row.origin.path,
                    row: row.origin.row,
                    reason,
                });
                return Ok(Flow::Stop);
            }
        }
        let full = options.limit.is_some_and(|l| writer.rows() >= l);
        Ok(if full { Flow::Stop } else { Flow::Continue })
    };
    let converted = match options.format {
        Format::LlavaOv => llava_ov::convert(&options.input, &mut emit),
        Format::Text => text::convert(&options.input, &options.text_column, &mut emit),
        Format::EasyVqa => easy_vqa::convert(&options.input, &options.shards.split, &mut emit),
    };
    progress(Progress { read, total });
    if let Some(error) = converted.err().or(failure) {
        writer.abandon();
        return Err(error);
    }
    let rows_written = writer.rows();
    let info = writer.finish(options.format.name())?;
    Ok(Summary {
        rows_written,
        skipped,
        shards: info.shards,
        bytes,
        seconds: start.elapsed().as_secs_f64(),
    })
}

/// Refuses to write into a folder that already holds a dataset (nothing written is lost).
fn refuse_existing(output: &Path) -> Result<()> {
    let data = output.join("data");
    let holds_shards = std::fs::read_dir(&data).is_ok_and(|entries| {
        entries
            .flatten()
            .any(|e| e.path().extension().is_some_and(|x| x == "parquet"))
    });
    if holds_shards || output.join(crate::writer::INFO_FILE).exists() {
        return Err(DataError::OutputExists {
            path: output.to_path_buf(),
        });
    }
    Ok(())
}

/// Decodes every image of a chat row (catching truncated or foreign bytes now, not in training).
pub fn check_images(record: &Record) -> std::result::Result<(), RowProblem> {
    if let Body::Chat { images, .. } = &record.body {
        decode_images(images)?;
    }
    Ok(())
}

/// Reads a whole small file (questions, text).
fn read_to_string(path: &Path) -> Result<String> {
    std::fs::read_to_string(path).map_err(io(path))
}

impl std::str::FromStr for Format {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "llava-ov" => Ok(Format::LlavaOv),
            "text" => Ok(Format::Text),
            "easy-vqa" => Ok(Format::EasyVqa),
            other => Err(format!(
                "unknown format `{other}`; expected llava-ov, text or easy-vqa"
            )),
        }
    }
}

impl std::str::FromStr for OnError {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "fail" => Ok(OnError::Fail),
            "skip" => Ok(OnError::Skip),
            other => Err(format!("unknown policy `{other}`; expected fail or skip")),
        }
    }
}
