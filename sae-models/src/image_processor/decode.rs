//! Decoding image files, and the RGB conversion transformers applies to a PIL image.

use std::io::Cursor;
use std::path::Path;

use image::{DynamicImage, ImageDecoder, ImageReader, Rgb, RgbImage};

use crate::error::{ModelError, Result};

/// The most pixels an image may have, PIL's `Image.MAX_IMAGE_PIXELS` (its decompression-bomb
/// limit): a larger image is refused from its header, before any pixel is decoded.
pub const MAX_IMAGE_PIXELS: u64 = 178_956_970;

/// Decodes the image file at `path` (PNG, JPEG or WebP, recognised by content) and applies its
/// EXIF orientation, like transformers' `load_image`. Transparency is kept: the processors
/// composite it onto white, as they do for a `PIL.Image.open` image.
pub fn load_image(path: &Path) -> Result<DynamicImage> {
    let bad = |message: String| ModelError::BadImage {
        file: path.to_path_buf(),
        message,
    };
    let bytes = std::fs::read(path).map_err(|e| bad(e.to_string()))?;
    decode_image(&bytes).map_err(bad)
}

/// The same for an encoded image in memory (a dataset's image bytes); the error says why. An
/// image of more than [`MAX_IMAGE_PIXELS`] is refused.
pub fn decode_image(bytes: &[u8]) -> std::result::Result<DynamicImage, String> {
    let mut decoder = ImageReader::new(Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|e| e.to_string())?
        .into_decoder()
        .map_err(|e| e.to_string())?;
    let (width, height) = decoder.dimensions();
    let pixels = u64::from(width) * u64::from(height);
    if pixels > MAX_IMAGE_PIXELS {
        return Err(format!(
            "it is {width} x {height} = {pixels} pixels, more than the limit of {MAX_IMAGE_PIXELS} (PIL's MAX_IMAGE_PIXELS), so it was not decoded"
        ));
    }
    let orientation = decoder.orientation().map_err(|e| e.to_string())?;
    let mut image = DynamicImage::from_decoder(decoder).map_err(|e| e.to_string())?;
    image.apply_orientation(orientation);
    Ok(image)
}

/// HF `convert_to_rgb` on a PIL image: an image with an alpha channel is composited onto white,
/// any other is converted (grey replicated to RGB). 16-bit images are reduced to 8 bits by the
/// `image` crate's rounding, where PIL would truncate: those alone may differ from transformers.
pub(crate) fn convert_to_rgb(image: &DynamicImage) -> Result<RgbImage> {
    if image.width() == 0 || image.height() == 0 {
        return Err(ModelError::ImagePreprocess(
            "the image has no pixels".into(),
        ));
    }
    if !image.color().has_alpha() {
        return Ok(image.to_rgb8());
    }
    let rgba = image.to_rgba8();
    Ok(RgbImage::from_fn(image.width(), image.height(), |x, y| {
        let [r, g, b, alpha] = rgba.get_pixel(x, y).0;
        Rgb([r, g, b].map(|value| over_white(value, alpha)))
    }))
}

/// One channel of PIL's `alpha_composite(white, pixel)` (libImaging/AlphaComposite.c). With an
/// opaque white background its fixed-point blend (7 extra bits of precision, division by 255
/// rounded with two shifts) reduces to this.
fn over_white(value: u8, alpha: u8) -> u8 {
    const PRECISION_BITS: u32 = 7;
    let (value, alpha) = (u32::from(value), u32::from(alpha));
    let blend = (value * alpha + 255 * (255 - alpha)) << PRECISION_BITS;
    let rounded = blend + (0x80 << PRECISION_BITS);
    let divided_by_255 = ((rounded >> 8) + rounded) >> 8;
    (divided_by_255 >> PRECISION_BITS) as u8
}
