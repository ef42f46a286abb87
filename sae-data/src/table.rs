//! The standard format's columns: records to a polars `DataFrame` and back.
//!
//! Text rows: `text` (string). Chat rows: `messages` (list of `{role, content: list of {type,
//! text}}`) and `images` (list of binary). Both: optional `id` and `source` (string). Reading
//! also takes what SAE Made Easy's own script writes: the turns in a `text` column and images as
//! `{bytes, path}` structs.

use std::path::Path;

use polars::prelude::*;

use crate::error::{DataError, Result, RowProblem};
use crate::record::{Body, Part, Record, RowResult, Turn};

/// Which kind of rows a table holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// Plain texts.
    Text,
    /// Chats with images.
    Chat,
}

/// The `DataFrame` of `records` (all of one kind).
pub fn to_frame(records: &[Record], kind: Kind) -> PolarsResult<DataFrame> {
    let strings = |name: &str, get: &dyn Fn(&Record) -> Option<&str>| {
        Series::new(name.into(), records.iter().map(get).collect::<Vec<_>>()).into_column()
    };
    let mut columns = match kind {
        Kind::Text => vec![strings("text", &|r| match &r.body {
            Body::Text(text) => Some(text.as_str()),
            Body::Chat { .. } => None,
        })],
        Kind::Chat => {
            let mut messages = Vec::with_capacity(records.len());
            let mut images = Vec::with_capacity(records.len());
            for record in records {
                let (turns, imgs) = match &record.body {
                    Body::Chat { messages, images } => (messages.as_slice(), images.as_slice()),
                    Body::Text(_) => (&[][..], &[][..]),
                };
                messages.push(turns_series(turns)?);
                let bytes: Vec<&[u8]> = imgs.iter().map(Vec::as_slice).collect();
                images.push(Series::new(PlSmallStr::EMPTY, bytes));
            }
            vec![
                Series::new("messages".into(), messages).into_column(),
                Series::new("images".into(), images).into_column(),
            ]
        }
    };
    columns.push(strings("id", &|r| r.id.as_deref()));
    columns.push(strings("source", &|r| r.source.as_deref()));
    DataFrame::new(records.len(), columns)
}

/// One row's turns as a struct series `{role, content}`.
fn turns_series(turns: &[Turn]) -> PolarsResult<Series> {
    let roles: Vec<&str> = turns.iter().map(|t| t.role.as_str()).collect();
    let contents = turns
        .iter()
        .map(|t| parts_series(&t.content))
        .collect::<PolarsResult<Vec<_>>>()?;
    let fields = [
        Series::new("role".into(), roles),
        list_of(&"content".into(), contents, &parts_dtype()),
    ];
    Ok(StructChunked::from_series(PlSmallStr::EMPTY, turns.len(), fields.iter())?.into_series())
}

/// One turn's parts as a struct series `{type, text}` (`text` null for images).
fn parts_series(parts: &[Part]) -> PolarsResult<Series> {
    let kinds: Vec<&str> = parts
        .iter()
        .map(|p| match p {
            Part::Image => "image",
            Part::Text(_) => "text",
        })
        .collect();
    let texts: Vec<Option<&str>> = parts
        .iter()
        .map(|p| match p {
            Part::Image => None,
            Part::Text(text) => Some(text.as_str()),
        })
        .collect();
    let fields = [
        Series::new("type".into(), kinds),
        Series::new("text".into(), texts),
    ];
    Ok(StructChunked::from_series(PlSmallStr::EMPTY, parts.len(), fields.iter())?.into_series())
}

/// The dtype of one turn's parts.
fn parts_dtype() -> DataType {
    DataType::Struct(vec![
        Field::new("type".into(), DataType::String),
        Field::new("text".into(), DataType::String),
    ])
}

/// A list series of `items`, typed `List(inner)` even when there are none.
fn list_of(name: &PlSmallStr, items: Vec<Series>, inner: &DataType) -> Series {
    if items.is_empty() {
        Series::new_empty(name.clone(), &DataType::List(Box::new(inner.clone())))
    } else {
        Series::new(name.clone(), items)
    }
}

/// Reads a standard (or SAE Made Easy) table's rows back; `first_row` numbers them in errors.
pub struct Reader<'a> {
    path: &'a Path,
    frame: &'a DataFrame,
    kind: Kind,
}

impl<'a> Reader<'a> {
    /// Checks the columns of `frame` (read from `path`) and tells its kind.
    pub fn new(path: &'a Path, frame: &'a DataFrame) -> Result<Self> {
        let kind = kind_of(path, frame.schema())?;
        Ok(Reader { path, frame, kind })
    }

    /// The kind of rows.
    pub fn kind(&self) -> Kind {
        self.kind
    }

    /// Every row, each a record or the reason it is unusable.
    pub fn records(&self) -> Result<Vec<RowResult>> {
        let n = self.frame.height();
        let ids = self.optional_strings("id")?;
        let sources = self.optional_strings("source")?;
        let bodies: Vec<std::result::Result<Body, RowProblem>> = match self.kind {
            Kind::Text => self
                .column("text")?
                .str()
                .map_err(|_| self.wrong_type("text", "string"))?
                .iter()
                .map(|t| t.map(|t| Body::Text(t.to_string())).ok_or(null("text")))
                .collect(),
            Kind::Chat => {
                let turns = self.turns()?;
                let images = self.images()?;
                turns
                    .into_iter()
                    .zip(images)
                    .map(|(turns, images)| {
                        Ok(Body::Chat {
                            messages: turns?,
                            images: images?,
                        })
                    })
                    .collect()
            }
        };
        Ok((0..n)
            .zip(bodies)
            .map(|(i, body)| {
                let record = Record {
                    id: ids.as_ref().and_then(|c| c[i].clone()),
                    source: sources.as_ref().and_then(|c| c[i].clone()),
                    body: body?,
                };
                record.validate()?;
                Ok(record)
            })
            .collect())
    }

    fn column(&self, name: &str) -> Result<&Column> {
        self.frame
            .column(name)
            .map_err(|_| missing(self.path, name, self.frame.schema()))
    }

    fn wrong_type(&self, column: &str, expected: &str) -> DataError {
        wrong_type(self.path, self.frame.schema(), column, expected)
    }

    fn optional_strings(&self, name: &str) -> Result<Option<Vec<Option<String>>>> {
        let Ok(column) = self.frame.column(name) else {
            return Ok(None);
        };
        if column.dtype() == &DataType::Null {
            return Ok(Some(vec![None; self.frame.height()]));
        }
        let ca = column.str().map_err(|_| self.wrong_type(name, "string"))?;
        Ok(Some(ca.iter().map(|s| s.map(String::from)).collect()))
    }

    /// The `messages` column (or the turns in `text`, as SAE Made Easy's script writes them).
    fn turns(&self) -> Result<Vec<std::result::Result<Vec<Turn>, RowProblem>>> {
        let name = if self.frame.column("messages").is_ok() {
            "messages"
        } else {
            "text"
        };
        let expected = "list of struct {role, content}";
        let list = self
            .column(name)?
            .list()
            .map_err(|_| self.wrong_type(name, expected))?;
        let mut rows = Vec::with_capacity(list.len());
        for row in list.series_iter() {
            let Some(row) = row else {
                rows.push(Err(null(name)));
                continue;
            };
            let turns = row.struct_().map_err(|_| self.wrong_type(name, expected))?;
            let roles = field(turns, "role").map_err(|_| self.wrong_type(name, expected))?;
            let roles = roles.str().map_err(|_| self.wrong_type(name, expected))?;
            let content = field(turns, "content").map_err(|_| self.wrong_type(name, expected))?;
            rows.push(self.row_turns(name, roles, &content)?);
        }
        Ok(rows)
    }

    /// One row's turns from its `role` and `content` fields.
    fn row_turns(
        &self,
        name: &str,
        roles: &StringChunked,
        content: &Series,
    ) -> Result<std::result::Result<Vec<Turn>, RowProblem>> {
        let expected = "content as a string or a list of struct {type, text}";
        let mut turns = Vec::with_capacity(roles.len());
        if let Ok(texts) = content.str() {
            for (role, text) in roles.iter().zip(texts.iter()) {
                let (Some(role), Some(text)) = (role, text) else {
                    return Ok(Err(null("role or content")));
                };
                turns.push(Turn::text(role, text));
            }
            return Ok(Ok(turns));
        }
        let lists = content
            .list()
            .map_err(|_| self.wrong_type(name, expected))?;
        for (role, parts) in roles.iter().zip(lists.series_iter()) {
            let (Some(role), Some(parts)) = (role, parts) else {
                return Ok(Err(null("role or content")));
            };
            let parts = parts
                .struct_()
                .map_err(|_| self.wrong_type(name, expected))?;
            let kinds = field(parts, "type").map_err(|_| self.wrong_type(name, expected))?;
            let kinds = kinds.str().map_err(|_| self.wrong_type(name, expected))?;
            let texts = field(parts, "text").ok();
            let texts = match &texts {
                Some(t) if t.dtype() != &DataType::Null => {
                    Some(t.str().map_err(|_| self.wrong_type(name, expected))?)
                }
                _ => None,
            };
            let mut content = Vec::with_capacity(kinds.len());
            for (i, kind) in kinds.iter().enumerate() {
                let text = texts.and_then(|t| t.get(i));
                content.push(match (kind, text) {
                    (Some("image"), _) => Part::Image,
                    (Some("text"), Some(text)) => Part::Text(text.to_string()),
                    (Some("text"), None) => return Ok(Err(null("text of a text part"))),
                    _ => return Ok(Err(null("type of a part"))),
                });
            }
            turns.push(Turn {
                role: role.to_string(),
                content,
            });
        }
        Ok(Ok(turns))
    }

    /// The `images` column: lists of bytes, or of `{bytes, path}` structs (HF `datasets`);
    /// rows without images when the column is absent.
    fn images(&self) -> Result<Vec<std::result::Result<Vec<Vec<u8>>, RowProblem>>> {
        let n = self.frame.height();
        let Ok(column) = self.frame.column("images") else {
            return Ok(vec![Ok(Vec::new()); n]);
        };
        let expected = "list of binary or of struct {bytes, path}";
        let list = column
            .list()
            .map_err(|_| self.wrong_type("images", expected))?;
        let mut rows = Vec::with_capacity(n);
        for row in list.series_iter() {
            let Some(row) = row else {
                rows.push(Ok(Vec::new()));
                continue;
            };
            let bytes = image_bytes(&row).ok_or_else(|| self.wrong_type("images", expected))?;
            rows.push(bytes);
        }
        Ok(rows)
    }
}

/// The encoded images of one list element: binary, or `{bytes, path}` structs.
fn image_bytes(series: &Series) -> Option<std::result::Result<Vec<Vec<u8>>, RowProblem>> {
    let owned;
    let binary = match series.dtype() {
        DataType::Binary => series.binary().ok()?,
        DataType::Struct(_) => {
            owned = field(series.struct_().ok()?, "bytes").ok()?;
            owned.binary().ok()?
        }
        DataType::Null => return Some(Ok(Vec::new())),
        _ => return None,
    };
    Some(
        binary
            .iter()
            .map(|b| b.map(<[u8]>::to_vec).ok_or(null("image bytes")))
            .collect(),
    )
}

fn field(ca: &StructChunked, name: &str) -> PolarsResult<Series> {
    ca.field_by_name(name)
}

fn null(what: &str) -> RowProblem {
    RowProblem::Null(what.into())
}

/// The kind of a standard (or SAE Made Easy) table from its schema.
pub fn kind_of(path: &Path, schema: &Schema) -> Result<Kind> {
    if schema.contains("messages") {
        return Ok(Kind::Chat);
    }
    match schema.get("text") {
        Some(DataType::List(_)) => Ok(Kind::Chat),
        Some(_) => Ok(Kind::Text),
        None => Err(missing(path, "messages` or `text", schema)),
    }
}

/// The missing-column error.
pub(crate) fn missing(path: &Path, column: &str, schema: &Schema) -> DataError {
    DataError::MissingColumn {
        path: path.to_path_buf(),
        column: column.into(),
        schema: schema_text(schema),
    }
}

/// The error for a column of another type than `expected`.
pub(crate) fn wrong_type(path: &Path, schema: &Schema, column: &str, expected: &str) -> DataError {
    DataError::WrongType {
        path: path.to_path_buf(),
        column: column.into(),
        expected: expected.into(),
        found: schema
            .get(column)
            .map_or("absent".into(), |d| d.to_string()),
        schema: schema_text(schema),
    }
}

/// A schema as one line: `{text: str, id: str}`.
pub(crate) fn schema_text(schema: &Schema) -> String {
    let fields: Vec<String> = schema
        .iter()
        .map(|(name, dtype)| format!("{name}: {dtype}"))
        .collect();
    format!("{{{}}}", fields.join(", "))
}
