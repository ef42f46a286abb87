//! A latent's activations on an image's token grid drawn over the image: each region shaded red
//! by the activation there, relative to the latent's largest, for a vision-language explainer.

use std::io::Cursor;

use image::{ImageFormat, Rgb, RgbImage};

use crate::error::{InterpError, Result};

/// The longest side of a drawn heatmap, in pixels (larger images are scaled down).
pub const MAX_SIDE: u32 = 512;

/// `image` (encoded) as a PNG with each of its `rows x cols` regions blended with red in
/// proportion to `activations[region] / max` (at most 60 % red).
pub fn heatmap_png(
    image: &[u8],
    rows: usize,
    cols: usize,
    activations: &[f32],
    max: f32,
) -> Result<Vec<u8>> {
    let bad = |e: String| InterpError::Invalid(format!("cannot draw a heatmap: {e}"));
    let mut picture = sae_models::decode_image(image).map_err(bad)?;
    if picture.width().max(picture.height()) > MAX_SIDE {
        picture = picture.thumbnail(MAX_SIDE, MAX_SIDE);
    }
    let mut rgb: RgbImage = picture.to_rgb8();
    let (w, h) = rgb.dimensions();
    for (x, y, pixel) in rgb.enumerate_pixels_mut() {
        let row = (y as usize * rows / h as usize).min(rows - 1);
        let col = (x as usize * cols / w as usize).min(cols - 1);
        let a = activations[row * cols + col];
        let alpha = if max > 0.0 {
            0.6 * (a / max).clamp(0.0, 1.0)
        } else {
            0.0
        };
        let blend =
            |c: u8, target: f32| (f32::from(c) * (1.0 - alpha) + target * alpha).round() as u8;
        let Rgb([r, g, b]) = *pixel;
        *pixel = Rgb([blend(r, 255.0), blend(g, 0.0), blend(b, 0.0)]);
    }
    let mut png = Vec::new();
    rgb.write_to(&mut Cursor::new(&mut png), ImageFormat::Png)
        .map_err(|e| bad(e.to_string()))?;
    Ok(png)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_hottest_region_turns_red() {
        let gray = RgbImage::from_pixel(4, 4, Rgb([100, 100, 100]));
        let mut encoded = Vec::new();
        gray.write_to(&mut Cursor::new(&mut encoded), ImageFormat::Png)
            .unwrap();
        // 2 x 2 regions: top right at the maximum, bottom left at half of it.
        let png = heatmap_png(&encoded, 2, 2, &[0.0, 2.0, 1.0, 0.0], 2.0).unwrap();
        let drawn = image::load_from_memory(&png).unwrap().to_rgb8();
        // 100 * 0.4 + 255 * 0.6 = 193; 100 * 0.4 = 40; half: alpha 0.3.
        assert_eq!(drawn.get_pixel(3, 0).0, [193, 40, 40]);
        assert_eq!(drawn.get_pixel(0, 3).0, [147, 70, 70]);
        assert_eq!(drawn.get_pixel(0, 0).0, [100, 100, 100]);
    }

    #[test]
    fn an_image_over_the_pixel_limit_is_not_decoded() {
        let fixture = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../sae-models/tests/fixtures/huge_header.png"
        );
        let huge = std::fs::read(fixture).unwrap();
        let err = heatmap_png(&huge, 1, 1, &[1.0], 1.0).unwrap_err();
        assert_eq!(
            err.to_string(),
            "cannot draw a heatmap: it is 20000 x 20000 = 400000000 pixels, more than the limit of 178956970 (PIL's MAX_IMAGE_PIXELS), so it was not decoded"
        );
    }
}
