//! How an image's projected tiles become language-model tokens (transformers'
//! `pack_image_features`). The image of a single-image prompt is tiled ("anyres"): the
//! whole-image view's features come first, then the tiles' features reassembled into one map,
//! the padding the processor added cut off (`unpad_image`), the map bilinearly downsampled when
//! larger than `anyres_max_N` tiles, and an `image_newline` after each row. An image of a
//! prompt with several is one tile: its features, then one `image_newline`.

use std::ops::Range;

use burn::tensor::Tensor;
use burn::tensor::backend::Backend;
use burn::tensor::module::interpolate;
use burn::tensor::ops::{InterpolateMode, InterpolateOptions};

use super::config::LlavaOnevisionConfig;
use crate::image_processor::select_best_resolution;
use crate::token_layout::TokenGrid;

/// Where one image's tokens come from.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct ImageLayout {
    /// Tiles the vision tower reads: the whole-image view, then the grid's tiles row by row.
    pub(crate) tiles: usize,
    /// The tile grid of a tiled image.
    grid: Option<Grid>,
}

/// A tiled image's feature map.
#[derive(Debug, Clone, PartialEq)]
struct Grid {
    /// Tiles down and across.
    tiles: [usize; 2],
    /// Patches per side of a tile.
    side: usize,
    /// The part of the `[down x side, across x side]` map kept by unpadding.
    rows: Range<usize>,
    cols: Range<usize>,
    /// The size the kept part is downsampled to, when it is larger than allowed.
    resized: Option<[usize; 2]>,
}

impl ImageLayout {
    /// The layout of an image of `size` (height, width) pixels; `tiled` is false for the images
    /// of a prompt with several.
    pub(crate) fn new(size: [usize; 2], tiled: bool, c: &LlavaOnevisionConfig) -> Self {
        if !tiled {
            return ImageLayout {
                tiles: 1,
                grid: None,
            };
        }
        let (tile, side) = (c.vision.image_size, c.vision.patches_per_side());
        let [best_h, best_w] =
            select_best_resolution(size[0] as u32, size[1] as u32, &c.image_grid_pinpoints);
        let tiles = [best_h as usize / tile, best_w as usize / tile];
        let (rows, cols) = unpadded([tiles[0] * side, tiles[1] * side], size);
        let resized = downsampled([rows.len(), cols.len()], c.max_num_patches, side);
        ImageLayout {
            tiles: 1 + tiles[0] * tiles[1],
            grid: Some(Grid {
                tiles,
                side,
                rows,
                cols,
                resized,
            }),
        }
    }

    /// True for a tiled image.
    pub(crate) fn is_tiled(&self) -> bool {
        self.grid.is_some()
    }

    /// The image's language-model tokens when each tile gives `patches` features.
    pub(crate) fn tokens(&self, patches: usize) -> usize {
        match &self.grid {
            None => patches + 1,
            Some(g) => {
                let [h, w] = g.resized.unwrap_or([g.rows.len(), g.cols.len()]);
                patches + h * (w + 1)
            }
        }
    }

    /// The grid of the image's tokens that covers it when each tile gives `patches` features
    /// (`side x side` for a square grid): the tile map after the whole-image view, or the
    /// whole-image view of an untiled image.
    pub(crate) fn token_grid(&self, patches: usize, side: usize) -> Option<TokenGrid> {
        match &self.grid {
            None => (patches == side * side).then_some(TokenGrid {
                offset: 0,
                rows: side,
                cols: side,
                stride: side,
            }),
            Some(g) => {
                let [rows, cols] = g.resized.unwrap_or([g.rows.len(), g.cols.len()]);
                let stride = cols + 1;
                Some(TokenGrid {
                    offset: patches,
                    rows,
                    cols,
                    stride,
                })
            }
        }
    }

    /// The image's tokens `[tokens, d]` from its projected tiles `[tiles, patches, d]` (a tiled
    /// image's have `side^2` patches).
    pub(crate) fn pack<B: Backend>(
        &self,
        features: Tensor<B, 3>,
        newline: Tensor<B, 1>,
    ) -> Tensor<B, 2> {
        let [tiles, patches, d] = features.dims();
        let base = features
            .clone()
            .slice([0..1, 0..patches, 0..d])
            .reshape([patches, d]);
        let Some(g) = &self.grid else {
            return Tensor::cat(vec![base, newline.reshape([1, d])], 0);
        };
        let ([down, across], side) = (g.tiles, g.side);
        // Tile (r, c)'s patch (i, j) goes to row r side + i, column c side + j.
        let map = features
            .slice([1..tiles, 0..patches, 0..d])
            .reshape([down, across, side, side, d])
            .permute([0, 2, 1, 3, 4])
            .reshape([down * side, across * side, d])
            .slice([g.rows.clone(), g.cols.clone(), 0..d]);
        let map = match g.resized {
            Some(size) => resize_bilinear(map, size),
            None => map,
        };
        let [h, w, _] = map.dims();
        let newlines = newline.reshape([1, 1, d]).repeat_dim(0, h);
        let rows = Tensor::cat(vec![map, newlines], 1).reshape([h * (w + 1), d]);
        Tensor::cat(vec![base, rows], 0)
    }
}

/// transformers' `unpad_image`: the rows and columns of a `[height, width]` feature map that
/// hold the image of `original` (height, width) pixels, the processor's centred padding cut
/// off.
fn unpadded(
    [height, width]: [usize; 2],
    [original_h, original_w]: [usize; 2],
) -> (Range<usize>, Range<usize>) {
    let original_aspect = original_w as f64 / original_h as f64;
    let current_aspect = width as f64 / height as f64;
    if original_aspect > current_aspect {
        let scale = width as f64 / original_w as f64;
        let new_height = int_round7(original_h as f64 * scale);
        let padding = height.saturating_sub(new_height) / 2;
        (padding..height - padding, 0..width)
    } else {
        let scale = height as f64 / original_h as f64;
        let new_width = int_round7(original_w as f64 * scale);
        let padding = width.saturating_sub(new_width) / 2;
        (0..height, padding..width - padding)
    }
}

/// Python's `int(round(x, 7))` for `x >= 0`: rounded to 7 decimals from the exact binary value
/// (as Rust's formatting also does), then truncated.
fn int_round7(x: f64) -> usize {
    let rounded: f64 = format!("{x:.7}").parse().expect("a formatted float parses");
    rounded as usize
}

/// The `anyres_max_N` rule: a `[height, width]` map with more than about `max_tiles` tiles of
/// `side^2` features (`ratio > 1.1`) is downsampled to `int(height // ratio)` x
/// `int(width // ratio)`.
fn downsampled([height, width]: [usize; 2], max_tiles: usize, side: usize) -> Option<[usize; 2]> {
    let ratio = ((height * width) as f64 / (max_tiles * side * side) as f64).sqrt();
    (ratio > 1.1).then(|| {
        [
            py_floor_div(height as f64, ratio) as usize,
            py_floor_div(width as f64, ratio) as usize,
        ]
    })
}

/// Python's `a // b` for positive floats (CPython's `float_floor_div`, which may differ from
/// `(a / b).floor()` by one when the quotient rounds up to an integer).
fn py_floor_div(a: f64, b: f64) -> f64 {
    let div = (a - a % b) / b;
    let floor = div.floor();
    if div - floor > 0.5 {
        floor + 1.0
    } else {
        floor
    }
}

/// torch's `interpolate(mode="bilinear", align_corners=False)` of a `[h, w, d]` map to `size`.
fn resize_bilinear<B: Backend>(map: Tensor<B, 3>, size: [usize; 2]) -> Tensor<B, 3> {
    let options = InterpolateOptions::new(InterpolateMode::Bilinear).with_align_corners(false);
    let channels_first = map.permute([2, 0, 1]).unsqueeze_dim::<4>(0);
    interpolate(channels_first, size, options)
        .squeeze_dim::<3>(0)
        .permute([1, 2, 0])
}

#[cfg(test)]
mod tests {
    use super::*;

    // The processor's token counts (transformers' `_get_unpadded_features`) for the fixtures'
    // images on 56-pixel tiles of 4 x 4 patches.
    #[test]
    fn unpadding_follows_transformers() {
        // image1.png, 84 x 112 on a 2 x 2 grid: 6 of 8 rows.
        assert_eq!(unpadded([8, 8], [84, 112]), (1..7, 0..8));
        // tall.png, 84 x 30 on 2 x 1: 30 * 8 / 84 = 2.857 truncates to 2, so columns 1..3.
        assert_eq!(unpadded([8, 4], [84, 30]), (0..8, 1..3));
        // wide.png, 32 x 150 on 1 x 2: 1.707 truncates to 1, padding 1.
        assert_eq!(unpadded([4, 8], [32, 150]), (1..3, 0..8));
        // A scale that lands a hair below an integer rounds up at 7 decimals.
        assert_eq!(int_round7(5.999_999_99), 6);
        assert_eq!(int_round7(5.999_99), 5);
    }

    #[test]
    fn downsampling_follows_anyres_max() {
        // 6 x 8 = 48 features, at most 2 tiles of 16: ratio sqrt(1.5) = 1.22.
        assert_eq!(downsampled([6, 8], 2, 4), Some([4, 6]));
        assert_eq!(downsampled([6, 8], 9, 4), None);
        // ratio 1.1 exactly is kept.
        assert_eq!(downsampled([11, 11], 1, 10), None);
        assert_eq!(py_floor_div(1.0, 0.1), 9.0);
    }
}
