//! One Parquet file read a row group at a time (memory bounded by the largest row group).

use std::path::{Path, PathBuf};

use polars::io::parquet::metadata::FileMetadataRef;
use polars::prelude::*;

use crate::error::{Result, io, parquet};

/// A Parquet file's row groups, read lazily.
#[derive(Debug, Clone)]
pub struct ParquetFile {
    path: PathBuf,
    metadata: FileMetadataRef,
    schema: Schema,
    /// The first row of each row group, and the total at the end.
    starts: Vec<usize>,
}

impl ParquetFile {
    /// Reads `path`'s footer (schema and row groups).
    pub fn open(path: &Path) -> Result<Self> {
        let file = std::fs::File::open(path).map_err(io(path))?;
        let mut reader = ParquetReader::new(file);
        let metadata = reader.get_metadata().map_err(parquet(path))?.clone();
        let arrow = reader.schema().map_err(parquet(path))?;
        let schema = Schema::from_arrow_schema(arrow.as_ref());
        let mut starts = vec![0];
        for group in &metadata.row_groups {
            starts.push(starts.last().unwrap() + group.num_rows());
        }
        Ok(ParquetFile {
            path: path.to_path_buf(),
            metadata,
            schema,
            starts,
        })
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Its columns and types.
    pub fn schema(&self) -> &Schema {
        &self.schema
    }

    /// Rows in the file.
    pub fn rows(&self) -> usize {
        *self.starts.last().unwrap()
    }

    /// Row groups in the file.
    pub fn groups(&self) -> usize {
        self.starts.len() - 1
    }

    /// The first row of row group `group` and its length.
    pub fn group_range(&self, group: usize) -> (usize, usize) {
        (
            self.starts[group],
            self.starts[group + 1] - self.starts[group],
        )
    }

    /// Row group `group`, only `columns` that exist (all when `None`).
    pub fn read_group(&self, group: usize, columns: Option<&[&str]>) -> Result<DataFrame> {
        let (start, len) = self.group_range(group);
        let file = std::fs::File::open(&self.path).map_err(io(&self.path))?;
        let mut reader = ParquetReader::new(file);
        reader.set_metadata(self.metadata.clone());
        let columns = columns.map(|names| {
            names
                .iter()
                .filter(|n| self.schema.contains(n))
                .map(|n| n.to_string())
                .collect()
        });
        reader
            .with_slice(Some((start, len)))
            .with_columns(columns)
            .finish()
            .map_err(parquet(&self.path))
    }
}

/// The Parquet files of `path`: the file itself, or those under a folder (sorted, recursively),
/// so an HF dataset folder (`data/train-*.parquet`) reads in shard order.
pub fn parquet_files(path: &Path) -> Result<Vec<PathBuf>> {
    files_with(path, &["parquet"])
}

/// Files under `path` (or `path` itself) whose extension is one of `extensions`, sorted.
pub fn files_with(path: &Path, extensions: &[&str]) -> Result<Vec<PathBuf>> {
    let meta = std::fs::metadata(path).map_err(io(path))?;
    if meta.is_file() {
        return Ok(vec![path.to_path_buf()]);
    }
    let mut found = Vec::new();
    let mut stack = vec![path.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).map_err(io(&dir))? {
            let entry = entry.map_err(io(&dir))?;
            let p = entry.path();
            let hidden = p
                .file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with('.'));
            if hidden {
                continue;
            }
            if p.is_dir() {
                stack.push(p);
            } else if p
                .extension()
                .and_then(|e| e.to_str())
                .is_some_and(|e| extensions.contains(&e))
            {
                found.push(p);
            }
        }
    }
    found.sort();
    if found.is_empty() {
        return Err(crate::error::DataError::NoInput {
            path: path.to_path_buf(),
            what: extensions
                .iter()
                .map(|e| format!(".{e}"))
                .collect::<Vec<_>>()
                .join(" or ")
                + " files",
        });
    }
    Ok(found)
}
