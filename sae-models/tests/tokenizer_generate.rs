//! Tokenizer, chat template and KV-cache generation against the transformers fixtures.

use sae_core::{NoHooks, TensorFile};
use sae_models::{DecoderLm, GenerateConfig, Message, Sampling, Tokenizer, generate};

mod common;

use common::{B, fixture};

const PROMPT: &str = "Shall I compare thee to a summer's day?";

/// The int64 tensor `name` of fixture file `file`.
fn ints(file: &str, name: &str) -> Vec<i64> {
    common::ints(&TensorFile::open(fixture(file)).unwrap(), name)
}

fn greedy(max_new_tokens: usize, tokenizer: &Tokenizer) -> GenerateConfig {
    GenerateConfig {
        max_new_tokens,
        sampling: None,
        stop_tokens: tokenizer.eos_token_id().into_iter().collect(),
        pad_token: tokenizer.pad_token_id().unwrap(),
    }
}

#[test]
fn tokenizer_gives_the_reference_ids_and_decodes_back() {
    for model in ["qwen2_tiny", "llama_tiny"] {
        let tokenizer = Tokenizer::load(&fixture(model)).unwrap();
        let ids = tokenizer.encode(PROMPT, true).unwrap();
        assert_eq!(
            ids,
            ints(
                &format!("{model}/reference.safetensors"),
                "inputs.input_ids"
            ),
            "{model}"
        );
        assert_eq!(tokenizer.decode(&ids).unwrap(), PROMPT);
        assert_eq!(
            tokenizer.eos_token_id(),
            Some(1026),
            "<|im_end|> is id 1026"
        );
        assert_eq!(
            tokenizer.pad_token_id(),
            Some(1024),
            "<|endoftext|> is id 1024"
        );
    }
}

#[test]
fn chat_template_renders_like_transformers() {
    let tokenizer = Tokenizer::load(&fixture("qwen2_tiny")).unwrap();
    // Hand-derived from chat_template.jinja: one user turn, images first, generation prompt.
    let text = tokenizer
        .apply_chat_template(&[Message::user("Hi there", 1)], true)
        .unwrap();
    assert_eq!(
        text,
        "<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>Hi there<|im_end|>\n<|im_start|>assistant\n"
    );
    let text = tokenizer
        .apply_chat_template(&[Message::user("Hi", 0)], false)
        .unwrap();
    assert_eq!(text, "<|im_start|>user\nHi<|im_end|>\n");
    let ids = tokenizer.encode(&text, true).unwrap();
    assert_eq!(
        ids[0],
        tokenizer.token_id("<|im_start|>").unwrap(),
        "special tokens stay whole"
    );
}

#[test]
fn greedy_generation_matches_transformers() {
    let device = Default::default();
    for model_dir in ["qwen2_tiny", "llama_tiny"] {
        let model = DecoderLm::<B>::load(&fixture(model_dir), &device).unwrap();
        let tokenizer = Tokenizer::load(&fixture(model_dir)).unwrap();
        let prompt = tokenizer.encode(PROMPT, true).unwrap();
        let out = generate(
            &model,
            &[prompt],
            &greedy(8, &tokenizer),
            &mut NoHooks,
            &device,
        )
        .unwrap();
        let expected = ints(
            &format!("{model_dir}/reference.safetensors"),
            "generate.greedy",
        );
        // Generation stops at <|im_end|>; the reference runs 8 steps unless it also stopped.
        let n = out[0].len();
        assert_eq!(out[0][..], expected[..n], "{model_dir}");
        assert!(
            n == 8 || out[0][n - 1] == 1026,
            "{model_dir}: stopped early without a stop token"
        );
    }
}

#[test]
fn a_left_padded_batch_generates_what_each_prompt_does_alone() {
    let device = Default::default();
    let model = DecoderLm::<B>::load(&fixture("qwen2_tiny"), &device).unwrap();
    let tokenizer = Tokenizer::load(&fixture("qwen2_tiny")).unwrap();
    let prompts = vec![
        tokenizer.encode(PROMPT, true).unwrap(),
        tokenizer.encode("Thou art more lovely", true).unwrap(),
    ];
    let config = greedy(6, &tokenizer);
    let batch = generate(&model, &prompts, &config, &mut NoHooks, &device).unwrap();
    for (prompt, together) in prompts.iter().zip(&batch) {
        let alone = generate(
            &model,
            std::slice::from_ref(prompt),
            &config,
            &mut NoHooks,
            &device,
        )
        .unwrap();
        assert_eq!(&alone[0], together);
    }
}

#[test]
fn sampling_is_reproducible_with_a_seed() {
    let device = Default::default();
    let model = DecoderLm::<B>::load(&fixture("llama_tiny"), &device).unwrap();
    let tokenizer = Tokenizer::load(&fixture("llama_tiny")).unwrap();
    let prompt = vec![tokenizer.encode(PROMPT, true).unwrap()];
    let config = |seed| GenerateConfig {
        sampling: Some(Sampling {
            temperature: 1.5,
            top_p: 0.95,
            seed,
        }),
        ..greedy(10, &tokenizer)
    };
    let a = generate(&model, &prompt, &config(1), &mut NoHooks, &device).unwrap();
    let b = generate(&model, &prompt, &config(1), &mut NoHooks, &device).unwrap();
    let c = generate(&model, &prompt, &config(2), &mut NoHooks, &device).unwrap();
    assert_eq!(a, b);
    assert_ne!(
        a, c,
        "different seeds should give different samples at temperature 1.5"
    );
}

#[test]
fn a_prompt_longer_than_the_context_is_an_error() {
    let device = Default::default();
    let model = DecoderLm::<B>::load(&fixture("llama_tiny"), &device).unwrap();
    let tokenizer = Tokenizer::load(&fixture("llama_tiny")).unwrap();
    let err = generate(
        &model,
        &[vec![5; 2045]],
        &greedy(8, &tokenizer),
        &mut NoHooks,
        &device,
    )
    .unwrap_err();
    assert_eq!(
        err.to_string(),
        "the prompt plus generation needs 2053 positions, but the model's context is 2048"
    );
}
