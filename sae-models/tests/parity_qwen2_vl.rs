//! Parity with transformers on the `qwen2_vl_tiny` and `qwen2_5_vl_tiny` fixtures: from the
//! processor's `input_ids`, `pixel_values` and `image_grid_thw`, the logits and every recorded
//! hook output (vision blocks, merger, language-model layers) within 1e-4 relative.

use burn::tensor::backend::Backend;
use burn::tensor::{DType, Int, Tensor, TensorData};
use sae_core::{HookedModule, TensorFile};
use sae_models::qwen2_vl::{ImageInput, Qwen2Vl, VlInput};
use sae_models::{GenerateConfig, Prompt, VisionLanguageModel, generate, load_image};

mod common;

use common::{
    B, Record, assert_matches_reference, fixture, ints, max_rel_diff, qwen2_vl_input, values,
};

/// The fixture's model, reference file and processor inputs.
fn load<Bk: Backend>(model_dir: &str) -> (Qwen2Vl<Bk>, TensorFile, VlInput<Bk>) {
    let device = Default::default();
    let model = Qwen2Vl::<Bk>::load_as(&fixture(model_dir), DType::F32, &device).unwrap();
    let reference =
        TensorFile::open(fixture(&format!("{model_dir}/reference.safetensors"))).unwrap();
    let input = qwen2_vl_input(&reference, &device);
    (model, reference, input)
}

fn check<Bk: Backend>(model_dir: &str) {
    let (model, reference, input) = load::<Bk>(model_dir);
    let mut record = Record::default();
    let out = model.forward_hooked(input, &mut record).unwrap();
    let logits = values(out.logits.unwrap());
    let listed = model.hook_points();
    assert_matches_reference(model_dir, &reference, logits, &record, 9, listed);
}

#[test]
fn qwen2_vl_matches_transformers() {
    check::<B>("qwen2_vl_tiny");
}

#[test]
fn qwen2_5_vl_matches_transformers() {
    check::<B>("qwen2_5_vl_tiny");
}

// The same model code on a CubeCL backend (in CI Mesa's software Vulkan device), where the
// vision tower's segment masks hold the lowest finite value rather than -inf.
#[cfg(any(feature = "wgpu", feature = "cuda"))]
#[test]
fn qwen2_vl_and_qwen2_5_vl_match_transformers_on_the_gpu_backend() {
    check::<common::Gpu>("qwen2_vl_tiny");
    check::<common::Gpu>("qwen2_5_vl_tiny");
}

// The processor's token types (0 text, 1 image) are what get_rope_index groups by; ours come
// from the image token id, and must agree.
#[test]
fn image_tokens_are_where_the_processor_put_them() {
    let (model, reference, _) = load::<B>("qwen2_vl_tiny");
    let ids = ints(&reference, "inputs.input_ids");
    let types = ints(&reference, "inputs.mm_token_type_ids");
    let image = model.config().image_token_id;
    let ours: Vec<i64> = ids.iter().map(|&id| i64::from(id == image)).collect();
    assert_eq!(ours, types);
}

#[test]
fn a_prompt_whose_image_tokens_do_not_match_the_images_is_an_error() {
    let (model, _, mut input) = load::<B>("qwen2_vl_tiny");
    let device = Default::default();
    let ids: Vec<i64> = vec![1, 2, 3];
    input.input_ids = Tensor::from_data(TensorData::new(ids, [1, 3]), &device);
    let err = model
        .forward_hooked(input, &mut sae_core::NoHooks)
        .unwrap_err();
    assert!(err.to_string().contains("image tokens"), "{err}");
}

// The whole path from files: the chat template with the image first, the placeholder expanded,
// the image processed, then the model: the fixture's input ids exactly, its pixel values and
// logits.
#[test]
fn a_chat_prompt_with_an_image_gives_the_processor_inputs_and_logits() {
    for model_dir in ["qwen2_vl_tiny", "qwen2_5_vl_tiny"] {
        let device = Default::default();
        let vlm = VisionLanguageModel::<B>::load_as(
            fixture(model_dir).to_str().unwrap(),
            DType::F32,
            &device,
        )
        .unwrap();
        let image = load_image(&fixture("image_processors/images/image1.png")).unwrap();
        let prompt = vlm
            .process(Prompt::Chat("Describe this image."), &[image])
            .unwrap();
        let reference =
            TensorFile::open(fixture(&format!("{model_dir}/reference.safetensors"))).unwrap();
        assert_eq!(prompt.input_ids, ints(&reference, "inputs.input_ids"));
        assert_eq!(
            prompt.mm_token_type_ids,
            Some(ints(&reference, "inputs.mm_token_type_ids"))
        );
        let pixels = prompt.images.clone().unwrap().pixel_values().to_f32();
        let expected = reference.get("inputs.pixel_values").unwrap().to_f32();
        assert!(max_rel_diff(&pixels, &expected) < 1e-5);
        let out = vlm
            .model
            .forward_hooked(prompt.to_input(&device), &mut sae_core::NoHooks)
            .unwrap();
        let err = max_rel_diff(
            &values(out.logits.unwrap()),
            &reference.get("logits").unwrap().to_f32(),
        );
        assert!(err < 1e-4, "{model_dir}: logits differ by {err}");
    }
}

#[test]
fn a_text_prompt_needs_one_placeholder_per_image() {
    let vlm = VisionLanguageModel::<B>::load_as(
        fixture("qwen2_vl_tiny").to_str().unwrap(),
        DType::F32,
        &Default::default(),
    )
    .unwrap();
    let image = load_image(&fixture("image_processors/images/image1.png")).unwrap();
    let err = vlm
        .process(Prompt::Text("no placeholder"), &[image])
        .unwrap_err();
    assert!(err.to_string().contains("placeholders"), "{err}");
}

/// One case of `extra.safetensors` (tools/make_qwen2_vl_fixture.py): the model input and the
/// reference logits.
fn extra_case(model_dir: &str, case: &str) -> (VlInput<B>, Vec<f32>, Vec<i64>) {
    let device = Default::default();
    let file = TensorFile::open(fixture(&format!("{model_dir}/extra.safetensors"))).unwrap();
    let get = |name: &str| file.get(&format!("{case}.inputs.{name}")).unwrap();
    let ids = get("input_ids");
    let [b, t] = [ids.shape[0], ids.shape[1]];
    let int2 = |name: &str| {
        Tensor::<B, 2, Int>::from_data(
            TensorData::new(ints(&file, &format!("{case}.inputs.{name}")), [b, t]),
            &device,
        )
    };
    let pixels = get("pixel_values");
    let grid: Vec<usize> = ints(&file, &format!("{case}.inputs.image_grid_thw"))
        .into_iter()
        .map(|v| v as usize)
        .collect();
    let input = VlInput {
        input_ids: int2("input_ids"),
        attention_mask: Some(int2("attention_mask")),
        images: Some(ImageInput {
            pixel_values: Tensor::from_data(
                TensorData::new(pixels.to_f32(), [pixels.shape[0], pixels.shape[1]]),
                &device,
            ),
            grid_thw: grid.chunks(3).map(|g| [g[0], g[1], g[2]]).collect(),
        }),
    };
    let logits = file.get(&format!("{case}.logits")).unwrap().to_f32();
    (
        input,
        logits,
        ints(&file, &format!("{case}.inputs.attention_mask")),
    )
}

// Several images in one prompt, another aspect ratio, and a left-padded batch of two prompts:
// the logits of every real token within 1e-4 relative (padding positions are not compared).
#[test]
fn more_images_other_shapes_and_padded_batches_match_transformers() {
    for model_dir in ["qwen2_vl_tiny", "qwen2_5_vl_tiny"] {
        let model =
            Qwen2Vl::<B>::load_as(&fixture(model_dir), DType::F32, &Default::default()).unwrap();
        for case in ["two_images", "wide", "batch"] {
            let (input, expected, mask) = extra_case(model_dir, case);
            let out = model.forward_hooked(input, &mut sae_core::NoHooks).unwrap();
            let ours = values(out.logits.unwrap());
            let vocab = ours.len() / mask.len();
            let real = |v: &[f32]| -> Vec<f32> {
                v.chunks(vocab)
                    .zip(&mask)
                    .filter(|(_, m)| **m == 1)
                    .flat_map(|(row, _)| row.to_vec())
                    .collect()
            };
            let err = max_rel_diff(&real(&ours), &real(&expected));
            assert!(err < 1e-4, "{model_dir} {case}: logits differ by {err}");
        }
    }
}

// The processor path on the same files gives the reference's input ids and pixel values for
// several images and for another aspect ratio.
#[test]
fn the_prompt_path_matches_the_processor_on_more_images() {
    let device = Default::default();
    let vlm = VisionLanguageModel::<B>::load_as(
        fixture("qwen2_vl_tiny").to_str().unwrap(),
        DType::F32,
        &device,
    )
    .unwrap();
    let file = TensorFile::open(fixture("qwen2_vl_tiny/extra.safetensors")).unwrap();
    let image =
        |name: &str| load_image(&fixture(&format!("image_processors/images/{name}.png"))).unwrap();
    let cases = [
        (
            "two_images",
            vec![image("image1"), image("tall")],
            "Compare these images.",
        ),
        ("wide", vec![image("wide")], "What is this?"),
    ];
    for (case, images, text) in cases {
        let prompt = vlm.process(Prompt::Chat(text), &images).unwrap();
        assert_eq!(
            prompt.input_ids,
            ints(&file, &format!("{case}.inputs.input_ids")),
            "{case}"
        );
        let pixels = prompt.images.unwrap().pixel_values().to_f32();
        let expected = file
            .get(&format!("{case}.inputs.pixel_values"))
            .unwrap()
            .to_f32();
        assert!(max_rel_diff(&pixels, &expected) < 1e-5, "{case}");
    }
}

// Greedy decoding with the KV cache (the images in the first pass only, M-RoPE positions of
// the new tokens shifted by the prompt's delta) gives transformers' `generate` tokens.
#[test]
fn greedy_generation_matches_transformers() {
    for model_dir in ["qwen2_vl_tiny", "qwen2_5_vl_tiny"] {
        let device = Default::default();
        let vlm = VisionLanguageModel::<B>::load_as(
            fixture(model_dir).to_str().unwrap(),
            DType::F32,
            &device,
        )
        .unwrap();
        let reference =
            TensorFile::open(fixture(&format!("{model_dir}/reference.safetensors"))).unwrap();
        let image = load_image(&fixture("image_processors/images/image1.png")).unwrap();
        let prompt = vlm
            .process(Prompt::Chat("Describe this image."), &[image])
            .unwrap();
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
            &mut sae_core::NoHooks,
            &device,
        )
        .unwrap();
        assert_eq!(
            tokens[0],
            ints(&reference, "generate.greedy"),
            "{model_dir}"
        );
    }
}
