//! A standard dataset read as a stream: row groups read lazily (memory bounded by one shuffle
//! window), shuffled deterministically by seed, split across ranks, resumable from a cursor.
//!
//! Each epoch permutes the row groups of all shards, cuts them into windows of
//! [`StreamConfig::window`] groups, and permutes the rows of each window; rank `r` of `w` takes
//! the window's rows `r, r + w, r + 2w, ...` (the last `n mod w` rows are left out when `w > 1`,
//! so every rank sees as many rows). The position in that order is the [`Cursor`].

use std::path::{Path, PathBuf};

use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;
use sae_core::paths::{Links, join_inside};
use serde::{Deserialize, Serialize};

use crate::convert::OnError;
use crate::error::{DataError, Result, RowProblem};
use crate::parquet_file::{ParquetFile, parquet_files};
use crate::record::{Record, RowResult};
use crate::table::{Kind, Reader};
use crate::writer::{DatasetInfo, INFO_FILE};

/// A row's place in the dataset: its shard and its index there.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct RowId {
    /// Index of the shard file.
    pub shard: usize,
    /// Row index within the shard.
    pub row: usize,
}

/// A standard dataset on disk (or any Parquet files in its layout).
#[derive(Debug, Clone)]
pub struct Dataset {
    root: PathBuf,
    shards: Vec<ParquetFile>,
    kind: Kind,
    /// `(shard, row group)` of every row group, in shard order.
    groups: Vec<(usize, usize)>,
}

impl Dataset {
    /// Opens a dataset folder (its `sae_dataset.json` shard list, else every Parquet file under
    /// it) or one Parquet file; reads only the footers.
    pub fn open(path: &Path) -> Result<Self> {
        let info_path = path.join(INFO_FILE);
        let files = if info_path.is_file() {
            let text = std::fs::read_to_string(&info_path).map_err(crate::error::io(&info_path))?;
            let info: DatasetInfo =
                serde_json::from_str(&text).map_err(|e| DataError::Invalid {
                    path: info_path.clone(),
                    reason: e.to_string(),
                })?;
            let inside = |shard: &String| {
                join_inside(path, shard, Links::Refuse).map_err(|escape| DataError::Invalid {
                    path: info_path.clone(),
                    reason: format!(
                        "shard {shard:?} {escape}; a dataset reads only files inside its folder"
                    ),
                })
            };
            info.shards.iter().map(inside).collect::<Result<_>>()?
        } else {
            parquet_files(path)?
        };
        if files.is_empty() {
            return Err(DataError::NoInput {
                path: path.to_path_buf(),
                what: "shards".into(),
            });
        }
        let shards = files
            .iter()
            .map(|f| ParquetFile::open(f))
            .collect::<Result<Vec<_>>>()?;
        let kind = crate::table::kind_of(shards[0].path(), shards[0].schema())?;
        for shard in &shards[1..] {
            let other = crate::table::kind_of(shard.path(), shard.schema())?;
            if other != kind {
                return Err(DataError::Invalid {
                    path: shard.path().to_path_buf(),
                    reason: format!(
                        "it holds {other:?} rows but the first shard holds {kind:?} rows"
                    ),
                });
            }
        }
        let groups = shards
            .iter()
            .enumerate()
            .flat_map(|(s, f)| (0..f.groups()).map(move |g| (s, g)))
            .collect();
        Ok(Dataset {
            root: path.to_path_buf(),
            shards,
            kind,
            groups,
        })
    }

    /// Where it was opened from.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Text or chat rows.
    pub fn kind(&self) -> Kind {
        self.kind
    }

    /// Rows in all shards.
    pub fn rows(&self) -> usize {
        self.shards.iter().map(ParquetFile::rows).sum()
    }

    /// The shard files.
    pub fn shards(&self) -> &[ParquetFile] {
        &self.shards
    }

    /// The rows of one row group (`groups` index), each a record or why it is unusable.
    fn read_group(&self, index: usize) -> Result<Vec<(RowId, RowResult)>> {
        let (shard, group) = self.groups[index];
        let file = &self.shards[shard];
        let frame = file.read_group(group, None)?;
        let first = file.group_range(group).0;
        let records = Reader::new(file.path(), &frame)?.records()?;
        Ok(records
            .into_iter()
            .enumerate()
            .map(|(i, r)| {
                (
                    RowId {
                        shard,
                        row: first + i,
                    },
                    r,
                )
            })
            .collect())
    }

    /// The error for a bad row.
    pub(crate) fn bad_row(&self, id: RowId, reason: RowProblem) -> DataError {
        DataError::BadRow {
            path: self.shards[id.shard].path().to_path_buf(),
            row: id.row,
            reason,
        }
    }

    /// A stream over the rows from the start.
    pub fn stream(&self, config: StreamConfig) -> Result<Stream<'_>> {
        self.stream_from(config, None)
    }

    /// A stream that continues exactly where `cursor` (from [`Stream::cursor`]) left off.
    pub fn stream_from(&self, config: StreamConfig, cursor: Option<Cursor>) -> Result<Stream<'_>> {
        if config.world_size == 0 || config.rank >= config.world_size || config.window == 0 {
            return Err(DataError::Cursor(format!(
                "rank {} of world size {} with windows of {} row groups is not a valid split",
                config.rank, config.world_size, config.window
            )));
        }
        let fingerprint = Fingerprint {
            rows: self.rows(),
            groups: self.groups.len(),
            seed: config.seed,
            shuffle: config.shuffle,
            window: config.window,
            rank: config.rank,
            world_size: config.world_size,
        };
        let position = match cursor {
            None => Position::default(),
            Some(c) if c.fingerprint == fingerprint => c.position,
            Some(c) => {
                return Err(DataError::Cursor(format!(
                    "it was saved for {:?}, the stream is {:?}",
                    c.fingerprint, fingerprint
                )));
            }
        };
        Ok(Stream {
            dataset: self,
            config,
            fingerprint,
            position,
            order: None,
            window: None,
            skipped: 0,
            empty_epoch: false,
        })
    }
}

/// How a stream orders and splits rows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StreamConfig {
    /// Seeds the shuffles.
    pub seed: u64,
    /// Shuffle row groups and rows (else rows come in file order).
    pub shuffle: bool,
    /// Row groups per shuffle window (the memory bound).
    pub window: usize,
    /// This process's rank.
    pub rank: usize,
    /// How many ranks share the data.
    pub world_size: usize,
    /// Passes over the data; `None` repeats forever.
    pub epochs: Option<u64>,
    /// Rows that cannot be used: fail or skip (counted).
    pub on_error: OnError,
}

impl Default for StreamConfig {
    fn default() -> Self {
        StreamConfig {
            seed: 0,
            shuffle: true,
            window: 8,
            rank: 0,
            world_size: 1,
            epochs: Some(1),
            on_error: OnError::Fail,
        }
    }
}

/// What a cursor must match to be resumed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Fingerprint {
    rows: usize,
    groups: usize,
    seed: u64,
    shuffle: bool,
    window: usize,
    rank: usize,
    world_size: usize,
}

/// Where a stream is: epoch, window, and the next row of this rank in that window.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
struct Position {
    epoch: u64,
    window: usize,
    offset: usize,
}

/// A stream's saved place (serialisable into a training checkpoint).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cursor {
    fingerprint: Fingerprint,
    position: Position,
}

/// One row from a stream.
#[derive(Debug, Clone, PartialEq)]
pub struct Example {
    /// Where it is stored.
    pub id: RowId,
    /// Its content.
    pub record: Record,
}

/// A loaded window: its epoch, its index and this rank's rows in order.
type Window = (u64, usize, Vec<(RowId, RowResult)>);

/// An iterator over a rank's rows in a deterministic order.
pub struct Stream<'a> {
    dataset: &'a Dataset,
    config: StreamConfig,
    fingerprint: Fingerprint,
    position: Position,
    /// The epoch whose row-group order is cached, and that order.
    order: Option<(u64, Vec<usize>)>,
    /// The window whose rows (this rank's, in order) are loaded.
    window: Option<Window>,
    skipped: usize,
    /// A whole epoch, read from its start, has given no usable row so far.
    empty_epoch: bool,
}

/// A generator seeded by the stream seed and a purpose (`epoch`, `window`).
fn rng(seed: u64, epoch: u64, window: u64) -> ChaCha8Rng {
    let mut key = [0u8; 32];
    key[..8].copy_from_slice(&seed.to_le_bytes());
    key[8..16].copy_from_slice(&epoch.to_le_bytes());
    key[16..24].copy_from_slice(&window.to_le_bytes());
    ChaCha8Rng::from_seed(key)
}

impl Stream<'_> {
    /// Where the stream is now: resuming from it yields exactly the rows not yet yielded.
    pub fn cursor(&self) -> Cursor {
        Cursor {
            fingerprint: self.fingerprint,
            position: self.position,
        }
    }

    /// The dataset read.
    pub fn dataset(&self) -> &Dataset {
        self.dataset
    }

    /// How it orders and splits rows.
    pub fn config(&self) -> &StreamConfig {
        &self.config
    }

    /// Rows skipped so far as unusable (with [`OnError::Skip`]).
    pub fn skipped(&self) -> usize {
        self.skipped
    }

    /// The epoch being read.
    pub fn epoch(&self) -> u64 {
        self.position.epoch
    }

    /// The row-group order of the current epoch.
    fn order(&mut self) -> &[usize] {
        let epoch = self.position.epoch;
        if self.order.as_ref().is_none_or(|(e, _)| *e != epoch) {
            let mut order: Vec<usize> = (0..self.dataset.groups.len()).collect();
            if self.config.shuffle {
                order.shuffle(&mut rng(self.config.seed, epoch, u64::MAX));
            }
            self.order = Some((epoch, order));
        }
        &self.order.as_ref().unwrap().1
    }

    /// Loads this rank's rows of the current window.
    fn load_window(&mut self) -> Result<()> {
        let (epoch, window) = (self.position.epoch, self.position.window);
        if self
            .window
            .as_ref()
            .is_some_and(|(e, w, _)| (*e, *w) == (epoch, window))
        {
            return Ok(());
        }
        let size = self.config.window;
        let groups: Vec<usize> = self
            .order()
            .iter()
            .skip(window * size)
            .take(size)
            .copied()
            .collect();
        let mut rows = Vec::new();
        for group in groups {
            rows.extend(self.dataset.read_group(group)?);
        }
        if self.config.shuffle {
            rows.shuffle(&mut rng(self.config.seed, epoch, window as u64));
        }
        let world = self.config.world_size;
        let usable = rows.len() - if world > 1 { rows.len() % world } else { 0 };
        let mine = rows
            .into_iter()
            .take(usable)
            .skip(self.config.rank)
            .step_by(world)
            .collect();
        self.window = Some((epoch, window, mine));
        Ok(())
    }

    fn windows(&self) -> usize {
        self.dataset.groups.len().div_ceil(self.config.window)
    }

    fn next_row(&mut self) -> Result<Option<Example>> {
        loop {
            if self.config.epochs.is_some_and(|e| self.position.epoch >= e) {
                return Ok(None);
            }
            if self.position.window >= self.windows() {
                // Another pass over data that gave nothing would give nothing again.
                if self.empty_epoch {
                    return Ok(None);
                }
                self.empty_epoch = true;
                self.position = Position {
                    epoch: self.position.epoch + 1,
                    ..Position::default()
                };
                continue;
            }
            self.load_window()?;
            let rows = &self.window.as_ref().unwrap().2;
            let Some((id, record)) = rows.get(self.position.offset).cloned() else {
                self.position.window += 1;
                self.position.offset = 0;
                continue;
            };
            self.position.offset += 1;
            match record {
                Ok(record) => {
                    self.empty_epoch = false;
                    return Ok(Some(Example { id, record }));
                }
                Err(_) if self.config.on_error == OnError::Skip => self.skipped += 1,
                Err(reason) => return Err(self.dataset.bad_row(id, reason)),
            }
        }
    }
}

impl Iterator for Stream<'_> {
    type Item = Result<Example>;

    fn next(&mut self) -> Option<Self::Item> {
        self.next_row().transpose()
    }
}
