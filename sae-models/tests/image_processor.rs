//! The image processors against transformers 5.24 (torchvision backend) on the inputs in
//! tests/fixtures/image_processors (see its README): pixel values within 1e-5, grids and sizes
//! exactly; and their errors.

mod common;

use std::path::Path;

use common::{fixture, ints};
use image::DynamicImage;
use sae_core::TensorFile;
use sae_models::{
    LlavaOnevisionImageProcessor, ModelError, ProcessorSettings, Qwen2VlImageProcessor,
    image_processor::{MAX_IMAGE_PIXELS, smart_resize},
    load_image,
};
use serde::Deserialize;

/// One processor call of the fixture script.
#[derive(Deserialize)]
struct Case {
    name: String,
    /// The folder of the processor settings, and the stem of the outputs' file.
    config: String,
    processor: String,
    /// Per prompt, its image files.
    images: Vec<Vec<String>>,
}

fn cases(processor: &str) -> Vec<Case> {
    let path = fixture("image_processors/cases.json");
    let all: Vec<Case> = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let cases: Vec<Case> = all
        .into_iter()
        .filter(|c| c.processor == processor)
        .collect();
    assert!(!cases.is_empty(), "no {processor} case");
    cases
}

/// The case's images, decoded. A JPEG is read from PIL's decoding of it (`<stem>.pil.png`): the
/// `image` crate's JPEG decoder differs from libjpeg-turbo by a few levels (see
/// `jpeg_decoding_is_close_to_pil`), and these comparisons are about the processors.
fn prompts(case: &Case) -> Vec<Vec<DynamicImage>> {
    let dir = fixture("image_processors/images");
    let decode = |file: &String| {
        let file = match file.strip_suffix(".jpg") {
            Some(stem) => format!("{stem}.pil.png"),
            None => file.clone(),
        };
        load_image(&dir.join(file)).unwrap()
    };
    case.images
        .iter()
        .map(|prompt| prompt.iter().map(decode).collect())
        .collect()
}

/// `""` when `got` matches the reference tensor `name` within 1e-5, else why not.
fn compare(reference: &TensorFile, name: &str, shape: &[usize], got: &[f32]) -> String {
    let expected = reference.get(name).unwrap();
    if expected.shape != shape {
        return format!("{name}: shape {shape:?}, expected {:?}\n", expected.shape);
    }
    let expected = expected.to_f32();
    let (worst, at) = got
        .iter()
        .zip(&expected)
        .map(|(g, e)| (g - e).abs())
        .enumerate()
        .fold(
            (0f32, 0),
            |(m, at), (i, d)| if d > m { (d, i) } else { (m, at) },
        );
    println!("{name}: max |diff| {worst:e}");
    if worst > 1e-5 {
        format!("{name}: max |diff| {worst} at flat index {at} of {shape:?}\n")
    } else {
        String::new()
    }
}

/// `""` when the int64 reference `name` equals `got`, else why not.
fn compare_ints(reference: &TensorFile, name: &str, got: &[usize]) -> String {
    let expected: Vec<usize> = ints(reference, name).iter().map(|&v| v as usize).collect();
    if expected == got {
        String::new()
    } else {
        format!("{name}: {got:?}, expected {expected:?}\n")
    }
}

#[test]
fn qwen2_vl_matches_transformers() {
    let mut failures = String::new();
    for case in cases("Qwen2VLImageProcessor") {
        let dir = fixture("image_processors").join(&case.config);
        let processor = Qwen2VlImageProcessor::from_model_dir(&dir).unwrap();
        let reference = TensorFile::open(dir.with_extension("safetensors")).unwrap();
        let images: Vec<DynamicImage> = prompts(&case).into_iter().flatten().collect();
        let out = processor.preprocess(&images).unwrap();
        let key = format!("{}.{}", case.name, "pixel_values");
        failures += &compare(
            &reference,
            &key,
            &out.pixel_values.shape,
            &out.pixel_values.to_f32(),
        );
        let grids: Vec<usize> = out.image_grid_thw.concat();
        failures += &compare_ints(&reference, &format!("{}.image_grid_thw", case.name), &grids);
    }
    assert!(failures.is_empty(), "{failures}");
}

#[test]
fn llava_onevision_matches_transformers() {
    let mut failures = String::new();
    for case in cases("LlavaOnevisionImageProcessor") {
        let dir = fixture("image_processors").join(&case.config);
        let processor = LlavaOnevisionImageProcessor::from_model_dir(&dir).unwrap();
        let reference = TensorFile::open(dir.with_extension("safetensors")).unwrap();
        let prompts = prompts(&case);
        let out = if prompts.iter().all(|p| p.len() == 1) {
            processor.preprocess(&prompts.concat()).unwrap()
        } else {
            let slices: Vec<&[DynamicImage]> = prompts.iter().map(Vec::as_slice).collect();
            processor.preprocess_prompts(&slices).unwrap()
        };
        let key = format!("{}.{}", case.name, "pixel_values");
        failures += &compare(
            &reference,
            &key,
            &out.pixel_values.shape,
            &out.pixel_values.to_f32(),
        );
        let sizes: Vec<usize> = out.image_sizes.concat();
        failures += &compare_ints(&reference, &format!("{}.image_sizes", case.name), &sizes);
        let counts = &out.batch_num_images;
        failures += &compare_ints(
            &reference,
            &format!("{}.batch_num_images", case.name),
            counts,
        );
    }
    assert!(failures.is_empty(), "{failures}");
}

#[test]
fn settings_in_both_layouts() {
    let dir = fixture("image_processors");
    let qwen = Qwen2VlImageProcessor::from_model_dir(&dir.join("qwen2_vl")).unwrap();
    assert_eq!((qwen.min_pixels, qwen.max_pixels), (3136, 12544));
    assert_eq!(
        (qwen.patch_size, qwen.temporal_patch_size, qwen.merge_size),
        (14, 2, 2)
    );
    let legacy = Qwen2VlImageProcessor::from_model_dir(&dir.join("qwen2_vl_legacy")).unwrap();
    assert_eq!((legacy.min_pixels, legacy.max_pixels), (784, 1568));
    assert_eq!(legacy.normalization, qwen.normalization);

    let llava = LlavaOnevisionImageProcessor::from_model_dir(&dir.join("llava_onevision")).unwrap();
    assert_eq!((llava.size, llava.tile_size), ([56, 56], 56));
    assert_eq!(
        llava.image_grid_pinpoints,
        [[56, 56], [56, 112], [112, 56], [112, 112]]
    );
    assert_eq!(llava.normalization.image_mean, [0.5; 3]);
    let legacy =
        LlavaOnevisionImageProcessor::from_model_dir(&dir.join("llava_onevision_legacy")).unwrap();
    assert_eq!(
        (legacy.size, legacy.image_grid_pinpoints.len()),
        ([28, 28], 5)
    );
}

#[test]
fn wrong_processor_type_is_a_config_error() {
    let llava_dir = fixture("image_processors/llava_onevision");
    let err = Qwen2VlImageProcessor::from_model_dir(&llava_dir).unwrap_err();
    assert!(matches!(err, ModelError::BadConfig { .. }), "{err}");
    let err =
        Qwen2VlImageProcessor::from_model_dir(&fixture("image_processors/images")).unwrap_err();
    assert!(matches!(err, ModelError::BadConfig { .. }), "{err}");
}

#[test]
fn jpeg_decoding_is_close_to_pil() {
    let dir = fixture("image_processors/images");
    let ours = load_image(&dir.join("photo.jpg")).unwrap().to_rgb8();
    let pil = load_image(&dir.join("photo.pil.png")).unwrap().to_rgb8();
    assert_eq!(ours.dimensions(), pil.dimensions());
    let worst = ours
        .as_raw()
        .iter()
        .zip(pil.as_raw())
        .map(|(a, b)| a.abs_diff(*b))
        .max();
    // zune-jpeg against libjpeg-turbo: other IDCT and chroma upsampling roundings.
    assert!(worst <= Some(4), "max difference {worst:?}");
}

fn assert_bad_image(path: &Path) {
    match load_image(path) {
        Err(ModelError::BadImage { file, .. }) => assert_eq!(file, path),
        other => panic!("expected BadImage for {}, got {other:?}", path.display()),
    }
}

#[test]
fn unreadable_images_are_errors() {
    let dir = tempfile::tempdir().unwrap();
    assert_bad_image(&dir.path().join("missing.png"));
    let garbage = dir.path().join("garbage.png");
    std::fs::write(&garbage, b"not an image at all").unwrap();
    assert_bad_image(&garbage);
    let png = std::fs::read(fixture("image_processors/images/image1.png")).unwrap();
    let truncated = dir.path().join("truncated.png");
    std::fs::write(&truncated, &png[..png.len() / 2]).unwrap();
    assert_bad_image(&truncated);
    let jpeg = std::fs::read(fixture("image_processors/images/photo.jpg")).unwrap();
    let corrupt = dir.path().join("corrupt.jpg");
    std::fs::write(&corrupt, &jpeg[..40]).unwrap();
    assert_bad_image(&corrupt);
}

#[test]
fn an_image_over_the_pixel_limit_is_refused_from_its_header() {
    let path = fixture("huge_header.png");
    assert_eq!(
        load_image(&path).unwrap_err().to_string(),
        format!(
            "cannot read image {}: it is 20000 x 20000 = 400000000 pixels, more than the limit of {MAX_IMAGE_PIXELS} (PIL's MAX_IMAGE_PIXELS), so it was not decoded",
            path.display()
        )
    );
}

#[test]
fn images_transformers_refuses_are_errors() {
    let qwen = Qwen2VlImageProcessor::default();
    let err = qwen
        .preprocess(&[DynamicImage::new_rgb8(2, 500)])
        .unwrap_err();
    assert!(matches!(err, ModelError::ImagePreprocess(_)), "{err}");
    let err = qwen
        .preprocess(&[DynamicImage::new_rgb8(0, 10)])
        .unwrap_err();
    assert!(matches!(err, ModelError::ImagePreprocess(_)), "{err}");
    let llava = LlavaOnevisionImageProcessor::default();
    let err = llava
        .preprocess(&[DynamicImage::new_rgb8(10, 0)])
        .unwrap_err();
    assert!(matches!(err, ModelError::ImagePreprocess(_)), "{err}");
}

#[test]
fn smart_resize_rounds_halves_to_even() {
    // 70 / 28 = 2.5 rounds to 2 in Python, and 98 / 28 = 3.5 to 4.
    assert_eq!(smart_resize(70, 98, 28, 0, 1 << 20).unwrap(), (56, 112));
}

#[test]
fn sizes_that_cannot_make_patches_are_errors() {
    // A 10-pixel-tall image rounds to no 28-pixel block when min_pixels allows it.
    let err = smart_resize(10, 300, 28, 0, 1 << 20).unwrap_err();
    assert!(
        err.to_string().contains("a 10x300 image is too small"),
        "{err}"
    );
    // min_pixels above max_pixels, or a resize target of trillions of pixels.
    let dir = tempfile::tempdir().unwrap();
    let source = fixture("image_processors/qwen2_vl");
    for (min, max) in [(20_000, 10_000), (3136, 1u64 << 40)] {
        for entry in std::fs::read_dir(&source).unwrap() {
            let path = entry.unwrap().path();
            std::fs::copy(&path, dir.path().join(path.file_name().unwrap())).unwrap();
        }
        // The fixture keeps its settings in processor_config.json's `image_processor` object.
        let file = dir.path().join("processor_config.json");
        let mut json: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&file).unwrap()).unwrap();
        json["image_processor"]["min_pixels"] = min.into();
        json["image_processor"]["max_pixels"] = max.into();
        std::fs::write(&file, json.to_string()).unwrap();
        let err = Qwen2VlImageProcessor::from_model_dir(dir.path()).unwrap_err();
        assert!(err.to_string().contains("must satisfy min <= max"), "{err}");
    }
}
