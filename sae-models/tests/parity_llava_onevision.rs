//! Parity with transformers on the `llava_onevision_tiny` fixture: from the processor's
//! `input_ids`, `pixel_values`, `image_sizes` and `batch_num_images`, the logits and every
//! recorded hook output (vision layers, projector, language-model layers) within 1e-4 relative,
//! greedy generation, and the cases of `extra.safetensors` (tools/make_llava_fixture.py):
//! another pinpoint with unpadded rows, a left-padded batch, two images in a prompt, and the
//! `anyres_max_N` downsampling.

use burn::tensor::backend::Backend;
use burn::tensor::{DType, Int, Tensor, TensorData};
use image::DynamicImage;
use sae_core::tensor_file::{StorageDtype, write_tensors};
use sae_core::{HookedModule, Hooks, HostTensor, NoHooks, TensorFile};
use sae_models::llava_onevision::{ImageInput, LlavaOnevision, LlavaOnevisionConfig, VlInput};
use sae_models::{
    GenerateConfig, LlavaOnevisionImageProcessor, ProcessorSettings, Prompt, VisionLanguageModel,
    Weights, generate, load_image,
};

mod common;

use common::{B, Record, assert_matches_reference, fixture, ints, max_rel_diff, values};

const MODEL: &str = "llava_onevision_tiny";

fn model<Bk: Backend>() -> LlavaOnevision<Bk> {
    LlavaOnevision::load_as(&fixture(MODEL), DType::F32, &Default::default()).unwrap()
}

fn reference() -> TensorFile {
    TensorFile::open(fixture(&format!("{MODEL}/reference.safetensors"))).unwrap()
}

/// `[batch, tokens]` int64 tensor `name` of `file`.
fn int_tensor<Bk: Backend>(file: &TensorFile, name: &str) -> Tensor<Bk, 2, Int> {
    let shape = file.shape(name).unwrap();
    Tensor::from_data(
        TensorData::new(ints(file, name), [shape[0], shape[1]]),
        &Default::default(),
    )
}

/// The model input stored under `prefix` (`inputs.` or `<case>.inputs.`) of `file`, with
/// `pixel_values`.
fn stored_input<Bk: Backend>(
    file: &TensorFile,
    prefix: &str,
    pixel_values: HostTensor,
) -> VlInput<Bk> {
    let device = Default::default();
    let name = |key: &str| format!("{prefix}{key}");
    let sizes = ints(file, &name("image_sizes"));
    VlInput {
        input_ids: int_tensor(file, &name("input_ids")),
        attention_mask: Some(int_tensor(file, &name("attention_mask"))),
        images: Some(ImageInput {
            pixel_values: pixel_values.to_float(&device),
            image_sizes: sizes
                .chunks(2)
                .map(|s| [s[0] as usize, s[1] as usize])
                .collect(),
            batch_num_images: ints(file, &name("batch_num_images"))
                .into_iter()
                .map(|n| n as usize)
                .collect(),
        }),
    }
}

/// The shared fixture's input.
fn reference_input<Bk: Backend>(reference: &TensorFile) -> VlInput<Bk> {
    let pixels = reference.get("inputs.pixel_values").unwrap();
    stored_input(reference, "inputs.", pixels)
}

/// The shared fixture's logits and hook outputs on backend `Bk`.
fn check_reference<Bk: Backend>() {
    let (model, reference) = (model::<Bk>(), reference());
    let mut record = Record::default();
    let out = model
        .forward_hooked(reference_input(&reference), &mut record)
        .unwrap();
    let logits = values(out.logits.unwrap());
    let listed = model.hook_points();
    assert_matches_reference(MODEL, &reference, logits, &record, 9, listed);
}

// The images go with the first pass, then one token at a time from the KV cache; the prompt
// built from the image file and the chat text.
#[test]
fn greedy_generation_matches_transformers() {
    let reference = reference();
    let device = Default::default();
    let vlm =
        VisionLanguageModel::<B>::load_as(fixture(MODEL).to_str().unwrap(), DType::F32, &device)
            .unwrap();
    let image = load_image(&fixture("image_processors/images/image1.png")).unwrap();
    let prompt = vlm
        .process(Prompt::Chat("Describe this image."), &[image])
        .unwrap();
    assert_eq!(prompt.input_ids, ints(&reference, "inputs.input_ids"));
    let config = GenerateConfig {
        max_new_tokens: 8,
        sampling: None,
        stop_tokens: Vec::new(),
        pad_token: 1024,
    };
    let generator = vlm.model.generator(prompt.images);
    let tokens = generate(
        &generator,
        &[prompt.input_ids],
        &config,
        &mut NoHooks,
        &device,
    )
    .unwrap();
    assert_eq!(tokens[0], ints(&reference, "generate.greedy"));
}

/// Logits at the real (unpadded) positions only.
fn real_positions(logits: &[f32], mask: &[i64]) -> Vec<f32> {
    let vocab = logits.len() / mask.len();
    logits
        .chunks(vocab)
        .zip(mask)
        .filter(|(_, m)| **m == 1)
        .flat_map(|(row, _)| row.to_vec())
        .collect()
}

// Beyond the shared fixture: another pinpoint with unpadded rows (`wide`), a left-padded batch
// of a tall image (unpadded columns) and a square one (`batch`), two images in one prompt
// (`multi`), a feature map downsampled by `anyres_max_2` (`max2`), and 60-pixel tiles that the
// 14-pixel patches do not divide (`tile60`, as the real checkpoints' 384-pixel tiles). From the
// image files through the image processor (its outputs equal to the file's): the logits of
// every real token within 1e-4 relative.
#[test]
fn llava_onevision_matches_transformers() {
    check_reference::<B>();
}

#[test]
fn other_shapes_padded_batches_and_several_images_match_transformers() {
    check_other_cases::<B>();
}

// The same model code on a CubeCL backend (in CI Mesa's software Vulkan device), where the
// masks hold the lowest finite value rather than -inf.
#[cfg(any(feature = "wgpu", feature = "cuda"))]
#[test]
fn llava_onevision_and_its_other_cases_match_transformers_on_the_gpu_backend() {
    check_reference::<common::Gpu>();
    check_other_cases::<common::Gpu>();
}

/// The cases of `extra.safetensors` on backend `Bk`.
fn check_other_cases<Bk: Backend>() {
    let file = TensorFile::open(fixture(&format!("{MODEL}/extra.safetensors"))).unwrap();
    let image =
        |name: &str| load_image(&fixture(&format!("image_processors/images/{name}.png"))).unwrap();
    // (case, images per prompt, anyres_max_N, tile side)
    let cases = [
        ("wide", vec![vec![image("wide")]], 9, 56),
        (
            "batch",
            vec![vec![image("tall")], vec![image("image2")]],
            9,
            56,
        ),
        ("multi", vec![vec![image("image2"), image("gray")]], 9, 56),
        ("max2", vec![vec![image("image1")]], 2, 56),
        ("tile60", vec![vec![image("image2")]], 9, 60),
    ];
    let device = Default::default();
    let weights = Weights::open(&fixture(MODEL)).unwrap();
    for (case, prompts, max_num_patches, tile) in cases {
        let pinpoints = vec![
            [tile, tile],
            [tile, 2 * tile],
            [2 * tile, tile],
            [2 * tile, 2 * tile],
        ];
        let mut config =
            LlavaOnevisionConfig::from_file(&fixture(&format!("{MODEL}/config.json"))).unwrap();
        config.max_num_patches = max_num_patches;
        config.vision.image_size = tile as usize;
        config.image_grid_pinpoints = pinpoints.clone();
        let model = LlavaOnevision::<Bk>::from_weights(
            config,
            &weights,
            &sae_models::LoadScope::whole(true),
            &device,
        )
        .unwrap();
        let mut processor = LlavaOnevisionImageProcessor::from_model_dir(&fixture(MODEL)).unwrap();
        processor.size = [tile, tile];
        processor.tile_size = tile;
        processor.image_grid_pinpoints = pinpoints;

        let prefix = format!("{case}.inputs.");
        let slices: Vec<&[DynamicImage]> = prompts.iter().map(Vec::as_slice).collect();
        let processed = processor.preprocess_prompts(&slices).unwrap();
        let input = stored_input::<Bk>(&file, &prefix, processed.pixel_values.clone());
        let images = input.images.as_ref().unwrap();
        assert_eq!(processed.image_sizes, images.image_sizes, "{case}");
        assert_eq!(
            processed.batch_num_images, images.batch_num_images,
            "{case}"
        );
        if let Ok(stored) = file.get(&format!("{prefix}pixel_values")) {
            let err = max_rel_diff(&processed.pixel_values.to_f32(), &stored.to_f32());
            assert!(err < 1e-5, "{case}: pixel values differ by {err}");
        }

        let out = model.forward_hooked(input, &mut NoHooks).unwrap();
        let mask = ints(&file, &format!("{prefix}attention_mask"));
        let expected = file.get(&format!("{case}.logits")).unwrap().to_f32();
        let err = max_rel_diff(
            &real_positions(&values(out.logits.unwrap()), &mask),
            &real_positions(&expected, &mask),
        );
        assert!(err < 1e-4, "{case}: logits differ by {err}");
    }
}

#[test]
fn a_prompt_whose_image_tokens_do_not_match_the_images_is_an_error() {
    let (model, reference) = (model::<B>(), reference());
    let mut bad = reference_input(&reference);
    bad.input_ids = Tensor::from_data(
        TensorData::new(vec![1i64, 2, 3], [1, 3]),
        &Default::default(),
    );
    bad.attention_mask = None;
    let err = model.forward_hooked(bad, &mut NoHooks).unwrap_err();
    assert!(err.to_string().contains("image tokens"), "{err}");

    // A size whose pinpoint needs more tiles than pixel_values holds.
    let mut bad = reference_input(&reference);
    let images = bad.images.as_mut().unwrap();
    images.pixel_values = images.pixel_values.clone().slice([0..1, 0..3]);
    let err = model.forward_hooked(bad, &mut NoHooks).unwrap_err();
    assert!(err.to_string().contains("tiles"), "{err}");

    let mut bad = reference_input(&reference);
    bad.images.as_mut().unwrap().batch_num_images = vec![2];
    let err = model.forward_hooked(bad, &mut NoHooks).unwrap_err();
    assert!(err.to_string().contains("batch_num_images"), "{err}");
}

#[test]
fn the_pass_stops_after_the_last_needed_hook() {
    struct StopAt(Vec<String>);
    impl Hooks<B> for StopAt {
        fn call(&mut self, path: &str, x: Tensor<B, 3>) -> Tensor<B, 3> {
            self.0.push(path.to_string());
            x
        }
        fn stop_after(&self) -> Option<&str> {
            Some("model.multi_modal_projector")
        }
    }
    let (model, reference) = (model::<B>(), reference());
    let mut hooks = StopAt(Vec::new());
    let out = model
        .forward_hooked(reference_input(&reference), &mut hooks)
        .unwrap();
    assert!(out.logits.is_none());
    assert_eq!(hooks.0.last().unwrap(), "model.multi_modal_projector");
    assert_eq!(hooks.0.len(), 7, "{:?}", hooks.0);
}

// The fixture stores the hub layout with `vision_tower.encoder`; real hub checkpoints nest
// `vision_tower.vision_model`, and transformers 5 writes `model.language_model`,
// `model.vision_tower`, `model.multi_modal_projector`, `model.image_newline`, `lm_head`. All
// load to the same model.
#[test]
fn every_checkpoint_layout_loads() {
    let dir = fixture(MODEL);
    let stored = TensorFile::open(dir.join("model.safetensors")).unwrap();
    let reference = reference();
    let expected = reference.get("logits").unwrap().to_f32();
    let layouts: [fn(&str) -> String; 2] = [
        |name| name.replacen("vision_tower.", "vision_tower.vision_model.", 1),
        |name| {
            if let Some(rest) = name.strip_prefix("language_model.model.") {
                format!("model.language_model.{rest}")
            } else if let Some(rest) = name.strip_prefix("language_model.") {
                rest.to_string()
            } else {
                format!("model.{name}")
            }
        },
    ];
    for rename in layouts {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::copy(dir.join("config.json"), tmp.path().join("config.json")).unwrap();
        let tensors: Vec<_> = stored
            .names()
            .into_iter()
            .map(|n| (rename(&n), stored.get(&n).unwrap()))
            .collect();
        write_tensors(
            &tmp.path().join("model.safetensors"),
            &tensors,
            StorageDtype::F32,
            None,
        )
        .unwrap();
        let model =
            LlavaOnevision::<B>::load_as(tmp.path(), DType::F32, &Default::default()).unwrap();
        let out = model
            .forward_hooked(reference_input(&reference), &mut NoHooks)
            .unwrap();
        let err = max_rel_diff(&values(out.logits.unwrap()), &expected);
        assert!(
            err < 1e-4,
            "{}: logits differ by {err}",
            rename("vision_tower.x")
        );
    }
}
