//! Where images lie among a cached sequence's tokens, so a latent's activations on image tokens
//! can be drawn over the image as a heatmap (Multimodal-SAE's image-region view). Qwen2-VL and
//! Qwen2.5-VL give one image token per `m x m` merged patches, in raster order: an image's
//! tokens are a `rows x cols` grid of its regions. LLaVA-OneVision's tiled layout (base image,
//! crops, newline tokens) is not placed.

use sae_data::Batch;
use sae_models::ProcessedImages;
use serde::{Deserialize, Serialize};

/// One cached image and the grid of tokens it became.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImagePlacement {
    /// The image file, relative to the cache folder.
    pub file: String,
    /// The cached sequence holding it.
    pub sequence: usize,
    /// The position of its first token in the sequence.
    pub start: usize,
    /// Token rows (top to bottom).
    pub rows: usize,
    /// Token columns (left to right).
    pub cols: usize,
}

impl ImagePlacement {
    /// The grid cell of position `p` of the sequence, if it is one of the image's tokens.
    pub fn cell(&self, p: usize) -> Option<usize> {
        let cells = self.rows.saturating_mul(self.cols);
        p.checked_sub(self.start).filter(|&cell| cell < cells)
    }
}

/// A batch image placed in its sequence: the placement (without a file yet), its sequence in
/// the batch and its encoded bytes.
pub struct Placed<'a> {
    /// Sequence index within the batch.
    pub batch_sequence: usize,
    /// Where it lies (sequence and file are filled in by the cache).
    pub placement: ImagePlacement,
    /// The encoded image, as the dataset holds it.
    pub bytes: &'a [u8],
}

/// The images of a Qwen2-VL `batch` placed among its sequences' real tokens: each sequence's
/// runs of `image_token` are its images in order, `t x h x w` patches merged `m x m` into the
/// run's tokens. Images whose run does not fit their grid (a truncated sequence, video frames)
/// are left out.
pub fn place_images(batch: &Batch, image_token: i64) -> Vec<Placed<'_>> {
    let Some(ProcessedImages::Qwen2Vl { image_grid_thw, .. }) = &batch.vision else {
        return Vec::new();
    };
    let mut grids = image_grid_thw.iter();
    let mut placed = Vec::new();
    let t = batch.seq_len;
    for s in 0..batch.batch_size {
        let real: Vec<i64> = (s * t..(s + 1) * t)
            .filter(|&i| batch.attention_mask[i] != 0)
            .map(|i| batch.input_ids[i])
            .collect();
        let runs = runs_of(&real, image_token);
        for (i, bytes) in batch.images[s].iter().enumerate() {
            // Every image has a grid, placed or not: take it first.
            let grid = grids.next();
            let (Some(grid), Some(&(start, len))) = (grid, runs.get(i)) else {
                continue;
            };
            if let Some((rows, cols)) = merged_grid(*grid, len) {
                let placement = ImagePlacement {
                    file: String::new(),
                    sequence: 0,
                    start,
                    rows,
                    cols,
                };
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

/// The `rows x cols` token grid of an image of `[t, h, w]` patches that became `tokens` tokens:
/// `h x w` patches merged `m x m` with `m^2 = h w / tokens`; `None` for video (`t > 1`) or a
/// count that no square merge gives.
fn merged_grid([t, h, w]: [usize; 3], tokens: usize) -> Option<(usize, usize)> {
    if t != 1 || tokens == 0 || (h * w) % tokens != 0 {
        return None;
    }
    let m2 = h * w / tokens;
    let m = (1..=m2).find(|m| m * m >= m2).filter(|m| m * m == m2)?;
    (h % m == 0 && w % m == 0).then(|| (h / m, w / m))
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
    fn runs_and_grids() {
        assert_eq!(runs_of(&[1, 9, 9, 2, 9, 9, 9], 9), [(1, 2), (4, 3)]);
        // 6 x 8 patches merged 2 x 2: 12 tokens in 3 rows of 4.
        assert_eq!(merged_grid([1, 6, 8], 12), Some((3, 4)));
        assert_eq!(merged_grid([1, 6, 8], 48), Some((6, 8)));
        assert_eq!(merged_grid([1, 6, 8], 10), None);
        assert_eq!(merged_grid([2, 6, 8], 24), None);
        assert_eq!(image_extension(b"\x89PNG\r\n"), "png");
        assert_eq!(image_extension(b"RIFF\0\0\0\0WEBPVP8"), "webp");
    }
}
