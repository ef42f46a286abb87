//! Writes records as a standard dataset: Parquet shards in the Hugging Face layout
//! (`data/train-00000-of-00004.parquet`) plus `sae_dataset.json`.

use std::path::{Path, PathBuf};

use polars::prelude::{ParquetWriter, StatisticsOptions};
use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::error::{Result, io, parquet};
use crate::record::{Body, Record};
use crate::table::{Kind, to_frame};

/// The file that describes a written dataset.
pub const INFO_FILE: &str = "sae_dataset.json";

/// How shards are cut.
#[derive(Debug, Clone)]
pub struct ShardOptions {
    /// The split name in file names (`train`).
    pub split: String,
    /// Most rows in one shard file.
    pub rows_per_shard: usize,
    /// Most encoded bytes (text and images) buffered for one shard.
    pub bytes_per_shard: usize,
    /// Rows per Parquet row group: the unit the loader reads and shuffles.
    pub rows_per_group: Option<usize>,
    /// Shuffle each shard's rows with this seed before writing.
    pub seed: Option<u64>,
}

impl Default for ShardOptions {
    fn default() -> Self {
        ShardOptions {
            split: "train".into(),
            rows_per_shard: 10_000,
            bytes_per_shard: 512 << 20,
            rows_per_group: None,
            seed: None,
        }
    }
}

/// `sae_dataset.json`: what a standard dataset holds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DatasetInfo {
    /// Text or chat rows.
    pub kind: Kind,
    /// Rows in all shards.
    pub rows: usize,
    /// Shard files, relative to the dataset folder.
    pub shards: Vec<String>,
    /// What it was converted from (`llava-ov`, `text`, `easy-vqa`).
    pub converted_from: String,
}

/// Buffers records and writes them shard by shard.
pub struct ShardWriter {
    dir: PathBuf,
    kind: Kind,
    options: ShardOptions,
    buffer: Vec<Record>,
    buffered_bytes: usize,
    written: Vec<(PathBuf, usize)>,
    rng: Option<ChaCha8Rng>,
}

impl ShardWriter {
    /// A writer into `dir/data/` (created) for rows of `kind`.
    pub fn new(dir: &Path, kind: Kind, options: ShardOptions) -> Result<Self> {
        let data = dir.join("data");
        std::fs::create_dir_all(&data).map_err(io(&data))?;
        Ok(ShardWriter {
            dir: dir.to_path_buf(),
            kind,
            rng: options.seed.map(ChaCha8Rng::seed_from_u64),
            options,
            buffer: Vec::new(),
            buffered_bytes: 0,
            written: Vec::new(),
        })
    }

    /// Adds one record (written when its shard is full).
    pub fn push(&mut self, record: Record) -> Result<()> {
        self.buffered_bytes += record_bytes(&record);
        self.buffer.push(record);
        if self.buffer.len() >= self.options.rows_per_shard
            || self.buffered_bytes >= self.options.bytes_per_shard
        {
            self.flush()?;
        }
        Ok(())
    }

    /// Rows pushed so far.
    pub fn rows(&self) -> usize {
        self.written.iter().map(|(_, n)| n).sum::<usize>() + self.buffer.len()
    }

    fn flush(&mut self) -> Result<()> {
        if self.buffer.is_empty() {
            return Ok(());
        }
        if let Some(rng) = &mut self.rng {
            self.buffer.shuffle(rng);
        }
        let path = self.dir.join("data").join(format!(
            ".{}-{:05}.partial",
            self.options.split,
            self.written.len()
        ));
        let mut frame = to_frame(&self.buffer, self.kind).map_err(parquet(&path))?;
        let rows_per_group = self.options.rows_per_group.unwrap_or(match self.kind {
            Kind::Text => 1024,
            Kind::Chat => 128,
        });
        let file = std::fs::File::create(&path).map_err(io(&path))?;
        ParquetWriter::new(file)
            .with_row_group_size(Some(rows_per_group))
            .with_statistics(StatisticsOptions::empty())
            .finish(&mut frame)
            .map_err(parquet(&path))?;
        self.written.push((path, self.buffer.len()));
        self.buffer.clear();
        self.buffered_bytes = 0;
        Ok(())
    }

    /// Removes the shards written so far (a run that failed leaves nothing behind).
    pub fn abandon(self) {
        for (partial, _) in &self.written {
            let _ = std::fs::remove_file(partial);
        }
    }

    /// Writes the last shard, names the shards `{split}-{i}-of-{n}.parquet` and writes
    /// `sae_dataset.json`.
    pub fn finish(mut self, converted_from: &str) -> Result<DatasetInfo> {
        self.flush()?;
        let n = self.written.len();
        let mut shards = Vec::with_capacity(n);
        for (i, (partial, _)) in self.written.iter().enumerate() {
            let name = format!("data/{}-{i:05}-of-{n:05}.parquet", self.options.split);
            let path = self.dir.join(&name);
            std::fs::rename(partial, &path).map_err(io(&path))?;
            shards.push(name);
        }
        let info = DatasetInfo {
            kind: self.kind,
            rows: self.written.iter().map(|(_, n)| n).sum(),
            shards,
            converted_from: converted_from.into(),
        };
        let path = self.dir.join(INFO_FILE);
        let json = serde_json::to_vec_pretty(&info).expect("the info serialises");
        std::fs::write(&path, json).map_err(io(&path))?;
        Ok(info)
    }
}

/// The encoded size of a record (its texts and images).
pub(crate) fn record_bytes(record: &Record) -> usize {
    match &record.body {
        Body::Text(text) => text.len(),
        Body::Chat { messages, images } => {
            let text: usize = messages
                .iter()
                .flat_map(|t| &t.content)
                .map(|p| match p {
                    crate::record::Part::Text(t) => t.len(),
                    crate::record::Part::Image => 0,
                })
                .sum();
            text + images.iter().map(Vec::len).sum::<usize>()
        }
    }
}
