//! A batch mixing a text-only prompt and a prompt with an image (left-padded, as generation
//! pads) gives each prompt the logits it has alone, for every vision-language fixture.

use burn::tensor::{DType, Int, Tensor, TensorData};
use sae_core::{HookedModule, NoHooks};
use sae_models::{Prompt, VisionInput, VisionLanguageModel, load_image};

mod common;

use common::{B, fixture, max_rel_diff, values};

#[test]
fn text_only_and_image_prompts_batch_together() {
    let device = Default::default();
    let image = load_image(&fixture("image_processors/images/image1.png")).unwrap();
    for model_dir in ["qwen2_vl_tiny", "qwen2_5_vl_tiny", "llava_onevision_tiny"] {
        let vlm = VisionLanguageModel::<B>::load_as(
            fixture(model_dir).to_str().unwrap(),
            DType::F32,
            &device,
        )
        .unwrap();
        let text = vlm
            .process(Prompt::Chat("Hello there, who are you?"), &[])
            .unwrap();
        let with_image = vlm
            .process(
                Prompt::Chat("Describe this image."),
                std::slice::from_ref(&image),
            )
            .unwrap();
        let alone = |p: &sae_models::ProcessedPrompt| {
            let out = vlm
                .model
                .forward_hooked(p.to_input(&device), &mut NoHooks)
                .unwrap();
            values(out.logits.unwrap())
        };
        let (a, b) = (alone(&text), alone(&with_image));
        let rows = [&text.input_ids, &with_image.input_ids];
        let t = rows.iter().map(|r| r.len()).max().unwrap();
        let pad = vlm.tokenizer.pad_token_id().unwrap();
        let (mut ids, mut mask) = (Vec::new(), Vec::new());
        for row in rows {
            ids.extend(std::iter::repeat_n(pad, t - row.len()).chain(row.iter().copied()));
            mask.extend(
                std::iter::repeat_n(0i64, t - row.len()).chain(std::iter::repeat_n(1, row.len())),
            );
        }
        let input = VisionInput {
            input_ids: Tensor::<B, 2, Int>::from_data(TensorData::new(ids, [2, t]), &device),
            attention_mask: Some(Tensor::from_data(TensorData::new(mask, [2, t]), &device)),
            images: with_image.images.clone(),
        };
        let batch = values(
            vlm.model
                .forward_hooked(input, &mut NoHooks)
                .unwrap()
                .logits
                .unwrap(),
        );
        let vocab = batch.len() / (2 * t);
        for (row, (alone, len)) in [(&a, text.input_ids.len()), (&b, with_image.input_ids.len())]
            .into_iter()
            .enumerate()
        {
            let real = &batch[(row * t + t - len) * vocab..(row + 1) * t * vocab];
            let err = max_rel_diff(real, alone);
            assert!(err < 1e-4, "{model_dir} row {row}: {err}");
        }
    }
}
