//! Helpers shared by the command-line tests: running `sae`, reading its outputs.
#![allow(dead_code, unused_imports)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

pub use sae_core::parity::max_rel_diff;
use sae_core::{HostData, TensorFile};

/// The text of the transformers fixtures' references (`inputs.input_ids`).
pub const PROMPT: &str = "Shall I compare thee to a summer's day?";

/// A file under `<crate>/tests/fixtures` of the workspace crate `krate`.
pub fn fixture(krate: &str, rel: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join(krate)
        .join("tests/fixtures")
        .join(rel)
}

/// Puts `files` of the folder `model` into a Hugging Face cache under `home` as hub model
/// `org/name`, in the layout huggingface_hub writes (`hub/models--ORG--NAME/{refs/main,
/// snapshots/REV/...}`).
pub fn fake_hub_model(home: &Path, id: &str, model: &Path, files: &[&str]) {
    let repo = home.join(format!("hub/models--{}", id.replace('/', "--")));
    let snapshot = repo.join("snapshots/0123abcd");
    std::fs::create_dir_all(&snapshot).unwrap();
    std::fs::create_dir_all(repo.join("refs")).unwrap();
    std::fs::write(repo.join("refs/main"), "0123abcd").unwrap();
    for f in files {
        std::fs::copy(model.join(f), snapshot.join(f)).unwrap();
    }
}

/// Runs `sae args...` with extra environment variables.
pub fn sae_with(args: &[&str], env: &[(&str, &Path)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_sae"));
    cmd.args(args).env("RUST_LOG", "warn");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().unwrap()
}

/// Runs a command that must succeed; returns its stdout.
pub fn ok_with(args: &[&str], env: &[(&str, &Path)]) -> String {
    let out = sae_with(args, env);
    assert!(
        out.status.success(),
        "sae {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// [`ok_with`] without extra environment.
pub fn ok(args: &[&str]) -> String {
    ok_with(args, &[])
}

/// Runs a command that must fail cleanly (exit 1, one `error:` report, no panic); returns its
/// stderr.
pub fn fails(args: &[&str]) -> String {
    let out = sae_with(args, &[]);
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert_eq!(out.status.code(), Some(1), "sae {args:?}: {stderr}");
    assert!(
        stderr.starts_with("error: ") && !stderr.contains("panicked"),
        "{stderr}"
    );
    stderr
}

/// A float tensor of a safetensors file.
pub fn floats(file: &Path, name: &str) -> Vec<f32> {
    TensorFile::open(file).unwrap().get(name).unwrap().to_f32()
}

/// An int64 tensor of a safetensors file.
pub fn ints(file: &Path, name: &str) -> Vec<i64> {
    match TensorFile::open(file).unwrap().get(name).unwrap().data {
        HostData::I64(v) => v,
        other => panic!("{name} should be int64: {other:?}"),
    }
}

/// A path as a command-line argument.
pub fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// The token ids `sae generate --json` printed.
pub fn json_tokens(stdout: &str) -> Vec<i64> {
    let json: serde_json::Value = serde_json::from_str(stdout).unwrap();
    json["tokens"]
        .as_array()
        .expect("a tokens array")
        .iter()
        .map(|v| v.as_i64().unwrap())
        .collect()
}

/// `sae preprocess --format text` of the `.txt` files in `texts` into the dataset `out`.
pub fn preprocess_texts(texts: &Path, out: &Path) {
    ok(&[
        "preprocess",
        "--format",
        "text",
        "--input",
        s(texts),
        "--output",
        s(out),
    ]);
}

/// A small packed-text dataset (12 pseudo-random documents) written by `sae preprocess`.
pub fn dataset(root: &Path) -> PathBuf {
    let texts = root.join("texts");
    std::fs::create_dir_all(&texts).unwrap();
    let words = [
        "the", "quick", "brown", "fox", "jumps", "over", "a", "lazy", "dog", "while", "stars",
        "shine", "far", "away",
    ];
    let mut state = 12345u64;
    for doc in 0..12 {
        let text: Vec<&str> = (0..300)
            .map(|_| {
                state = state
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                words[(state >> 33) as usize % words.len()]
            })
            .collect();
        std::fs::write(texts.join(format!("doc{doc}.txt")), text.join(" ")).unwrap();
    }
    let out = root.join("data");
    preprocess_texts(&texts, &out);
    out
}

/// `(step, loss)` of every line of a run's metrics.jsonl.
pub fn losses(run: &Path) -> Vec<(u64, f64)> {
    std::fs::read_to_string(run.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            (v["step"].as_u64().unwrap(), v["loss"].as_f64().unwrap())
        })
        .collect()
}

/// The arguments as `&str`s.
pub fn strs(args: &[String]) -> Vec<&str> {
    args.iter().map(String::as_str).collect()
}

/// Starts `sae args...` (stderr piped) and returns once its metrics reach step `step`.
pub fn spawn_run(args: &[String], step: usize) -> std::process::Child {
    let run = PathBuf::from(&args[args.iter().position(|a| a == "--out").unwrap() + 1]);
    let mut child = Command::new(env!("CARGO_BIN_EXE_sae"))
        .args(strs(args))
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    while losses_or_empty(&run).len() < step {
        assert!(
            Instant::now() < deadline,
            "the run never reached step {step}"
        );
        assert!(child.try_wait().unwrap().is_none(), "the run ended early");
        std::thread::sleep(Duration::from_millis(2));
    }
    child
}

/// [`losses`] so far: none before the file exists.
pub fn losses_or_empty(run: &Path) -> Vec<(u64, f64)> {
    let Ok(text) = std::fs::read_to_string(run.join("metrics.jsonl")) else {
        return Vec::new();
    };
    text.lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter_map(|v| Some((v["step"].as_u64()?, v["loss"].as_f64()?)))
        .collect()
}

/// Arguments of a small run on the tiny Qwen2 fixture: 2 x 32 tokens per step, 2 SAEs.
pub fn run_args(model: &Path, data: &Path, out: &Path, steps: &str) -> Vec<String> {
    [
        "train",
        "--model",
        s(model),
        "--data",
        s(data),
        "--hook",
        "model.layers.0.mlp",
        "--hook",
        "model.layers.1",
        "--k",
        "4",
        "--num-latents",
        "256",
        "--batch-size",
        "2",
        "--context",
        "32",
        "--steps",
        steps,
        "--save-every",
        "5",
        "--set",
        "sae.dead_tokens_threshold=200",
        "--set",
        "checkpoint.keep=100",
        "--out",
        s(out),
    ]
    .iter()
    .map(|a| a.to_string())
    .collect()
}

/// An easy-VQA-layout folder (`questions.json`, `images/<id>.png`) made of real photos of
/// several sizes, preprocessed into a standard chat dataset.
pub fn photo_questions(root: &std::path::Path) -> PathBuf {
    let input = root.join("vqa");
    std::fs::create_dir_all(input.join("images")).unwrap();
    let photos = ["image1", "image2", "tall", "wide"];
    for (id, name) in photos.iter().enumerate() {
        let from = fixture("sae-models", &format!("image_processors/images/{name}.png"));
        std::fs::copy(from, input.join(format!("images/{id}.png"))).unwrap();
    }
    let questions: Vec<serde_json::Value> = (0..8)
        .map(|i| serde_json::json!([format!("what is in picture {i}?"), "a thing", i % 4]))
        .collect();
    std::fs::write(
        input.join("questions.json"),
        serde_json::to_string(&questions).unwrap(),
    )
    .unwrap();
    let data = root.join("data");
    ok(&[
        "preprocess",
        "--format",
        "easy-vqa",
        "--input",
        s(&input),
        "--output",
        s(&data),
    ]);
    data
}
