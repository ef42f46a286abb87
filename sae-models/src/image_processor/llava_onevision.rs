//! The LLaVA-OneVision image processor (transformers' `LlavaOnevisionImageProcessor`, "anyres"):
//! an image is resized into the best-fitting of `image_grid_pinpoints`, padded, and cut into tiles
//! of `size`, after a downscaled copy of the whole image; each tile is then normalised.

use image::{DynamicImage, Rgb, RgbImage, imageops};
use sae_core::HostTensor;
use serde::Deserialize;

use super::config::{self, BICUBIC, ProcessorSettings};
use super::decode::convert_to_rgb;
use super::normalize::Normalization;
use super::resize::resize_bicubic;
use crate::error::{ModelError, Result};
use crate::vision_language::images::{ImageInputs, stack};

/// The `image_processor_type`s these settings may name.
const TYPES: &[&str] = &[
    "LlavaOnevisionImageProcessor",
    "LlavaOnevisionImageProcessorFast",
];

/// LLaVA-OneVision image processor settings; [`LlavaOnevisionImageProcessor::preprocess`] runs it.
#[derive(Debug, Clone, PartialEq)]
pub struct LlavaOnevisionImageProcessor {
    /// Size (height, width) of every tile and of the whole-image view (`size`).
    pub size: [u32; 2],
    /// Side of the square tiles cut from the padded image (`crop_size.height`, else
    /// `size.height`); a tile of another size is then resized to `size`.
    pub tile_size: u32,
    /// Resolutions (height, width) an image may be fitted into before tiling.
    pub image_grid_pinpoints: Vec<[u32; 2]>,
    /// Pad the tile dimension with zeros so that images with fewer tiles stack (`do_pad`).
    pub do_pad: bool,
    /// Rescaling and normalisation.
    pub normalization: Normalization,
}

/// What the processor gives the model (HF's `pixel_values`, `image_sizes`, `batch_num_images`).
#[derive(Debug, Clone, PartialEq)]
pub struct LlavaOnevisionImageInputs {
    /// `[images, tiles, 3, height, width]`: per image the whole-image view, then its tiles row by
    /// row, then zero tiles up to the largest count in the batch.
    pub pixel_values: HostTensor,
    /// Per image, its original (height, width).
    pub image_sizes: Vec<[usize; 2]>,
    /// Per prompt, its number of images.
    pub batch_num_images: Vec<usize>,
}

impl Default for LlavaOnevisionImageProcessor {
    /// transformers' class defaults: 384-pixel tiles, pinpoints of 1 to 6 tiles per side.
    fn default() -> Self {
        let steps = (1..=6).map(|k| 384 * k);
        LlavaOnevisionImageProcessor {
            size: [384, 384],
            tile_size: 384,
            image_grid_pinpoints: steps
                .clone()
                .flat_map(|h| steps.clone().map(move |w| [h, w]))
                .collect(),
            do_pad: true,
            normalization: Normalization::default(),
        }
    }
}

/// The keys of the settings, every one optional.
#[derive(Deserialize)]
pub struct RawSettings {
    size: Option<RawSize>,
    crop_size: Option<RawSize>,
    image_grid_pinpoints: Option<Vec<[u32; 2]>>,
    do_pad: Option<bool>,
    do_resize: Option<bool>,
    do_center_crop: Option<bool>,
    resample: Option<u32>,
    #[serde(flatten)]
    normalization: Normalization,
}

#[derive(Deserialize)]
struct RawSize {
    height: Option<u32>,
    width: Option<u32>,
}

impl ImageInputs for LlavaOnevisionImageInputs {
    fn count(&self) -> usize {
        self.image_sizes.len()
    }

    fn pixel_values(&self) -> &HostTensor {
        &self.pixel_values
    }

    fn concat(parts: Vec<Self>) -> Self {
        let pixels: Vec<&HostTensor> = parts.iter().map(|p| &p.pixel_values).collect();
        LlavaOnevisionImageInputs {
            pixel_values: stack(&pixels),
            image_sizes: parts.iter().flat_map(|p| p.image_sizes.clone()).collect(),
            batch_num_images: (parts.iter())
                .flat_map(|p| p.batch_num_images.clone())
                .collect(),
        }
    }

    fn tensors(&self) -> Vec<(&'static str, HostTensor)> {
        let sizes = self.image_sizes.as_flattened().iter().map(|&v| v as i64);
        let counts = self.batch_num_images.iter().map(|&v| v as i64);
        vec![
            ("pixel_values", self.pixel_values.clone()),
            (
                "image_sizes",
                HostTensor::i64(vec![self.count(), 2], sizes.collect()),
            ),
            (
                "batch_num_images",
                HostTensor::i64(vec![self.batch_num_images.len()], counts.collect()),
            ),
        ]
    }
}

impl ProcessorSettings for LlavaOnevisionImageProcessor {
    type Raw = RawSettings;
    const TYPES: &'static [&'static str] = TYPES;

    /// Absent keys take transformers' class defaults; settings this port does not implement fail.
    fn from_raw(raw: RawSettings) -> Result<Self, String> {
        let defaults = Self::default();
        config::check_bicubic(raw.resample.unwrap_or(BICUBIC))?;
        if raw.do_resize == Some(false) || raw.do_center_crop == Some(true) {
            return Err("only do_resize true and do_center_crop false are supported".into());
        }
        let size = match raw.size {
            None => defaults.size,
            Some(RawSize {
                height: Some(height),
                width: Some(width),
            }) => [height, width],
            Some(_) => return Err("size needs height and width".into()),
        };
        let tile_size = raw.crop_size.and_then(|c| c.height).unwrap_or(size[0]);
        let image_grid_pinpoints = raw
            .image_grid_pinpoints
            .unwrap_or(defaults.image_grid_pinpoints);
        if image_grid_pinpoints.is_empty()
            || size.contains(&0)
            || tile_size == 0
            || image_grid_pinpoints.iter().flatten().any(|&side| side == 0)
        {
            return Err(
                "size, crop_size and image_grid_pinpoints must be positive and non-empty".into(),
            );
        }
        Ok(LlavaOnevisionImageProcessor {
            size,
            tile_size,
            image_grid_pinpoints,
            do_pad: raw.do_pad.unwrap_or(defaults.do_pad),
            normalization: raw.normalization,
        })
    }
}

impl LlavaOnevisionImageProcessor {
    /// Preprocesses `images` as `LlavaOnevisionImageProcessor(images)` does with a flat list:
    /// every image is a prompt of its own, and so is tiled.
    pub fn preprocess(&self, images: &[DynamicImage]) -> Result<LlavaOnevisionImageInputs> {
        let prompts: Vec<&[DynamicImage]> = images.chunks(1).collect();
        self.preprocess_prompts(&prompts)
    }

    /// Preprocesses the images of several prompts, as HF does with a nested list: the sole image
    /// of a prompt is tiled, while each image of a prompt with several is padded to a square and
    /// resized to `size` (one tile). Prompts without images are skipped.
    pub fn preprocess_prompts(
        &self,
        prompts: &[&[DynamicImage]],
    ) -> Result<LlavaOnevisionImageInputs> {
        let [height, width] = self.size;
        let tile_len = 3 * height as usize * width as usize;
        let prompts: Vec<&[DynamicImage]> =
            prompts.iter().copied().filter(|p| !p.is_empty()).collect();
        let mut per_image = Vec::new();
        let mut image_sizes = Vec::new();
        for prompt in &prompts {
            for image in prompt.iter() {
                let rgb = convert_to_rgb(image)?;
                let views = if prompt.len() == 1 {
                    self.image_patches(&rgb)
                } else {
                    vec![self.pad_to_square(&rgb)]
                };
                let mut values = Vec::with_capacity(views.len() * tile_len);
                for view in &views {
                    let view = resize_bicubic(view, height, width);
                    self.normalization.append_planar(&view, &mut values);
                }
                per_image.push(values);
                image_sizes.push([rgb.height() as usize, rgb.width() as usize]);
            }
        }

        // HF `_pad_for_batching`: zero tiles after an image's own, up to the largest count.
        let max_len = per_image.iter().map(Vec::len).max().unwrap_or(0);
        if !self.do_pad && per_image.iter().any(|v| v.len() != max_len) {
            return Err(ModelError::ImagePreprocess(
                "images with different numbers of tiles do not stack without do_pad".into(),
            ));
        }
        let mut pixel_values = Vec::with_capacity(per_image.len() * max_len);
        for values in &per_image {
            pixel_values.extend(values);
            pixel_values.resize(pixel_values.len() + max_len - values.len(), 0.0);
        }
        let shape = vec![
            per_image.len(),
            max_len / tile_len,
            3,
            height as usize,
            width as usize,
        ];
        Ok(LlavaOnevisionImageInputs {
            pixel_values: HostTensor::f32(shape, pixel_values),
            image_sizes,
            batch_num_images: prompts.iter().map(|p| p.len()).collect(),
        })
    }

    /// HF `_get_image_patches`: the whole image resized to `size`, then the tiles of the image
    /// fitted into its best pinpoint (`_resize_for_patching`, `_pad_for_patching`,
    /// `divide_to_patches`).
    fn image_patches(&self, image: &RgbImage) -> Vec<RgbImage> {
        let best =
            select_best_resolution(image.height(), image.width(), &self.image_grid_pinpoints);
        let (fit_height, fit_width) = patch_output_size(image.height(), image.width(), best);
        let fitted = resize_bicubic(image, fit_height, fit_width);
        let padded = pad_centred(&fitted, best, Rgb([0, 0, 0]));
        let whole = resize_bicubic(image, self.size[0], self.size[1]);
        std::iter::once(whole)
            .chain(divide_to_patches(&padded, self.tile_size))
            .collect()
    }

    /// HF `pad_to_square`: the image centred on a square of its longer side, filled with the
    /// mean colour (`int(mean * 255)` per channel).
    fn pad_to_square(&self, image: &RgbImage) -> RgbImage {
        let side = image.height().max(image.width());
        let fill = self.normalization.image_mean.map(|m| (m * 255.0) as u8);
        pad_centred(image, [side, side], Rgb(fill))
    }
}

/// HF `select_best_resolution`: the pinpoint (height, width) that keeps most of the image's
/// resolution once it is scaled to fit, and among those wastes the fewest pixels.
pub(crate) fn select_best_resolution(height: u32, width: u32, pinpoints: &[[u32; 2]]) -> [u32; 2] {
    let (h, w) = (f64::from(height), f64::from(width));
    let original = u64::from(height) * u64::from(width);
    let mut best = pinpoints[0];
    let (mut max_effective, mut min_wasted) = (0u64, i64::MAX);
    for &[pin_h, pin_w] in pinpoints {
        let scale = (f64::from(pin_w) / w).min(f64::from(pin_h) / h);
        let (scaled_w, scaled_h) = ((w * scale) as u64, (h * scale) as u64);
        let effective = (scaled_w * scaled_h).min(original);
        let wasted = (u64::from(pin_h) * u64::from(pin_w)) as i64 - effective as i64;
        if effective > max_effective || (effective == max_effective && wasted < min_wasted) {
            (max_effective, min_wasted, best) = (effective, wasted, [pin_h, pin_w]);
        }
    }
    best
}

/// HF `get_patch_output_size`: the image's size (height, width) scaled to fit `target`, the
/// limiting side exactly and the other rounded up.
fn patch_output_size(height: u32, width: u32, [target_h, target_w]: [u32; 2]) -> (u32, u32) {
    let scale_w = f64::from(target_w) / f64::from(width);
    let scale_h = f64::from(target_h) / f64::from(height);
    if scale_w < scale_h {
        let new_h = (f64::from(height) * scale_w).ceil() as u32;
        (new_h.min(target_h), target_w)
    } else {
        let new_w = (f64::from(width) * scale_h).ceil() as u32;
        (target_h, new_w.min(target_w))
    }
}

/// The image centred on a `[height, width]` canvas of `fill` (an odd margin puts the extra pixel
/// right and below), as HF's `_get_padding_size` and `pad_to_square` place it.
fn pad_centred(image: &RgbImage, [height, width]: [u32; 2], fill: Rgb<u8>) -> RgbImage {
    let mut canvas = RgbImage::from_pixel(width, height, fill);
    let left = (width - image.width()) / 2;
    let top = (height - image.height()) / 2;
    imageops::replace(&mut canvas, image, i64::from(left), i64::from(top));
    canvas
}

/// HF `divide_to_patches`: `tile`-sided squares row by row (smaller at the right and bottom
/// edges when the sides are not multiples).
fn divide_to_patches(image: &RgbImage, tile: u32) -> Vec<RgbImage> {
    let rows = (0..image.height()).step_by(tile as usize);
    rows.flat_map(|y| {
        (0..image.width())
            .step_by(tile as usize)
            .map(move |x| imageops::crop_imm(image, x, y, tile, tile).to_image())
    })
    .collect()
}
