//! Batches for training and caching: a stream's rows through a model's tokenizer (and chat
//! template), either packed into fixed-length contexts (text, as sparsify and SAELens do) or
//! one row per sequence, right-padded, with attention masks.

use serde::{Deserialize, Serialize};

use crate::convert::OnError;
use crate::dataset::{Cursor, Dataset, RowId, Stream, StreamConfig};
use crate::error::{DataError, Result, RowProblem};
use crate::record::{Body, Record, decode_images, to_chat_messages};
use crate::table::Kind;
use sae_models::{ImageTokens, ProcessedImages, Tokenizer, expand_image_tokens};

/// How rows become sequences.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Batching {
    /// Documents joined by the end-of-sequence token (which also starts the stream), cut into
    /// contexts of exactly `context` tokens; the tail that does not fill a context is carried
    /// into the next one (sparsify's `chunk_and_tokenize`, streamed).
    Pack { context: usize },
    /// One row per sequence, padded on the right to the longest of the batch; rows longer than
    /// `max_len` are cut when `truncate`, else rejected (fail or skip, as the stream's
    /// `on_error`).
    Pad { max_len: usize, truncate: bool },
}

impl Batching {
    /// How rows of `kind` are batched: text packed into `context`-token contexts, chats one per
    /// sequence up to `max_len` tokens (cut when `truncate`).
    pub fn for_kind(kind: Kind, context: usize, max_len: usize, truncate: bool) -> Self {
        match kind {
            Kind::Text => Batching::Pack { context },
            Kind::Chat => Batching::Pad { max_len, truncate },
        }
    }
}

/// A batch of token sequences, row-major `[batch, seq_len]`.
#[derive(Debug, Clone, PartialEq)]
pub struct Batch {
    /// Token ids, padding included.
    pub input_ids: Vec<i64>,
    /// 1 for real tokens, 0 for padding.
    pub attention_mask: Vec<i64>,
    /// Sequences in the batch.
    pub batch_size: usize,
    /// Tokens per sequence.
    pub seq_len: usize,
    /// The rows each sequence holds (packed contexts may span several).
    pub rows: Vec<Vec<RowId>>,
    /// The encoded images of each sequence's row, for a model's image processor.
    pub images: Vec<Vec<Vec<u8>>>,
    /// With [`Loader::with_image_tokens`]: every sequence's images processed, one after the
    /// other, their placeholders in `input_ids` expanded.
    pub vision: Option<ProcessedImages>,
}

impl Batch {
    /// Real (unpadded) tokens in the batch.
    pub fn tokens(&self) -> usize {
        self.attention_mask.iter().filter(|&&m| m != 0).count()
    }
}

/// A loader's saved place: the stream's cursor and the packed tokens not yet emitted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LoaderCursor {
    stream: Cursor,
    carry: Vec<i64>,
    carry_rows: Vec<(RowId, usize)>,
}

/// Batches from a dataset through a tokenizer.
pub struct Loader<'a> {
    stream: Stream<'a>,
    tokenizer: &'a Tokenizer,
    batch_size: usize,
    batching: Batching,
    separator: Option<i64>,
    carry: Vec<i64>,
    carry_rows: Vec<(RowId, usize)>,
    /// Rows the loader itself skipped (too long, or images the processor refuses).
    rejected: usize,
    image_tokens: Option<&'a dyn ImageTokens>,
    /// Yield the complete sequences of a last partial batch instead of dropping them.
    last_partial: bool,
    /// This reader's part of each batch (data-parallel training): `(rank, ranks)`.
    shard: (usize, usize),
}

impl<'a> Loader<'a> {
    /// A loader from the start of `dataset` (or from `cursor`).
    pub fn new(
        dataset: &'a Dataset,
        tokenizer: &'a Tokenizer,
        stream: StreamConfig,
        batching: Batching,
        batch_size: usize,
        cursor: Option<LoaderCursor>,
    ) -> Result<Self> {
        let tokens = match batching {
            Batching::Pack { context } => context,
            Batching::Pad { max_len, .. } => max_len,
        };
        if batch_size == 0 || tokens == 0 {
            return Err(DataError::Batching(format!(
                "{batch_size} sequences of at most {tokens} tokens: both must be at least 1"
            )));
        }
        let (stream_cursor, carry, carry_rows) = match cursor {
            Some(c) => (Some(c.stream), c.carry, c.carry_rows),
            None => (None, Vec::new(), Vec::new()),
        };
        // Every carried token belongs to a row that starts at or before it.
        if carry_rows
            .first()
            .map_or(!carry.is_empty(), |&(_, start)| start != 0)
            || carry_rows.iter().any(|&(_, start)| start > carry.len())
        {
            return Err(DataError::Cursor(
                "its carried tokens and their rows do not match".into(),
            ));
        }
        let separator = match batching {
            Batching::Pack { .. } => Some(tokenizer.eos_token_id().ok_or_else(|| {
                DataError::Cursor("packing needs the tokenizer's end-of-sequence token".into())
            })?),
            Batching::Pad { .. } => None,
        };
        Ok(Loader {
            stream: dataset.stream_from(stream, stream_cursor)?,
            tokenizer,
            batch_size,
            batching,
            separator,
            carry,
            carry_rows,
            rejected: 0,
            image_tokens: None,
            last_partial: false,
            shard: (0, 1),
        })
    }

    /// Yields only part `rank` of `ranks` equal parts of each batch (data-parallel training,
    /// one reader per rank): the batch's sequences `[rank b, (rank + 1) b)` with `b =
    /// batch_size / ranks`. Every rank reads the same stream, so the cursor is the same on all
    /// and does not depend on how many ranks read it.
    pub fn with_shard(mut self, rank: usize, ranks: usize) -> Result<Self> {
        if ranks == 0 || rank >= ranks || !self.batch_size.is_multiple_of(ranks) {
            return Err(DataError::Batching(format!(
                "a batch of {} sequences cannot be split into {ranks} equal parts (part {rank})",
                self.batch_size
            )));
        }
        self.shard = (rank, ranks);
        Ok(self)
    }

    /// The range of a batch of `sequences` that this reader keeps.
    fn own_part(&self, sequences: usize) -> std::ops::Range<usize> {
        let (rank, ranks) = self.shard;
        let part = sequences.div_ceil(ranks);
        (rank * part).min(sequences)..((rank + 1) * part).min(sequences)
    }

    /// Processes each row's images with a vision-language model's processor and expands their
    /// placeholders (padded batching only), as transformers' processor does.
    pub fn with_image_tokens(mut self, processor: &'a dyn ImageTokens) -> Self {
        self.image_tokens = Some(processor);
        self
    }

    /// At the end of the data, yields the complete sequences left as one smaller batch instead
    /// of dropping them (reading a dataset once: evaluation, caching). Packed tokens short of a
    /// whole context are still dropped.
    pub fn with_last_partial_batch(mut self) -> Self {
        self.last_partial = true;
        self
    }

    /// Where the loader is: resuming from it yields exactly the batches not yet yielded.
    pub fn cursor(&self) -> LoaderCursor {
        LoaderCursor {
            stream: self.stream.cursor(),
            carry: self.carry.clone(),
            carry_rows: self.carry_rows.clone(),
        }
    }

    /// Rows skipped as unusable, too long, or with images the processor cannot take.
    pub fn skipped(&self) -> usize {
        self.stream.skipped() + self.rejected
    }

    /// The epoch being read.
    pub fn epoch(&self) -> u64 {
        self.stream.epoch()
    }

    /// The text a record shows the model: the text, or the chat rendered by the template.
    fn render(&self, record: &Record) -> Result<(String, bool)> {
        Ok(match &record.body {
            Body::Text(text) => (text.clone(), true),
            Body::Chat { messages, .. } => {
                let messages = to_chat_messages(messages);
                (self.tokenizer.apply_chat_template(&messages, false)?, false)
            }
        })
    }

    /// The next batch, or `None` at the end of the data (a last partial batch is dropped unless
    /// [`with_last_partial_batch`](Self::with_last_partial_batch)).
    pub fn next_batch(&mut self) -> Result<Option<Batch>> {
        match self.batching {
            Batching::Pack { context } => self.next_packed(context),
            Batching::Pad { max_len, truncate } => self.next_padded(max_len, truncate),
        }
    }

    fn next_packed(&mut self, context: usize) -> Result<Option<Batch>> {
        let mut sequences = self.batch_size;
        while self.carry.len() < context * sequences {
            let Some(example) = self.stream.next().transpose()? else {
                if self.last_partial && self.carry.len() >= context {
                    sequences = self.carry.len() / context;
                    break;
                }
                return Ok(None);
            };
            let (text, _) = self.render(&example.record)?;
            self.carry_rows.push((example.id, self.carry.len()));
            self.carry
                .push(self.separator.expect("packing has a separator"));
            self.carry.extend(self.tokenizer.encode(&text, false)?);
        }
        let need = context * sequences;
        let input_ids: Vec<i64> = self.carry.drain(..need).collect();
        // Row i spans [start_i, start_{i+1}); each context lists the rows it overlaps.
        let ends: Vec<usize> = self.carry_rows[1..]
            .iter()
            .map(|&(_, start)| start)
            .chain([usize::MAX])
            .collect();
        let rows: Vec<Vec<RowId>> = (0..sequences)
            .map(|s| {
                let (lo, hi) = (s * context, (s + 1) * context);
                self.carry_rows
                    .iter()
                    .zip(&ends)
                    .filter(|&(&(_, start), &end)| start < hi && end > lo)
                    .map(|(&(id, _), _)| id)
                    .collect()
            })
            .collect();
        self.carry_rows = self
            .carry_rows
            .iter()
            .zip(&ends)
            .filter(|&(_, &end)| end > need && !self.carry.is_empty())
            .map(|(&(id, start), _)| (id, start.saturating_sub(need)))
            .collect();
        let own = self.own_part(sequences);
        let rows = rows[own.clone()].to_vec();
        let input_ids = input_ids[own.start * context..own.end * context].to_vec();
        Ok(Some(Batch {
            attention_mask: vec![1; input_ids.len()],
            input_ids,
            batch_size: own.len(),
            seq_len: context,
            rows,
            images: vec![Vec::new(); own.len()],
            vision: None,
        }))
    }

    fn next_padded(&mut self, max_len: usize, truncate: bool) -> Result<Option<Batch>> {
        let mut sequences = Vec::with_capacity(self.batch_size);
        while sequences.len() < self.batch_size {
            let Some(example) = self.stream.next().transpose()? else {
                if self.last_partial && !sequences.is_empty() {
                    break;
                }
                return Ok(None);
            };
            let (text, special) = self.render(&example.record)?;
            let ids = self.tokenizer.encode(&text, special)?;
            let images = match example.record.body {
                Body::Chat { images, .. } => images,
                Body::Text(_) => Vec::new(),
            };
            let row = match self.image_tokens {
                Some(processor) if !images.is_empty() => {
                    process_images(processor, ids, &images).map(|(ids, vision)| (ids, Some(vision)))
                }
                _ => Ok((ids, None)),
            };
            // Cutting a row would cut its image tokens from their image: those never truncate.
            let row = row.and_then(|(mut ids, vision)| {
                if ids.len() <= max_len {
                    return Ok((ids, vision));
                }
                if truncate && vision.is_none() {
                    ids.truncate(max_len);
                    return Ok((ids, vision));
                }
                Err(RowProblem::TooLong {
                    tokens: ids.len(),
                    max: max_len,
                })
            });
            let (ids, vision) = match row {
                Ok(row) => row,
                Err(_) if self.stream.config().on_error == OnError::Skip => {
                    self.rejected += 1;
                    continue;
                }
                Err(reason) => return Err(self.stream.dataset().bad_row(example.id, reason)),
            };
            sequences.push((example.id, ids, images, vision));
        }
        let own = self.own_part(sequences.len());
        let mut sequences: Vec<_> = sequences.drain(own).collect();
        let seq_len = sequences
            .iter()
            .map(|(_, ids, _, _)| ids.len())
            .max()
            .unwrap_or(0);
        let pad = self.tokenizer.pad_token_id().unwrap_or(0);
        let n = sequences.len();
        let vision_parts = sequences.iter_mut().filter_map(|s| s.3.take()).collect();
        let mut batch = Batch {
            input_ids: Vec::with_capacity(n * seq_len),
            attention_mask: Vec::with_capacity(n * seq_len),
            batch_size: n,
            seq_len,
            rows: Vec::with_capacity(n),
            images: Vec::with_capacity(n),
            vision: ProcessedImages::concat(vision_parts)?,
        };
        for (id, ids, images, _) in sequences {
            let padding = seq_len - ids.len();
            batch
                .attention_mask
                .extend(std::iter::repeat_n(1, ids.len()));
            batch.attention_mask.extend(std::iter::repeat_n(0, padding));
            batch.input_ids.extend(ids);
            batch.input_ids.extend(std::iter::repeat_n(pad, padding));
            batch.rows.push(vec![id]);
            batch.images.push(images);
        }
        Ok(Some(batch))
    }
}

/// A row's images decoded and processed, and its token ids with their placeholders expanded;
/// the reason the row cannot be used otherwise.
fn process_images(
    processor: &dyn ImageTokens,
    ids: Vec<i64>,
    images: &[Vec<u8>],
) -> std::result::Result<(Vec<i64>, ProcessedImages), RowProblem> {
    let decoded = decode_images(images)?;
    // A processor may treat a prompt's images together (LLaVA-OneVision tiles a lone image).
    let (vision, counts) = processor
        .process_images(&decoded)
        .map_err(|e| RowProblem::Images(e.to_string()))?;
    let ids = expand_image_tokens(&ids, processor.image_token(), &counts).map_err(|_| {
        RowProblem::ImageCount {
            shown: ids
                .iter()
                .filter(|&&id| id == processor.image_token())
                .count(),
            held: images.len(),
        }
    })?;
    Ok((ids, vision))
}

impl Iterator for Loader<'_> {
    type Item = Result<Batch>;

    fn next(&mut self) -> Option<Self::Item> {
        self.next_batch().transpose()
    }
}
