//! `sae activations` and `sae generate` against the transformers fixtures.

mod common;

use std::path::{Path, PathBuf};

use common::{
    PROMPT, fails, fake_hub_model, ints, json_tokens, max_rel_diff, ok, ok_with, s, sae_with,
};
use sae_core::TensorFile;

fn fixture(rel: &str) -> PathBuf {
    common::fixture("sae-models", rel)
}

#[test]
fn activations_match_transformers() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("acts.safetensors");
    let model = fixture("qwen2_tiny");
    ok(&[
        "activations",
        "--model",
        s(&model),
        "--text",
        PROMPT,
        "--hooks",
        r"model\.layers\.\d+",
        "--hooks",
        r".*(o|down)_proj",
        "--out",
        s(&out),
    ]);
    let reference = fixture("qwen2_tiny/reference.safetensors");
    assert_eq!(
        ints(&out, "inputs.input_ids"),
        ints(&reference, "inputs.input_ids")
    );
    let ours = TensorFile::open(&out).unwrap();
    let theirs = TensorFile::open(&reference).unwrap();
    let names: Vec<String> = ours
        .names()
        .into_iter()
        .filter(|n| n.starts_with("hook.") || n == "logits")
        .collect();
    let expected: Vec<String> = theirs
        .names()
        .into_iter()
        .filter(|n| n.starts_with("hook.") || n == "logits")
        .collect();
    assert_eq!(names, expected, "exactly the hook points the regexes match");
    for name in names {
        let err = max_rel_diff(
            &ours.get(&name).unwrap().to_f32(),
            &theirs.get(&name).unwrap().to_f32(),
        );
        assert!(err < 1e-4, "{name} differs by {err}");
        assert_eq!(ours.shape(&name).unwrap(), theirs.shape(&name).unwrap());
    }
}

#[test]
fn without_logits_the_model_loads_up_to_the_deepest_hook() {
    let dir = tempfile::tempdir().unwrap();
    // A copy of the model without layer 1's weights: a job at layer 0 never reads them.
    let model = dir.path().join("model");
    std::fs::create_dir(&model).unwrap();
    for entry in std::fs::read_dir(fixture("qwen2_tiny")).unwrap() {
        let path = entry.unwrap().path();
        std::fs::copy(&path, model.join(path.file_name().unwrap())).unwrap();
    }
    let weights = model.join("model.safetensors");
    let file = TensorFile::open(&weights).unwrap();
    let kept: Vec<_> = (file.names().into_iter())
        .filter(|n| !n.starts_with("model.layers.1.") && !n.starts_with("lm_head"))
        .map(|n| (n.clone(), file.get(&n).unwrap()))
        .collect();
    drop(file);
    sae_core::tensor_file::write_tensors(&weights, &kept, sae_core::StorageDtype::F32, None)
        .unwrap();
    let out = dir.path().join("acts.safetensors");
    let args = |extra: &'static str| {
        vec![
            "activations",
            "--model",
            s(&model),
            "--text",
            PROMPT,
            "--hooks",
            r"model\.layers\.0\.mlp\.down_proj",
            "--out",
            s(&out),
            extra,
        ]
    };
    ok(&args("--no-logits"));
    let ours = TensorFile::open(&out).unwrap();
    assert!(!ours.contains("logits"));
    let theirs = TensorFile::open(fixture("qwen2_tiny/reference.safetensors")).unwrap();
    let name = "hook.model.layers.0.mlp.down_proj";
    let err = max_rel_diff(
        &ours.get(name).unwrap().to_f32(),
        &theirs.get(name).unwrap().to_f32(),
    );
    assert!(err < 1e-4, "{err}");
    // With logits, the whole model is needed: the missing layer is named.
    let err = fails(&args("--hooks=model.norm"));
    assert!(
        err.contains("holds weight \"model.layers.1.input_layernorm.weight\""),
        "{err}"
    );
    // The hook points come from the config: listing them needs no weights at all.
    std::fs::remove_file(&weights).unwrap();
    let listed = ok(&["activations", "--model", s(&model), "--list-hooks"]);
    assert!(
        listed.contains("model.layers.1.mlp.down_proj\t64\tMlp"),
        "{listed}"
    );
}

#[test]
fn activations_with_an_injected_sae_match_sae_made_easy() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("acts.safetensors");
    let adapter = fixture("smez_qwen2/adapter");
    ok(&[
        "activations",
        "--model",
        s(&fixture("qwen2_tiny")),
        "--text",
        PROMPT,
        "--sae",
        s(&adapter),
        "--out",
        s(&out),
    ]);
    let reference = fixture("smez_qwen2/reference.safetensors");
    assert_eq!(
        ints(&out, "inputs.input_ids"),
        ints(&reference, "inputs.input_ids")
    );
    let logits = TensorFile::open(&out)
        .unwrap()
        .get("logits")
        .unwrap()
        .to_f32();
    let expected = TensorFile::open(&reference)
        .unwrap()
        .get("logits_with_sae")
        .unwrap()
        .to_f32();
    assert!(max_rel_diff(&logits, &expected) < 1e-4);
}

#[test]
fn generate_json_gives_the_greedy_tokens_of_transformers() {
    for model in ["qwen2_tiny", "llama_tiny"] {
        let text = ok(&[
            "generate",
            "--model",
            s(&fixture(model)),
            "--text",
            PROMPT,
            "--max-new-tokens",
            "8",
            "--json",
        ]);
        let tokens = json_tokens(&text);
        assert_eq!(
            tokens,
            ints(
                &fixture(&format!("{model}/reference.safetensors")),
                "generate.greedy"
            ),
            "{model}"
        );
        let json: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert!(json["text"].is_string());
    }
}

#[test]
fn a_hub_id_is_found_in_the_cache_offline() {
    let home = tempfile::tempdir().unwrap();
    let files = [
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
        "generation_config.json",
        "chat_template.jinja",
    ];
    fake_hub_model(
        home.path(),
        "test/qwen2-tiny",
        &fixture("qwen2_tiny"),
        &files,
    );
    let offline = Path::new("1");
    let env = [("HF_HOME", home.path()), ("HF_HUB_OFFLINE", offline)];
    let text = ok_with(
        &[
            "generate",
            "--model",
            "test/qwen2-tiny",
            "--text",
            PROMPT,
            "--max-new-tokens",
            "8",
            "--json",
        ],
        &env,
    );
    let json: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(json["tokens"].as_array().unwrap().len(), 8);
    let out = sae_with(
        &[
            "generate",
            "--model",
            "test/other",
            "--text",
            PROMPT,
            "--max-new-tokens",
            "8",
        ],
        &env,
    );
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(
        !out.status.success()
            && stderr.contains("not in the Hugging Face cache and HF_HUB_OFFLINE is set"),
        "{stderr}"
    );
}

#[test]
fn chat_prompts_use_the_chat_template() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("acts.safetensors");
    ok(&[
        "activations",
        "--model",
        s(&fixture("llama_tiny")),
        "--chat",
        "Hi",
        "--out",
        s(&out),
    ]);
    let ids = ints(&out, "inputs.input_ids");
    // <|im_start|> user \n Hi <|im_end|> \n <|im_start|> assistant \n: starts and ends with the template's tokens.
    assert_eq!(ids[0], 1025, "<|im_start|>");
    assert!(ids.contains(&1026), "<|im_end|>");
}

#[test]
fn bad_model_input_gives_one_clear_error() {
    let generate = |model: &str| {
        fails(&[
            "generate",
            "--model",
            model,
            "--text",
            "hi",
            "--max-new-tokens",
            "2",
        ])
    };
    let err = generate("missing.gguf");
    assert!(err.contains("cannot access missing.gguf"), "{err}");
    let dir = tempfile::tempdir().unwrap();
    let fake = dir.path().join("fake.gguf");
    std::fs::write(&fake, b"GGUF\x03\x00\x00\x00").unwrap();
    let err = generate(s(&fake));
    assert!(err.contains("truncated header"), "{err}");
    let activations = |model: &Path, extra: &[&str]| {
        let mut args = vec![
            "activations",
            "--model",
            s(model),
            "--text",
            "hi",
            "--out",
            "/tmp/x.safetensors",
        ];
        args.extend(extra);
        fails(&args)
    };
    let err = activations(&fixture("qwen2_tiny"), &["--image", "x.png"]);
    assert!(err.contains("takes no --image"), "{err}");
    let err = activations(&fixture("qwen2_tiny"), &["--hooks", "nothing"]);
    assert!(err.contains("no hook point matches"), "{err}");
    let err = activations(&fixture("sae_missing"), &[]);
    assert!(
        err.contains("sae_missing does not exist: expected a model folder"),
        "{err}"
    );
    let dir = tempfile::tempdir().unwrap();
    let err = activations(dir.path(), &[]);
    assert!(
        err.contains("is not a model folder (no config.json)"),
        "{err}"
    );
    std::fs::write(dir.path().join("config.json"), r#"{"model_type": "gpt2"}"#).unwrap();
    std::fs::copy(
        fixture("qwen2_tiny/tokenizer.json"),
        dir.path().join("tokenizer.json"),
    )
    .unwrap();
    let err = fails(&[
        "generate",
        "--model",
        s(dir.path()),
        "--text",
        "hi",
        "--max-new-tokens",
        "2",
    ]);
    assert!(err.contains("gpt2"), "{err}");
}

#[test]
fn steering_generates_through_the_sae() {
    let model = fixture("qwen2_tiny");
    let adapter = fixture("smez_qwen2/adapter");
    let generate = |extra: &[&str]| {
        let mut args = vec!["generate", "--model", s(&model), "--text", PROMPT];
        args.extend(["--max-new-tokens", "8", "--json", "--sae", s(&adapter)]);
        args.extend(extra);
        json_tokens(&ok(&args))
    };
    // Keeping the SAE's error with a steering that changes nothing leaves the hooked output
    // exactly the model's: transformers' greedy tokens.
    let greedy = ints(
        &fixture("qwen2_tiny/reference.safetensors"),
        "generate.greedy",
    );
    assert_eq!(generate(&["--add", "0=0", "--keep-error"]), greedy);
    // A latent's direction added a hundredfold changes what the model says; --compare also
    // gives the plain model's tokens.
    assert_ne!(generate(&["--add", "5=100"]), generate(&[]));
    let mut args = vec!["generate", "--model", s(&model), "--text", PROMPT];
    args.extend(["--max-new-tokens", "8", "--json", "--sae", s(&adapter)]);
    args.extend(["--add", "5=100", "--compare"]);
    let both: serde_json::Value = serde_json::from_str(&ok(&args)).unwrap();
    let ids = |v: &serde_json::Value| -> Vec<i64> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|t| t.as_i64().unwrap())
            .collect()
    };
    assert_eq!(ids(&both["tokens"]), generate(&["--add", "5=100"]));
    assert_eq!(ids(&both["without_sae"]["tokens"]), greedy);
    let err = fails(&[
        "generate",
        "--model",
        s(&model),
        "--text",
        PROMPT,
        "--max-new-tokens",
        "2",
        "--sae",
        s(&adapter),
        "--clamp",
        "128=4",
    ]);
    assert!(
        err.contains("latent 128 does not exist: the SAE has 128 latents"),
        "{err}"
    );
    let out = common::sae_with(
        &[
            "generate",
            "--model",
            s(&model),
            "--text",
            "hi",
            "--max-new-tokens",
            "2",
            "--clamp",
            "1=2",
        ],
        &[],
    );
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(
        out.status.code() == Some(2) && stderr.contains("--sae"),
        "{stderr}"
    );
}
