//! Where images lie among a cached sequence's tokens, so a latent's activations on image tokens
//! can be drawn over the image as a heatmap (Multimodal-SAE's image-region view). The model says
//! which of an image's tokens form a grid over it ([`TokenGrid`]): Qwen2-VL's one token per
//! merged patch block, in raster order; LLaVA-OneVision's reassembled tile map (after the
//! whole-image view, each row ending in an `image_newline`).

use sae_data::Batch;
use sae_models::{ImageTokenLayout, ImageTokens, TokenGrid};
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
/// tokens: a sequence's image tokens are its images' tokens one image after the other (so
/// images whose placeholders touch are still told apart). A sequence whose image tokens do not
/// add up to its images' (a row cut short) places none.
pub fn place_images<'a>(batch: &'a Batch, model: &dyn ImageTokens) -> Vec<Placed<'a>> {
    let Some(vision) = &batch.vision else {
        return Vec::new();
    };
    let layouts = model.token_layouts(vision);
    let held: usize = batch.images.iter().map(Vec::len).sum();
    if layouts.len() != held {
        return Vec::new();
    }
    let mut layouts = layouts.into_iter();
    let mut placed = Vec::new();
    let t = batch.seq_len;
    for s in 0..batch.batch_size {
        let real = (s * t..(s + 1) * t).filter(|&i| batch.attention_mask[i] != 0);
        let positions: Vec<usize> = (real.enumerate())
            .filter(|&(_, i)| batch.input_ids[i] == model.image_token())
            .map(|(p, _)| p)
            .collect();
        let mine: Vec<ImageTokenLayout> = layouts.by_ref().take(batch.images[s].len()).collect();
        if mine.iter().map(|l| l.tokens).sum::<usize>() != positions.len() {
            continue;
        }
        let mut next = 0;
        for (layout, bytes) in mine.iter().zip(&batch.images[s]) {
            let span = &positions[next..next + layout.tokens];
            next += layout.tokens;
            // An image's tokens are one unbroken stretch.
            let unbroken = span.windows(2).all(|w| w[1] == w[0] + 1);
            let (Some(grid), Some(&start), true) = (layout.grid, span.first(), unbroken) else {
                continue;
            };
            if let Some(placement) = placement(grid, start, layout.tokens) {
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

/// `grid` placed in an image's `len` tokens starting at `start`, if it fits there.
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
    use sae_core::HostTensor;
    use sae_models::{ProcessedImages, Qwen2VlImageInputs};

    /// Two images of 4 (a 2 x 2 grid) and 6 tokens (a 2 x 3 grid), image token 9.
    struct TwoImages;

    impl ImageTokens for TwoImages {
        fn image_token(&self) -> i64 {
            9
        }

        fn process_images(
            &self,
            _: &[image::DynamicImage],
        ) -> sae_models::Result<(ProcessedImages, Vec<usize>)> {
            unreachable!("placing images processes none")
        }

        fn token_layouts(&self, _: &ProcessedImages) -> Vec<ImageTokenLayout> {
            let grid = |rows, cols| TokenGrid {
                offset: 0,
                rows,
                cols,
                stride: cols,
            };
            vec![
                ImageTokenLayout {
                    tokens: 4,
                    grid: Some(grid(2, 2)),
                },
                ImageTokenLayout {
                    tokens: 6,
                    grid: Some(grid(2, 3)),
                },
            ]
        }
    }

    fn batch(ids: Vec<i64>) -> Batch {
        let n = ids.len();
        Batch {
            attention_mask: vec![1; n],
            input_ids: ids,
            batch_size: 1,
            seq_len: n,
            rows: vec![Vec::new()],
            images: vec![vec![b"first".to_vec(), b"second".to_vec()]],
            vision: Some(ProcessedImages::new(Qwen2VlImageInputs {
                pixel_values: HostTensor::f32(vec![0], Vec::new()),
                image_grid_thw: Vec::new(),
            })),
        }
    }

    #[test]
    fn images_whose_tokens_touch_are_told_apart() {
        // 1, then the two images' 10 tokens back to back, then 2.
        let ids: Vec<i64> = std::iter::once(1).chain([9; 10]).chain([2]).collect();
        let touching = batch(ids);
        let placed = place_images(&touching, &TwoImages);
        let got: Vec<(&[u8], usize, usize, usize)> = (placed.iter())
            .map(|p| {
                (
                    p.bytes,
                    p.placement.start,
                    p.placement.rows,
                    p.placement.cols,
                )
            })
            .collect();
        assert_eq!(got, [(&b"first"[..], 1, 2, 2), (&b"second"[..], 5, 2, 3)]);
        // Image tokens that do not add up to the images' (a cut row) place nothing.
        let ids: Vec<i64> = std::iter::once(1).chain([9; 7]).collect();
        let cut = batch(ids);
        assert!(place_images(&cut, &TwoImages).is_empty());
    }

    #[test]
    fn grids_and_cells() {
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
