//! torchvision's bicubic resize of a uint8 image with antialiasing
//! (`tvF.resize(uint8 image, size, BICUBIC, antialias=True)`), bit for bit.
//!
//! On CPU torch resizes uint8 images natively with Pillow's separable algorithm in fixed point
//! (aten/src/ATen/native/cpu/UpSampleKernel.cpp, `_compute_index_ranges_int16_weights` and the
//! uint8 horizontal and vertical passes): each output pixel is a weighted sum of a window of input
//! pixels, the weights being Keys' cubic (a = -0.5) stretched by the downscale factor, normalised,
//! and rounded to int16 at the highest precision that fits. The horizontal pass runs first and
//! rounds to uint8, then the vertical pass; an axis whose size does not change is left alone.

use image::{Rgb, RgbImage};

/// `image` resized to `height` x `width`.
pub(crate) fn resize_bicubic(image: &RgbImage, height: u32, width: u32) -> RgbImage {
    let resized_rows = if width == image.width() {
        image.clone()
    } else {
        let weights = AxisWeights::bicubic(image.width(), width);
        RgbImage::from_fn(width, image.height(), |x, y| {
            weights.apply(x, |i| *image.get_pixel(i, y))
        })
    };
    if height == image.height() {
        return resized_rows;
    }
    let weights = AxisWeights::bicubic(image.height(), height);
    RgbImage::from_fn(width, height, |x, y| {
        weights.apply(y, |i| *resized_rows.get_pixel(x, i))
    })
}

/// Fixed-point filter weights along one axis: output `i` is `sum_j taps[i][j] * input[starts[i] + j]`,
/// shifted right by `precision` bits with rounding.
struct AxisWeights {
    starts: Vec<u32>,
    /// Each fits in an int16, as in torch.
    taps: Vec<Vec<i32>>,
    precision: u32,
}

impl AxisWeights {
    /// The antialiased bicubic weights from `input_size` to `output_size` pixels
    /// (`HelperInterpBase::_compute_indices_min_size_weights_aa` in f64, then
    /// `_compute_index_ranges_int16_weights`).
    fn bicubic(input_size: u32, output_size: u32) -> Self {
        const INTERP_SIZE: f64 = 4.0;
        let scale = f64::from(input_size) / f64::from(output_size);
        // Downscaling widens the filter by the scale, so that every input pixel contributes.
        let support = INTERP_SIZE * 0.5 * scale.max(1.0);
        let max_taps = support.ceil() as i64 * 2 + 1;
        let inv_scale = if scale >= 1.0 { 1.0 / scale } else { 1.0 };

        let mut starts = Vec::with_capacity(output_size as usize);
        let mut float_taps = Vec::with_capacity(output_size as usize);
        let mut largest = 0f64;
        for i in 0..output_size {
            let center = scale * (f64::from(i) + 0.5);
            let start = ((center - support + 0.5) as i64).max(0);
            let end = ((center + support + 0.5) as i64).min(i64::from(input_size));
            let count = (end - start).clamp(0, max_taps);
            let mut taps: Vec<f64> = (start..start + count)
                .map(|j| keys_cubic((j as f64 - center + 0.5) * inv_scale))
                .collect();
            let total: f64 = taps.iter().sum();
            if total != 0.0 {
                for w in &mut taps {
                    *w /= total;
                    largest = largest.max(*w);
                }
            }
            starts.push(start as u32);
            float_taps.push(taps);
        }

        // The most fractional bits that keep the largest weight, doubled, within an int16.
        let mut precision = 0;
        while precision < 22
            && ((0.5 + largest * f64::from(1 << (precision + 1))) as i32) < (1 << 15)
        {
            precision += 1;
        }
        let scale_to_int = f64::from(1 << precision);
        let taps = float_taps
            .iter()
            .map(|taps| {
                taps.iter()
                    .map(|w| {
                        let v = w * scale_to_int;
                        (if v < 0.0 { v - 0.5 } else { v + 0.5 }) as i32
                    })
                    .collect()
            })
            .collect();
        AxisWeights {
            starts,
            taps,
            precision,
        }
    }

    /// Output pixel `i`, reading input pixels with `input(index along the axis)`.
    fn apply(&self, i: u32, input: impl Fn(u32) -> Rgb<u8>) -> Rgb<u8> {
        let start = self.starts[i as usize];
        let mut sums = [1i32 << (self.precision - 1); 3];
        for (j, &weight) in (start..).zip(&self.taps[i as usize]) {
            let pixel = input(j);
            for (sum, &value) in sums.iter_mut().zip(&pixel.0) {
                *sum += weight * i32::from(value);
            }
        }
        Rgb(sums.map(|sum| (sum >> self.precision).clamp(0, 255) as u8))
    }
}

/// Keys' cubic convolution kernel with a = -0.5 (torch's `HelperInterpCubic::aa_filter`, written
/// as `cubic_convolution1` / `cubic_convolution2` so that it rounds the same way).
fn keys_cubic(x: f64) -> f64 {
    const A: f64 = -0.5;
    let x = x.abs();
    if x < 1.0 {
        ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0
    } else if x < 2.0 {
        ((A * x - 5.0 * A) * x + 8.0 * A) * x - 4.0 * A
    } else {
        0.0
    }
}
