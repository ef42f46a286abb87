//! Where images lie among a cached sequence's tokens, so a latent's activations on image tokens
//! can be drawn over the image as a heatmap (Multimodal-SAE's image-region view). The model says
//! which of an image's tokens form a grid over it ([`TokenGrid`]): Qwen2-VL's one token per
//! merged patch block, in raster order; LLaVA-OneVision's reassembled tile map (after the
//! whole-image view, each row ending in an `image_newline`).

use sae_data::Batch;
use sae_models::{ImageTokens, TokenGrid};
use serde::{Deserialize, Serialize};

/// One cached image and the grid of its tokens over it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImagePlacement {
    /// The image file, relative to the cache folder.
    pub file: String,
    /// The cached sequence holding it.
    pub sequence: usize,
    /// The position of the grid's first token in the sequence.
    pub start: usize,
    /// Token rows (top to bottom).
    pub rows: usize,
    /// Tokens per row (left to right).
    pub cols: usize,
    /// Positions from one row's start to the next's (`cols`, or more where rows end in tokens
    /// that are no region).
    pub stride: usize,
}

impl ImagePlacement {
    /// The grid cell (row-major, `rows x cols`) of position `p` of the sequence, if that token
    /// is one of the grid's.
    pub fn cell(&self, p: usize) -> Option<usize> {
        let q = p.checked_sub(self.start)?;
        let (row, col) = (q / self.stride.max(1), q % self.stride.max(1));
        (row < self.rows && col < self.cols).then(|| row * self.cols + col)
    }

    /// One past the last position of the grid (`None` when that overflows).
    pub fn end(&self) -> Option<usize> {
        let last_row = self.rows.checked_sub(1)?.checked_mul(self.stride)?;
        self.start.checked_add(last_row)?.checked_add(self.cols)
    }
}

/// A batch image placed in its sequence: the placement (its file and cached sequence still to
/// fill in), its sequence in the batch and its encoded bytes.
pub struct Placed<'a> {
    /// Sequence index within the batch.
    pub batch_sequence: usize,
    /// Where its grid lies in that sequence's real tokens.
    pub placement: ImagePlacement,
    /// The encoded image, as the dataset holds it.
    pub bytes: &'a [u8],
}

/// The images of `batch` whose token grid `model` knows, placed among their sequences' real
/// tokens: each sequence's runs of the image token are its images in order. An image whose run
/// cannot hold its grid (a truncated sequence) is left out.
pub fn place_images<'a>(batch: &'a Batch, model: &dyn ImageTokens) -> Vec<Placed<'a>> {
    let Some(vision) = &batch.vision else {
        return Vec::new();
    };
    let mut grids = model.token_grids(vision).into_iter();
    let mut placed = Vec::new();
    let t = batch.seq_len;
    for s in 0..batch.batch_size {
        let real: Vec<i64> = (s * t..(s + 1) * t)
            .filter(|&i| batch.attention_mask[i] != 0)
            .map(|i| batch.input_ids[i])
            .collect();
        let runs = runs_of(&real, model.image_token());
        for (i, bytes) in batch.images[s].iter().enumerate() {
            // Every image has an entry, placed or not: take it first.
            let grid = grids.next().flatten();
            let (Some(grid), Some(&(start, len))) = (grid, runs.get(i)) else {
                continue;
            };
            if let Some(placement) = placement(grid, start, len) {
                placed.push(Placed {
                    batch_sequence: s,
                    placement,
                    bytes,
                });
            }
        }
    }
    placed
}

/// `grid` placed in a run of `len` image tokens at `start`, if it fits there.
fn placement(grid: TokenGrid, start: usize, len: usize) -> Option<ImagePlacement> {
    let placement = ImagePlacement {
        file: String::new(),
        sequence: 0,
        start: start.checked_add(grid.offset)?,
        rows: grid.rows,
        cols: grid.cols,
        stride: grid.stride,
    };
    let fits = grid.cols <= grid.stride && placement.end()? <= start.checked_add(len)?;
    fits.then_some(placement)
}

/// The `(start, length)` of each maximal run of `token` in `ids`.
fn runs_of(ids: &[i64], token: i64) -> Vec<(usize, usize)> {
    let mut runs: Vec<(usize, usize)> = Vec::new();
    for (i, &id) in ids.iter().enumerate() {
        if id != token {
            continue;
        }
        match runs.last_mut() {
            Some((start, len)) if *start + *len == i => *len += 1,
            _ => runs.push((i, 1)),
        }
    }
    runs
}

/// The file extension of an encoded image, from its first bytes.
pub fn image_extension(bytes: &[u8]) -> &'static str {
    match bytes {
        [0x89, b'P', b'N', b'G', ..] => "png",
        [0xff, 0xd8, ..] => "jpg",
        [b'G', b'I', b'F', ..] => "gif",
        [
            b'R',
            b'I',
            b'F',
            b'F',
            _,
            _,
            _,
            _,
            b'W',
            b'E',
            b'B',
            b'P',
            ..,
        ] => "webp",
        _ => "img",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_grids_and_cells() {
        assert_eq!(runs_of(&[1, 9, 9, 2, 9, 9, 9], 9), [(1, 2), (4, 3)]);
        // A 2 x 3 grid after 4 whole-view tokens, rows ending in a newline: stride 4.
        let grid = TokenGrid {
            offset: 4,
            rows: 2,
            cols: 3,
            stride: 4,
        };
        let p = placement(grid, 10, 4 + 2 * 4).unwrap();
        assert_eq!((p.start, p.end()), (14, Some(21)));
        let cells: Vec<Option<usize>> = (13..23).map(|q| p.cell(q)).collect();
        let none = None;
        assert_eq!(
            cells,
            [
                none,
                Some(0),
                Some(1),
                Some(2),
                none,
                Some(3),
                Some(4),
                Some(5),
                none,
                none
            ]
        );
        // A run too short for its grid (a cut sequence) is not placed.
        assert_eq!(placement(grid, 10, 10), None);
        assert!(placement(grid, 10, 11).is_some());
        assert_eq!(image_extension(b"\x89PNG\r\n"), "png");
        assert_eq!(image_extension(b"RIFF\0\0\0\0WEBPVP8"), "webp");
    }
}
