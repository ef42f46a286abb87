//! Rescaling and normalisation, as the torchvision backend's `rescale_and_normalize` does it.

use image::RgbImage;
use serde::Deserialize;

/// OpenAI CLIP's per-channel mean, transformers' default `image_mean`.
const CLIP_MEAN: [f64; 3] = [0.48145466, 0.4578275, 0.40821073];
/// OpenAI CLIP's per-channel standard deviation, transformers' default `image_std`.
const CLIP_STD: [f64; 3] = [0.26862954, 0.26130258, 0.27577711];

/// The rescale and normalisation settings of an image processor (same keys as transformers).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default)]
pub struct Normalization {
    /// Multiply pixel values by `rescale_factor`.
    pub do_rescale: bool,
    /// Usually 1/255, to bring uint8 values to [0, 1].
    pub rescale_factor: f64,
    /// Subtract `image_mean` and divide by `image_std`, per RGB channel.
    pub do_normalize: bool,
    /// Per-channel mean (R, G, B).
    pub image_mean: [f64; 3],
    /// Per-channel standard deviation (R, G, B).
    pub image_std: [f64; 3],
}

impl Default for Normalization {
    /// transformers' defaults for both processors: rescale by 1/255, normalise with CLIP's
    /// mean and std.
    fn default() -> Self {
        Normalization {
            do_rescale: true,
            rescale_factor: 1.0 / 255.0,
            do_normalize: true,
            image_mean: CLIP_MEAN,
            image_std: CLIP_STD,
        }
    }
}

impl Normalization {
    /// Appends `image` rescaled and normalised, as planar `[3, height, width]` values.
    pub(crate) fn append_planar(&self, image: &RgbImage, out: &mut Vec<f32>) {
        let (scale, offset, divisor) = self.affine();
        for channel in 0..3 {
            out.extend(
                image
                    .pixels()
                    .map(|p| (f32::from(p[channel]) * scale - offset[channel]) / divisor[channel]),
            );
        }
    }

    /// `(scale, offset, divisor)` of `value = (x * scale - offset) / divisor`, which gives HF's
    /// f32 arithmetic exactly in all four cases. With both steps on, HF fuses them
    /// (`_fuse_mean_std_and_rescale_factor`): `(x - mean / factor) / (std / factor)`, where
    /// `mean / factor` is the f32 mean times the f32 of `1 / factor`.
    fn affine(&self) -> (f32, [f32; 3], [f32; 3]) {
        let mean = self.image_mean.map(|m| m as f32);
        let std = self.image_std.map(|s| s as f32);
        match (self.do_rescale, self.do_normalize) {
            (true, true) => {
                let inverse = (1.0 / self.rescale_factor) as f32;
                (1.0, mean.map(|m| m * inverse), std.map(|s| s * inverse))
            }
            (false, true) => (1.0, mean, std),
            (true, false) => (self.rescale_factor as f32, [0.0; 3], [1.0; 3]),
            (false, false) => (1.0, [0.0; 3], [1.0; 3]),
        }
    }
}
