//! The Qwen2-VL / Qwen2.5-VL image processor (transformers' `Qwen2VLImageProcessor`): resize so
//! that both sides are multiples of `patch_size * merge_size` within a pixel budget, normalise,
//! and cut into flattened patches, each repeated over `temporal_patch_size` frames.

use image::DynamicImage;
use sae_core::HostTensor;
use serde::Deserialize;

use super::config::{self, BICUBIC, ProcessorSettings};
use super::decode::convert_to_rgb;
use super::normalize::Normalization;
use super::resize::resize_bicubic;
use crate::error::{ModelError, Result};
use crate::vision_language::images::{ImageInputs, stack};

/// The `image_processor_type`s these settings may name.
const TYPES: &[&str] = &["Qwen2VLImageProcessor", "Qwen2VLImageProcessorFast"];

/// Qwen2-VL / Qwen2.5-VL image processor settings; [`Qwen2VlImageProcessor::preprocess`] runs it.
#[derive(Debug, Clone, PartialEq)]
pub struct Qwen2VlImageProcessor {
    /// Fewest pixels after resizing (`size.shortest_edge`, or `min_pixels` in older configs).
    pub min_pixels: u64,
    /// Most pixels after resizing (`size.longest_edge`, or `max_pixels` in older configs).
    pub max_pixels: u64,
    /// Side of a vision patch, in pixels.
    pub patch_size: u32,
    /// Frames per patch: an image is repeated to fill them.
    pub temporal_patch_size: u32,
    /// Patches merged per side after the vision tower; sides are multiples of
    /// `patch_size * merge_size`.
    pub merge_size: u32,
    /// Resize with [`smart_resize`]; without it, image sides must already be multiples.
    pub do_resize: bool,
    /// Rescaling and normalisation.
    pub normalization: Normalization,
}

/// What the processor gives the model (HF's `pixel_values` and `image_grid_thw`).
#[derive(Debug, Clone, PartialEq)]
pub struct Qwen2VlImageInputs {
    /// `[sum of t*h*w over images, 3 * temporal_patch_size * patch_size²]`: one row per patch,
    /// images one after another.
    pub pixel_values: HostTensor,
    /// Per image, its patch grid: `[t, h, w]` (t = 1 for an image).
    pub image_grid_thw: Vec<[usize; 3]>,
}

impl ImageInputs for Qwen2VlImageInputs {
    fn count(&self) -> usize {
        self.image_grid_thw.len()
    }

    fn pixel_values(&self) -> &HostTensor {
        &self.pixel_values
    }

    fn concat(parts: Vec<Self>) -> Self {
        let pixels: Vec<&HostTensor> = parts.iter().map(|p| &p.pixel_values).collect();
        Qwen2VlImageInputs {
            pixel_values: stack(&pixels),
            image_grid_thw: parts
                .iter()
                .flat_map(|p| p.image_grid_thw.clone())
                .collect(),
        }
    }

    fn tensors(&self) -> Vec<(&'static str, HostTensor)> {
        let grids = self.image_grid_thw.as_flattened().iter().map(|&v| v as i64);
        vec![
            ("pixel_values", self.pixel_values.clone()),
            (
                "image_grid_thw",
                HostTensor::i64(vec![self.count(), 3], grids.collect()),
            ),
        ]
    }
}

impl Default for Qwen2VlImageProcessor {
    /// transformers' class defaults.
    fn default() -> Self {
        Qwen2VlImageProcessor {
            min_pixels: 56 * 56,
            max_pixels: 28 * 28 * 1280,
            patch_size: 14,
            temporal_patch_size: 2,
            merge_size: 2,
            do_resize: true,
            normalization: Normalization::default(),
        }
    }
}

/// The keys of the settings, every one optional.
#[derive(Deserialize)]
pub struct RawSettings {
    size: Option<RawSize>,
    min_pixels: Option<u64>,
    max_pixels: Option<u64>,
    patch_size: Option<u32>,
    temporal_patch_size: Option<u32>,
    merge_size: Option<u32>,
    do_resize: Option<bool>,
    resample: Option<u32>,
    #[serde(flatten)]
    normalization: Normalization,
}

#[derive(Deserialize)]
struct RawSize {
    shortest_edge: Option<u64>,
    longest_edge: Option<u64>,
}

impl ProcessorSettings for Qwen2VlImageProcessor {
    type Raw = RawSettings;
    const TYPES: &'static [&'static str] = TYPES;

    /// HF `__init__`: `min_pixels` / `max_pixels` override `size`; no `size` means the defaults.
    fn from_raw(raw: RawSettings) -> Result<Self, String> {
        let defaults = Self::default();
        config::check_bicubic(raw.resample.unwrap_or(BICUBIC))?;
        let size = raw.size.unwrap_or(RawSize {
            shortest_edge: Some(defaults.min_pixels),
            longest_edge: Some(defaults.max_pixels),
        });
        let (Some(min_pixels), Some(max_pixels)) = (
            raw.min_pixels.or(size.shortest_edge),
            raw.max_pixels.or(size.longest_edge),
        ) else {
            return Err("size needs shortest_edge and longest_edge".into());
        };
        let processor = Qwen2VlImageProcessor {
            min_pixels,
            max_pixels,
            patch_size: raw.patch_size.unwrap_or(defaults.patch_size),
            temporal_patch_size: raw
                .temporal_patch_size
                .unwrap_or(defaults.temporal_patch_size),
            merge_size: raw.merge_size.unwrap_or(defaults.merge_size),
            do_resize: raw.do_resize.unwrap_or(defaults.do_resize),
            normalization: raw.normalization,
        };
        if [
            processor.patch_size,
            processor.temporal_patch_size,
            processor.merge_size,
        ]
        .contains(&0)
        {
            return Err("patch_size, temporal_patch_size and merge_size must be positive".into());
        }
        if min_pixels > max_pixels || max_pixels > MAX_PIXELS {
            return Err(format!(
                "min_pixels {min_pixels} and max_pixels {max_pixels} must satisfy min <= max <= {MAX_PIXELS}"
            ));
        }
        Ok(processor)
    }
}

impl Qwen2VlImageProcessor {
    /// Preprocesses `images` as `Qwen2VLImageProcessor(images)` does: each image is converted to
    /// RGB, resized ([`smart_resize`]), rescaled and normalised, and cut into patches; the
    /// images' patches are concatenated.
    pub fn preprocess(&self, images: &[DynamicImage]) -> Result<Qwen2VlImageInputs> {
        let mut values = Vec::new();
        let mut image_grid_thw = Vec::with_capacity(images.len());
        for image in images {
            let rgb = convert_to_rgb(image)?;
            let (height, width) = self.resized_size(rgb.height(), rgb.width())?;
            let resized = resize_bicubic(&rgb, height, width);
            let mut planes = Vec::with_capacity(3 * height as usize * width as usize);
            self.normalization.append_planar(&resized, &mut planes);
            image_grid_thw.push(self.patchify(&planes, height, width, &mut values));
        }
        let patch_len = 3 * (self.temporal_patch_size * self.patch_size * self.patch_size) as usize;
        Ok(Qwen2VlImageInputs {
            pixel_values: HostTensor::f32(vec![values.len() / patch_len, patch_len], values),
            image_grid_thw,
        })
    }

    /// The size (height, width) an image is resized to.
    fn resized_size(&self, height: u32, width: u32) -> Result<(u32, u32)> {
        let factor = self.patch_size * self.merge_size;
        if self.do_resize {
            return smart_resize(height, width, factor, self.min_pixels, self.max_pixels);
        }
        if !height.is_multiple_of(factor) || !width.is_multiple_of(factor) {
            return Err(ModelError::ImagePreprocess(format!(
                "without do_resize, image sides must be multiples of {factor}; got {height}x{width}"
            )));
        }
        Ok((height, width))
    }

    /// HF `patchify`: cuts planar `[3, height, width]` values into `patch_size` squares, ordered
    /// by `merge_size`² block (blocks row by row, then patches row by row inside a block). Each
    /// patch is one row `[channel, frame, y, x]`, the image repeated over the frames. Returns the
    /// patch grid `[1, height / patch_size, width / patch_size]`.
    fn patchify(&self, planes: &[f32], height: u32, width: u32, out: &mut Vec<f32>) -> [usize; 3] {
        let (patch, merge) = (self.patch_size as usize, self.merge_size as usize);
        let (height, width) = (height as usize, width as usize);
        let (grid_h, grid_w) = (height / patch, width / patch);
        for block_y in 0..grid_h / merge {
            for block_x in 0..grid_w / merge {
                for y_in_block in 0..merge {
                    for x_in_block in 0..merge {
                        let top = (block_y * merge + y_in_block) * patch;
                        let left = (block_x * merge + x_in_block) * patch;
                        for channel in 0..3 {
                            let plane = &planes[channel * height * width..][..height * width];
                            for _frame in 0..self.temporal_patch_size {
                                for y in top..top + patch {
                                    out.extend(&plane[y * width + left..][..patch]);
                                }
                            }
                        }
                    }
                }
            }
        }
        [1, grid_h, grid_w]
    }
}

/// The most pixels a resized image may have (a gigapixel; the models use about 13 million).
const MAX_PIXELS: u64 = 1 << 30;

/// Qwen2-VL's `smart_resize`: the size (height, width) closest to the image's with both sides
/// multiples of `factor` and between `min_pixels` and `max_pixels` pixels, keeping the aspect
/// ratio as well as it can. Fails, as HF does, for an aspect ratio above 200, and for an image
/// that would resize to less than one `factor` block.
pub fn smart_resize(
    height: u32,
    width: u32,
    factor: u32,
    min_pixels: u64,
    max_pixels: u64,
) -> Result<(u32, u32)> {
    let (h, w, f) = (f64::from(height), f64::from(width), f64::from(factor));
    if h.max(w) / h.min(w) > 200.0 {
        return Err(ModelError::ImagePreprocess(format!(
            "absolute aspect ratio must be smaller than 200, got {}",
            h.max(w) / h.min(w)
        )));
    }
    // Python's `round` rounds halves to even.
    let mut h_bar = (h / f).round_ties_even() * f;
    let mut w_bar = (w / f).round_ties_even() * f;
    if (h_bar * w_bar) as u64 > max_pixels {
        let beta = (h * w / max_pixels as f64).sqrt();
        h_bar = f.max((h / beta / f).floor() * f);
        w_bar = f.max((w / beta / f).floor() * f);
    } else if ((h_bar * w_bar) as u64) < min_pixels {
        let beta = (min_pixels as f64 / (h * w)).sqrt();
        h_bar = (h * beta / f).ceil() * f;
        w_bar = (w * beta / f).ceil() * f;
    }
    if h_bar < f || w_bar < f {
        return Err(ModelError::ImagePreprocess(format!(
            "a {height}x{width} image is too small: it resizes to {h_bar}x{w_bar}, less than one {factor}x{factor} block"
        )));
    }
    Ok((h_bar as u32, w_bar as u32))
}
