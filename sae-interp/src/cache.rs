//! Latent caching (`sae cache`): runs a model over a dataset with an SAE checkpoint and records
//! every counted token's active latents, sparse, for example sampling, explanation and
//! dashboards (the role of delphi's and Multimodal-SAE's `FeatureCache`).
//!
//! A cache folder holds:
//! - `cache.json` ([`CacheInfo`]): what was cached, each SAE's hook point and the text of
//!   every token id in the cache; written last, so its presence marks a complete cache;
//! - `tokens.safetensors`: `input_ids [tokens]` (each sequence's real tokens, one sequence after
//!   the other), `sequence_starts [sequences + 1]` and `first_rows [sequences, 2]` (the
//!   dataset shard and row each sequence starts with), all int64;
//! - `latents/<hook path>/NNNNN.safetensors`: `locations [n, 3]` (sequence, position in it,
//!   latent; int64) and `activations [n]` (f32), in shards of at most `shard_records`;
//! - `images/NNNNNN.<ext>`: the images of the cached sequences, placed among their tokens in
//!   `cache.json` (see [`image_grid`](crate::image_grid)).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};

use indicatif::{ProgressBar, ProgressStyle};
use sae_activations::{BatchModel, ReadConfig, select_tokens};
use sae_core::folder::{self, FolderLock};
use sae_core::host::{int_to_host, to_host};
use sae_core::paths::{Links, join_inside};
use sae_core::tensor_file::{read_json, write_atomic, write_json, write_tensors};
use sae_core::{
    HookKind, HookPoint, HostTensor, Recorder, SaeBackend, SaeModel, StorageDtype, TensorFile,
};
use sae_data::{Batch, Dataset};
use sae_models::{AnyModel, ImageTokens, Tokenizer};
use serde::{Deserialize, Serialize};

use crate::error::{InterpError, Result};
use crate::image_grid::{ImagePlacement, image_extension, place_images};

/// The cache's description.
pub const CACHE_FILE: &str = "cache.json";
/// The cached token ids.
pub const TOKENS_FILE: &str = "tokens.safetensors";
/// The folder of the latent records, one sub-folder per hook point.
pub const LATENTS_DIR: &str = "latents";

/// What to cache.
#[derive(Debug, Clone, PartialEq)]
pub struct CacheConfig {
    /// Batches to run; `None`: the whole dataset, once.
    pub batches: Option<usize>,
    /// How the data is read, and the tokens recorded.
    pub read: ReadConfig,
    /// Records per shard file.
    pub shard_records: usize,
}

impl Default for CacheConfig {
    fn default() -> Self {
        CacheConfig {
            batches: None,
            read: ReadConfig::default(),
            shard_records: 1 << 23,
        }
    }
}

/// One SAE's part of a cache.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HookCache {
    /// The SAE's dictionary size.
    pub num_latents: usize,
    /// Tokens the SAE saw.
    pub tokens: u64,
    /// Latent activations recorded.
    pub records: u64,
    /// Shard files in `latents/<path>/`.
    pub shards: usize,
}

/// What a cache holds (`cache.json`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CacheInfo {
    /// The SAE checkpoint, as given.
    pub sae: String,
    /// The dataset, as given.
    pub data: String,
    /// Sequences cached.
    pub sequences: usize,
    /// Real tokens cached.
    pub tokens: u64,
    /// The image placeholder id, for a vision-language model.
    pub image_token: Option<i64>,
    /// Per hook point.
    pub hooks: BTreeMap<String, HookCache>,
    /// The text of each token id in the cache (its token string when it decodes to nothing).
    pub vocab: BTreeMap<i64, String>,
    /// The images placed among the cached tokens.
    #[serde(default)]
    pub images: Vec<ImagePlacement>,
}

/// Runs `model` over `data` (one pass, or `config.batches` batches) with the SAEs of `sae_dir`
/// and writes their latents to the new cache folder `out`.
pub fn cache_latents<B: SaeBackend>(
    model: AnyModel<B>,
    sae_dir: &Path,
    data: &Path,
    out: &Path,
    config: &CacheConfig,
    device: &B::Device,
) -> Result<CacheInfo> {
    if config.read.batch_size == 0 || config.shard_records == 0 || config.batches == Some(0) {
        return Err(InterpError::Invalid(
            "batches, the batch size and records per shard must be at least 1".into(),
        ));
    }
    if out.is_file() {
        return Err(InterpError::Invalid(format!(
            "{} is a file, not a folder: give a new folder for the cache",
            out.display()
        )));
    }
    // One writer at a time; what a failed or killed one left beside `out` goes.
    let _lock = FolderLock::acquire(out)?;
    folder::remove_leftovers(out)?;
    if out.exists() && std::fs::read_dir(out).map_or(true, |mut d| d.next().is_some()) {
        return Err(InterpError::OutputExists(out.to_path_buf()));
    }
    // The cache is written beside `out` and moved in whole once complete: a failure or a kill
    // leaves nothing at `out` that blocks the retry.
    let model_context = model.context();
    let mut info = None;
    folder::write_dir_atomically(out, |tmp| {
        let run = Run {
            sae_dir,
            data,
            out: tmp,
            config,
            model_context,
        };
        info = Some(match model {
            AnyModel::Text(lm) => {
                let lm = *lm;
                run.cache(lm.model, &lm.tokenizer, None, device)?
            }
            AnyModel::Vision(vlm) => {
                let images: &dyn ImageTokens = vlm.as_ref();
                run.cache(&vlm.model, &vlm.tokenizer, Some(images), device)?
            }
        });
        Ok::<_, InterpError>(())
    })?;
    Ok(info.expect("a cache written in full has its summary"))
}

/// One `cache_latents` call's inputs.
struct Run<'a> {
    sae_dir: &'a Path,
    data: &'a Path,
    out: &'a Path,
    config: &'a CacheConfig,
    model_context: usize,
}

impl Run<'_> {
    fn cache<B: SaeBackend, M: BatchModel<B>>(
        &self,
        model: M,
        tokenizer: &Tokenizer,
        images: Option<&dyn ImageTokens>,
        device: &B::Device,
    ) -> Result<CacheInfo> {
        let config = self.config;
        let sae_model: SaeModel<B, M> = SaeModel::from_pretrained(model, self.sae_dir, device)?;
        let adapter = &sae_model.adapters()[sae_core::DEFAULT_ADAPTER];
        let (vision, points): (Vec<HookPoint>, Vec<HookPoint>) = (sae_model.hook_points().iter())
            .filter(|p| adapter.saes.contains_key(&p.path))
            .cloned()
            .partition(|p| p.kind == HookKind::Vision);
        for p in &vision {
            tracing::warn!(hook = %p.path, "vision-tower hook points are not cached; skipped");
        }
        if points.is_empty() {
            return Err(InterpError::Unsupported(
                "the SAEs are all on vision-tower hook points, which are not cached: cache a language-model hook point, where image tokens are recorded at their positions".into(),
            ));
        }
        let paths: Vec<String> = points.iter().map(|p| p.path.clone()).collect();
        let dataset = Dataset::open(self.data)?;
        let mut loader = config
            .read
            .loader(&dataset, tokenizer, images, self.model_context)?;
        let filter = config.read.filter(tokenizer);
        let mut writers: Vec<HookWriter> = (paths.iter())
            .map(|p| HookWriter::new(self.out, p, config.shard_records))
            .collect();
        let mut tokens = TokenStore::default();
        let mut placed_images = Vec::new();
        let image_token = images.map(|i| i.image_token());
        let bar = progress_bar(config.batches);
        let mut batches = 0;
        while config.batches.is_none_or(|n| batches < n) {
            let Some(batch) = loader.next_batch()? else {
                break;
            };
            let mut recorder = Recorder::paths(&paths, true);
            let input = M::input(&batch, device);
            M::logits(sae_model.model().forward_hooked(input, &mut recorder))?;
            let places = tokens.push(&batch);
            if let Some(model) = images {
                let first = tokens.sequences() - batch.batch_size;
                for placed in place_images(&batch, model) {
                    let n = placed_images.len();
                    let file = format!("images/{n:06}.{}", image_extension(placed.bytes));
                    write_atomic(&self.out.join(&file), placed.bytes)?;
                    placed_images.push(ImagePlacement {
                        file,
                        sequence: first + placed.batch_sequence,
                        ..placed.placement
                    });
                }
            }
            let counted = filter.select(&batch.input_ids, &batch.attention_mask, batch.seq_len);
            let outputs = recorder.outputs(&paths);
            for ((out, path), writer) in outputs.into_iter().zip(&paths).zip(&mut writers) {
                // A batch whose tokens all left out records nothing.
                let Some(out) = out.filter(|_| !counted.is_empty()) else {
                    continue;
                };
                let latents = adapter.saes[path].encode(select_tokens(out, &counted))?;
                let values = to_host(latents.values);
                let indices = int_to_host(latents.indices);
                let width = values.len() / counted.len();
                for (j, &flat) in counted.iter().enumerate() {
                    let (sequence, position) = places[flat as usize];
                    for slot in j * width..(j + 1) * width {
                        if values[slot] != 0.0 && indices[slot] >= 0 {
                            writer.push([sequence, position, indices[slot]], values[slot])?;
                        }
                    }
                }
                writer.tokens += counted.len() as u64;
            }
            batches += 1;
            bar.inc(1);
            bar.set_message(format!("{} sequences", tokens.sequences()));
        }
        bar.finish_and_clear();
        if tokens.sequences() == 0 {
            return Err(InterpError::NoData(self.data.to_path_buf()));
        }
        let mut hooks = BTreeMap::new();
        for (mut writer, path) in writers.into_iter().zip(&paths) {
            writer.flush()?;
            let num_latents = adapter.saes[path].num_latents();
            hooks.insert(path.clone(), writer.summary(num_latents));
        }
        tokens.write(&self.out.join(TOKENS_FILE))?;
        let info = CacheInfo {
            sae: self.sae_dir.display().to_string(),
            data: self.data.display().to_string(),
            sequences: tokens.sequences(),
            tokens: tokens.input_ids.len() as u64,
            image_token,
            hooks,
            vocab: vocab(tokenizer, &tokens.input_ids),
            images: placed_images,
        };
        write_json(&self.out.join(CACHE_FILE), &info)?;
        Ok(info)
    }
}

/// The progress bar: batches when their number is known, else a spinner.
fn progress_bar(batches: Option<usize>) -> ProgressBar {
    if !std::io::IsTerminal::is_terminal(&std::io::stderr()) {
        return ProgressBar::hidden();
    }
    let (bar, template) = match batches {
        Some(n) => (
            ProgressBar::new(n as u64),
            "{bar:30} {pos}/{len} batches [{elapsed_precise}<{eta_precise}] {msg}",
        ),
        None => (
            ProgressBar::new_spinner(),
            "{spinner} {pos} batches [{elapsed_precise}] {msg}",
        ),
    };
    bar.set_style(ProgressStyle::with_template(template).expect("a valid template"));
    bar
}

/// The text of every distinct id in `ids`.
fn vocab(tokenizer: &Tokenizer, ids: &[i64]) -> BTreeMap<i64, String> {
    let distinct: BTreeSet<i64> = ids.iter().copied().collect();
    (distinct.into_iter())
        .map(|id| {
            let text = tokenizer.decode(&[id]).unwrap_or_default();
            let text = match text.is_empty() {
                true => tokenizer.token(id).unwrap_or_default(),
                false => text,
            };
            (id, text)
        })
        .collect()
}

/// The cached sequences' real tokens.
#[derive(Default)]
struct TokenStore {
    input_ids: Vec<i64>,
    starts: Vec<i64>,
    first_rows: Vec<i64>,
}

impl TokenStore {
    fn sequences(&self) -> usize {
        self.first_rows.len() / 2
    }

    /// Stores `batch`'s real tokens; returns the (sequence, position) of each of its
    /// `[batch, seq_len]` slots (padding slots get their sequence's next position, unused).
    fn push(&mut self, batch: &Batch) -> Vec<(i64, i64)> {
        if self.starts.is_empty() {
            self.starts.push(0);
        }
        let mut places = Vec::with_capacity(batch.input_ids.len());
        let t = batch.seq_len;
        for s in 0..batch.batch_size {
            let sequence = self.sequences() as i64;
            let mut position = 0;
            for i in s * t..(s + 1) * t {
                places.push((sequence, position));
                if batch.attention_mask[i] != 0 {
                    self.input_ids.push(batch.input_ids[i]);
                    position += 1;
                }
            }
            self.starts.push(self.input_ids.len() as i64);
            let first = batch.rows[s]
                .first()
                .map_or([-1, -1], |r| [r.shard as i64, r.row as i64]);
            self.first_rows.extend(first);
        }
        places
    }

    fn write(&self, path: &Path) -> Result<()> {
        let n = self.sequences();
        let tensors = [
            (
                "input_ids",
                HostTensor::i64(vec![self.input_ids.len()], self.input_ids.clone()),
            ),
            (
                "sequence_starts",
                HostTensor::i64(vec![n + 1], self.starts.clone()),
            ),
            (
                "first_rows",
                HostTensor::i64(vec![n, 2], self.first_rows.clone()),
            ),
        ]
        .map(|(name, t)| (name.to_string(), t));
        Ok(write_tensors(path, &tensors, StorageDtype::F32, None)?)
    }
}

/// Writes one hook point's records in shards.
struct HookWriter {
    dir: PathBuf,
    shard_records: usize,
    locations: Vec<i64>,
    activations: Vec<f32>,
    shards: usize,
    records: u64,
    tokens: u64,
}

impl HookWriter {
    fn new(out: &Path, path: &str, shard_records: usize) -> Self {
        HookWriter {
            dir: out.join(LATENTS_DIR).join(path),
            shard_records,
            locations: Vec::new(),
            activations: Vec::new(),
            shards: 0,
            records: 0,
            tokens: 0,
        }
    }

    fn push(&mut self, location: [i64; 3], activation: f32) -> Result<()> {
        self.locations.extend(location);
        self.activations.push(activation);
        self.records += 1;
        if self.activations.len() >= self.shard_records {
            self.flush()?;
        }
        Ok(())
    }

    /// Writes the records held to the next shard file (none when there are none, unless no
    /// shard was written yet: every hook point has at least one).
    fn flush(&mut self) -> Result<()> {
        if self.activations.is_empty() && self.shards > 0 {
            return Ok(());
        }
        let n = self.activations.len();
        let locations = std::mem::take(&mut self.locations);
        let activations = std::mem::take(&mut self.activations);
        let tensors = [
            (
                "locations".to_string(),
                HostTensor::i64(vec![n, 3], locations),
            ),
            (
                "activations".to_string(),
                HostTensor::f32(vec![n], activations),
            ),
        ];
        let file = self.dir.join(shard_name(self.shards));
        write_tensors(&file, &tensors, StorageDtype::F32, None)?;
        self.shards += 1;
        Ok(())
    }

    fn summary(&self, num_latents: usize) -> HookCache {
        HookCache {
            num_latents,
            tokens: self.tokens,
            records: self.records,
            shards: self.shards,
        }
    }
}

/// The file name of shard `i`.
fn shard_name(i: usize) -> String {
    format!("{i:05}.safetensors")
}

/// A cache folder, opened for reading.
#[derive(Debug, Clone)]
pub struct Cache {
    /// The folder.
    pub dir: PathBuf,
    /// Its `cache.json`.
    pub info: CacheInfo,
    /// Every sequence's real tokens, one sequence after the other.
    pub input_ids: Vec<i64>,
    /// Where each sequence starts in `input_ids` (and, last, where the last one ends).
    pub sequence_starts: Vec<usize>,
    /// The indices in `info.images` of each sequence's images.
    images_by_sequence: HashMap<usize, Vec<usize>>,
}

/// One hook point's latent records.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Records {
    /// `(sequence, position, latent)` of each record.
    pub locations: Vec<[usize; 3]>,
    /// The activation of each record.
    pub activations: Vec<f32>,
}

impl Cache {
    /// Opens the cache in `dir`; an error says when it is not a complete cache.
    pub fn open(dir: &Path) -> Result<Self> {
        let info_file = dir.join(CACHE_FILE);
        if !info_file.is_file() {
            return Err(InterpError::NotACache(dir.to_path_buf()));
        }
        let info: CacheInfo = read_json(&info_file)?;
        let file = TensorFile::open(dir.join(TOKENS_FILE))?;
        let input_ids = ints(&file, "input_ids", None)?;
        let corrupt = |what: &str| InterpError::Corrupt(format!("{}: {what}", info_file.display()));
        let count =
            (info.sequences.checked_add(1)).ok_or_else(|| corrupt("impossible sequences"))?;
        let starts = ints(&file, "sequence_starts", Some(&[count]))?;
        let sequence_starts: Vec<usize> = starts.iter().map(|&s| s as usize).collect();
        let ordered = sequence_starts.windows(2).all(|w| w[0] <= w[1]);
        if !ordered || sequence_starts.last() != Some(&input_ids.len()) {
            return Err(InterpError::Corrupt(format!(
                "{}: sequence_starts does not partition input_ids",
                file.path().display()
            )));
        }
        let mut images_by_sequence: HashMap<usize, Vec<usize>> = HashMap::new();
        for (i, image) in info.images.iter().enumerate() {
            let s = image.sequence;
            let fits = s < info.sequences
                && image.cols <= image.stride
                && (image.end())
                    .is_some_and(|end| end <= sequence_starts[s + 1] - sequence_starts[s]);
            if !fits || !inside(dir, "", "image", &image.file)?.is_file() {
                return Err(corrupt(&format!(
                    "image {} does not exist or lies outside its sequence",
                    image.file
                )));
            }
            images_by_sequence.entry(s).or_default().push(i);
        }
        for hook in info.hooks.keys() {
            inside(dir, LATENTS_DIR, "hook point", hook)?;
        }
        Ok(Cache {
            dir: dir.to_path_buf(),
            info,
            input_ids,
            sequence_starts,
            images_by_sequence,
        })
    }

    /// The image (its index in `info.images`) and grid cell at position `p` of sequence `s`,
    /// if that token is one of an image's.
    pub fn image_at(&self, s: usize, p: usize) -> Option<(usize, usize)> {
        let images = self.images_by_sequence.get(&s)?;
        (images.iter()).find_map(|&i| self.info.images[i].cell(p).map(|cell| (i, cell)))
    }

    /// The file of image `image` (its index in `info.images`), checked to lie inside the cache.
    pub fn image_file(&self, image: usize) -> Result<PathBuf> {
        inside(&self.dir, "", "image", &self.info.images[image].file)
    }

    /// The real tokens of sequence `s`.
    pub fn sequence(&self, s: usize) -> &[i64] {
        &self.input_ids[self.sequence_starts[s]..self.sequence_starts[s + 1]]
    }

    /// The text of token `id`.
    pub fn text(&self, id: i64) -> &str {
        self.info.vocab.get(&id).map_or("", String::as_str)
    }

    /// Every record of the SAE at `hook`, checked against the sequences and the dictionary.
    pub fn records(&self, hook: &str) -> Result<Records> {
        let Some(meta) = self.info.hooks.get(hook) else {
            let hooks: Vec<&str> = self.info.hooks.keys().map(String::as_str).collect();
            return Err(InterpError::Invalid(format!(
                "the cache has no hook point {hook:?}; it has {}",
                hooks.join(", ")
            )));
        };
        let hook_dir = inside(&self.dir, LATENTS_DIR, "hook point", hook)?;
        let mut records = Records::default();
        for i in 0..meta.shards {
            let file = TensorFile::open(hook_dir.join(shard_name(i)))?;
            let activations = file.get("activations")?.to_f32();
            let n = activations.len();
            let locations = ints(&file, "locations", Some(&[n, 3]))?;
            for l in locations.chunks_exact(3) {
                let [s, p, latent] =
                    [l[0], l[1], l[2]].map(|v| usize::try_from(v).unwrap_or(usize::MAX));
                let in_sequence = s < self.info.sequences
                    && p < self.sequence_starts[s + 1] - self.sequence_starts[s];
                if !in_sequence || latent >= meta.num_latents {
                    return Err(InterpError::Corrupt(format!(
                        "{}: location {l:?} is outside the cached sequences or the dictionary",
                        file.path().display()
                    )));
                }
                records.locations.push([s, p, latent]);
            }
            records.activations.extend(activations);
        }
        Ok(records)
    }
}

/// `dir/under/name` for a `what` (image, hook point) that `cache.json` names, refused when it
/// leaves the folder `dir/under` of the cache `dir` or passes through a symbolic link.
fn inside(dir: &Path, under: &str, what: &str, name: &str) -> Result<PathBuf> {
    join_inside(&dir.join(under), name, Links::Refuse).map_err(|escape| {
        InterpError::Corrupt(format!(
            "{}: {what} {name:?} {escape}; a cache reads only files inside its folder",
            dir.join(CACHE_FILE).display()
        ))
    })
}

/// The int64 tensor `name` of `file` (of `shape`, when given).
fn ints(file: &TensorFile, name: &str, shape: Option<&[usize]>) -> Result<Vec<i64>> {
    let t = match shape {
        Some(shape) => file.get_shaped(name, shape)?,
        None => file.get(name)?,
    };
    t.as_i64().map(<[i64]>::to_vec).ok_or_else(|| {
        InterpError::Corrupt(format!(
            "{}: {name} is not an integer tensor",
            file.path().display()
        ))
    })
}
