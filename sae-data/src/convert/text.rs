//! Plain text to standard text rows: each `.txt` file is one row, each JSONL line one row, each
//! row of a Parquet file's text column one row.

use std::io::BufRead;
use std::path::Path;

use polars::prelude::DataType;

use super::{Flow, Origin, SourceRow};
use crate::error::{Result, RowProblem, io};
use crate::parquet_file::{ParquetFile, files_with};
use crate::record::{Body, Record};
use crate::table::{missing, wrong_type};

/// Converts the text files under `input`; `column` names the text in JSONL and Parquet.
pub(super) fn convert(
    input: &Path,
    column: &str,
    emit: &mut dyn FnMut(SourceRow) -> Result<Flow>,
) -> Result<()> {
    for path in files_with(input, &["txt", "jsonl", "parquet"])? {
        let source = path
            .strip_prefix(input)
            .ok()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(path.file_name().map_or(path.as_ref(), Path::new))
            .to_string_lossy()
            .into_owned();
        let flow = match path.extension().and_then(|e| e.to_str()) {
            Some("txt") => {
                let bytes = std::fs::read(&path).map_err(io(&path))?;
                let id = path.file_stem().map(|s| s.to_string_lossy().into_owned());
                emit(row(&path, 0, id, &source, utf8(bytes)))?
            }
            Some("jsonl") => jsonl(&path, column, &source, emit)?,
            _ => parquet(&path, column, &source, emit)?,
        };
        if flow == Flow::Stop {
            break;
        }
    }
    Ok(())
}

fn row(
    path: &Path,
    index: usize,
    id: Option<String>,
    source: &str,
    text: std::result::Result<String, RowProblem>,
) -> SourceRow {
    let record = text.and_then(|text| {
        let record = Record {
            id,
            source: Some(source.to_string()),
            body: Body::Text(text),
        };
        record.validate().map(|()| record)
    });
    SourceRow {
        origin: Origin {
            path: path.to_path_buf(),
            row: index,
        },
        record,
    }
}

/// `bytes` as text, or the row problem that names the first byte that is not UTF-8.
fn utf8(bytes: Vec<u8>) -> std::result::Result<String, RowProblem> {
    String::from_utf8(bytes).map_err(|e| RowProblem::NotUtf8(e.utf8_error().valid_up_to()))
}

fn jsonl(
    path: &Path,
    column: &str,
    source: &str,
    emit: &mut dyn FnMut(SourceRow) -> Result<Flow>,
) -> Result<Flow> {
    let file = std::fs::File::open(path).map_err(io(path))?;
    for (index, line) in std::io::BufReader::new(file).split(b'\n').enumerate() {
        let text = match utf8(line.map_err(io(path))?) {
            Ok(line) if line.trim().is_empty() => continue,
            Ok(line) => match serde_json::from_str::<serde_json::Value>(&line) {
                Err(e) => Err(RowProblem::Json(e.to_string())),
                Ok(value) => match &value[column] {
                    serde_json::Value::String(text) => Ok(text.clone()),
                    _ => Err(RowProblem::Null(column.to_string())),
                },
            },
            Err(problem) => Err(problem),
        };
        if emit(row(path, index, None, source, text))? == Flow::Stop {
            return Ok(Flow::Stop);
        }
    }
    Ok(Flow::Continue)
}

fn parquet(
    path: &Path,
    column: &str,
    source: &str,
    emit: &mut dyn FnMut(SourceRow) -> Result<Flow>,
) -> Result<Flow> {
    let file = ParquetFile::open(path)?;
    match file.schema().get(column) {
        None => return Err(missing(path, column, file.schema())),
        Some(DataType::String) => {}
        Some(_) => return Err(wrong_type(path, file.schema(), column, "string")),
    }
    for group in 0..file.groups() {
        let frame = file.read_group(group, Some(&[column, "id"]))?;
        let first = file.group_range(group).0;
        let texts = frame.column(column).and_then(|c| c.str().cloned());
        let texts = texts.map_err(crate::error::parquet(path))?;
        let ids = frame.column("id").ok().and_then(|c| c.str().ok().cloned());
        for (i, text) in texts.iter().enumerate() {
            let id = ids.as_ref().and_then(|ids| ids.get(i)).map(String::from);
            let text = text
                .map(String::from)
                .ok_or(RowProblem::Null(column.to_string()));
            if emit(row(path, first + i, id, source, text))? == Flow::Stop {
                return Ok(Flow::Stop);
            }
        }
    }
    Ok(Flow::Continue)
}
