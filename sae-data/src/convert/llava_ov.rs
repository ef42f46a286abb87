//! LLaVA-OneVision-Data Parquet to standard chat rows, as SAE Made Easy's
//! `examples/data_process/llava_ov_clevr.py` does: `human`/`gpt` become `user`/`assistant`, a turn
//! holding `<image>` loses the placeholder and gets one image part first, the row's `image`
//! becomes its `images`.

use std::path::Path;

use polars::prelude::*;

use super::{Flow, Origin, SourceRow};
use crate::error::{Result, RowProblem};
use crate::parquet_file::{ParquetFile, parquet_files};
use crate::record::{Body, Part, Record, RowResult, Turn, image_parts};
use crate::table::{missing, wrong_type};

const COLUMNS: [&str; 4] = ["id", "image", "conversations", "data_source"];

/// Rows in all input files.
pub(super) fn count(input: &Path) -> Result<Option<u64>> {
    let mut rows = 0;
    for path in parquet_files(input)? {
        rows += ParquetFile::open(&path)?.rows() as u64;
    }
    Ok(Some(rows))
}

/// Converts every row of every Parquet file under `input`.
pub(super) fn convert(input: &Path, emit: &mut dyn FnMut(SourceRow) -> Result<Flow>) -> Result<()> {
    for path in parquet_files(input)? {
        let file = ParquetFile::open(&path)?;
        if !file.schema().contains("conversations") {
            return Err(missing(&path, "conversations", file.schema()));
        }
        for group in 0..file.groups() {
            let frame = file.read_group(group, Some(&COLUMNS))?;
            let first = file.group_range(group).0;
            for (i, record) in rows(&path, &frame)?.into_iter().enumerate() {
                let origin = Origin {
                    path: path.clone(),
                    row: first + i,
                };
                if emit(SourceRow { origin, record })? == Flow::Stop {
                    return Ok(());
                }
            }
        }
    }
    Ok(())
}

/// The rows of one row group.
fn rows(path: &Path, frame: &DataFrame) -> Result<Vec<RowResult>> {
    let schema = frame.schema();
    let wrong = |column: &str, expected: &str| wrong_type(path, schema, column, expected);
    let strings = |name: &str| -> Result<Vec<Option<String>>> {
        match frame.column(name) {
            Err(_) => Ok(vec![None; frame.height()]),
            Ok(c) if c.dtype() == &DataType::Null => Ok(vec![None; frame.height()]),
            Ok(c) => Ok(c
                .str()
                .map_err(|_| wrong(name, "string"))?
                .iter()
                .map(|s| s.map(String::from))
                .collect()),
        }
    };
    let ids = strings("id")?;
    let sources = strings("data_source")?;
    let images = images(frame).ok_or_else(|| wrong("image", "binary or struct {bytes, path}"))?;
    let expected = "list of struct {from, value}";
    let conversations = frame
        .column("conversations")
        .map_err(|_| missing(path, "conversations", schema))?
        .list()
        .map_err(|_| wrong("conversations", expected))?;
    let mut out = Vec::with_capacity(frame.height());
    for (i, conversation) in conversations.series_iter().enumerate() {
        let turns = match conversation {
            None => Err(RowProblem::Null("conversations".into())),
            Some(c) => {
                let turns = c.struct_().map_err(|_| wrong("conversations", expected))?;
                let field = |name: &str| {
                    turns
                        .field_by_name(name)
                        .map_err(|_| wrong("conversations", expected))
                };
                let (from, value) = (field("from")?, field("value")?);
                let from = from.str().map_err(|_| wrong("conversations", expected))?;
                let value = value.str().map_err(|_| wrong("conversations", expected))?;
                from.iter()
                    .zip(value.iter())
                    .map(|(f, v)| match (f, v) {
                        (Some(f), Some(v)) => Ok((f, v)),
                        _ => Err(RowProblem::Null("from or value".into())),
                    })
                    .collect::<std::result::Result<Vec<_>, _>>()
                    .map(|pairs: Vec<(&str, &str)>| to_turns(&pairs))
            }
        };
        let record = turns.map(|messages| {
            let images = images[i].clone();
            Record {
                id: ids[i].clone(),
                source: sources[i].clone(),
                body: Body::Chat {
                    messages: place_images(messages, images.len()),
                    images,
                },
            }
        });
        out.push(record.and_then(|r| r.validate().map(|()| r)));
    }
    Ok(out)
}

/// The `image` column per row: none (absent or null), raw bytes, or HF's `{bytes, path}`.
fn images(frame: &DataFrame) -> Option<Vec<Vec<Vec<u8>>>> {
    let Ok(column) = frame.column("image") else {
        return Some(vec![Vec::new(); frame.height()]);
    };
    let series = column.as_materialized_series();
    let bytes = match series.dtype() {
        DataType::Null => return Some(vec![Vec::new(); frame.height()]),
        DataType::Binary => series.clone(),
        DataType::Struct(_) => series.struct_().ok()?.field_by_name("bytes").ok()?,
        _ => return None,
    };
    let outer_null = series.is_null();
    Some(
        bytes
            .binary()
            .ok()?
            .iter()
            .zip(outer_null.iter())
            .map(|(b, null)| match (b, null) {
                (Some(b), Some(false)) => vec![b.to_vec()],
                _ => Vec::new(),
            })
            .collect(),
    )
}

/// `from`/`value` pairs to turns, as the seed script does.
fn to_turns(pairs: &[(&str, &str)]) -> Vec<Turn> {
    pairs
        .iter()
        .map(|&(from, value)| {
            let role = match from {
                "human" => "user",
                "gpt" => "assistant",
                other => other,
            };
            let content = if value.contains("<image>") {
                vec![Part::Image, Part::Text(value.replace("<image>", ""))]
            } else {
                vec![Part::Text(value.to_string())]
            };
            Turn {
                role: role.into(),
                content,
            }
        })
        .collect()
}

/// A row with an image but no `<image>` placeholder shows it first in the first user turn
/// (where LLaVA puts it).
fn place_images(mut turns: Vec<Turn>, images: usize) -> Vec<Turn> {
    if images > 0
        && image_parts(&turns) == 0
        && let Some(turn) = turns.iter_mut().find(|t| t.role == "user")
    {
        turn.content.insert(0, Part::Image);
    }
    turns
}
