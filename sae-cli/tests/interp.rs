//! `sae cache`, `sae dashboard`, `sae explain` and `sae score` as scripts call them, on the tiny Qwen2 fixture with SAE
//! Made Easy's adapter (128 latents, k = 4, at model.layers.1.mlp.down_proj).

mod common;

use common::{fails, ok, s};

#[test]
fn cache_then_dashboard() {
    let dir = tempfile::tempdir().unwrap();
    let texts = dir.path().join("texts");
    std::fs::create_dir_all(&texts).unwrap();
    let text = "Shall I compare thee to a summer's day? Thou art more lovely and more temperate. ";
    std::fs::write(texts.join("sonnet.txt"), text.repeat(20)).unwrap();
    let data = dir.path().join("data");
    common::preprocess_texts(&texts, &data);
    let model = common::fixture("sae-models", "qwen2_tiny");
    let adapter = common::fixture("sae-models", "smez_qwen2/adapter");
    let cache = dir.path().join("cache");
    let mut args = vec!["cache", "--model", s(&model), "--sae", s(&adapter)];
    args.extend(["--data", s(&data), "--batches", "2", "--batch-size", "2"]);
    args.extend(["--context", "16", "--out", s(&cache)]);
    let summary: serde_json::Value = serde_json::from_str(&ok(&args)).unwrap();
    // 2 batches of 2 contexts of 16 tokens; TopK with k = 4 keeps 4 latents a token (none
    // exactly 0 on real activations).
    let hook = &summary["hooks"]["model.layers.1.mlp.down_proj"];
    assert_eq!(summary["tokens"], 64);
    assert_eq!(
        (hook["tokens"].as_u64(), hook["records"].as_u64()),
        (Some(64), Some(256))
    );
    // A file is no cache folder.
    let file = dir.path().join("file");
    std::fs::write(&file, "x").unwrap();
    let at = args.len() - 1;
    let mut to_file = args.clone();
    to_file[at] = s(&file);
    let err = fails(&to_file);
    assert!(err.contains("is a file, not a folder"), "{err}");
    // A second cache into the same folder is refused and leaves the first intact.
    let err = fails(&args);
    assert!(err.contains("already exists and is not empty"), "{err}");
    assert!(cache.join("cache.json").is_file());

    let dash = dir.path().join("dash");
    let explanations = dir.path().join("explanations");
    std::fs::create_dir_all(&explanations).unwrap();
    let every: serde_json::Map<String, serde_json::Value> = (0..128)
        .map(|l| (l.to_string(), format!("latent {l}").into()))
        .collect();
    let written = serde_json::json!({"model.layers.1.mlp.down_proj": every});
    std::fs::write(explanations.join("explanations.json"), written.to_string()).unwrap();
    let out = ok(&[
        "dashboard",
        "--cache",
        s(&cache),
        "--explanations",
        s(&explanations),
        "--out",
        s(&dash),
    ]);
    let summary: serde_json::Value = serde_json::from_str(&out).unwrap();
    let pages = summary["latent_pages"].as_u64().unwrap();
    let written = std::fs::read_dir(dash.join("0")).unwrap().count() as u64;
    assert!(
        pages > 0 && pages == written,
        "{pages} pages, {written} files"
    );
    let index = std::fs::read_to_string(dash.join("index.html")).unwrap();
    assert!(index.contains("SAE latents") && index.contains("<td>latent "));
    let err = fails(&[
        "dashboard",
        "--cache",
        s(&cache),
        "--out",
        s(&dash),
        "--top",
        "0",
    ]);
    assert!(err.contains("at least 1 top context"), "{err}");
    let err = fails(&["dashboard", "--cache", s(&data), "--out", s(&dash)]);
    assert!(
        err.contains("holds no latent cache (no cache.json)"),
        "{err}"
    );

    // The explainer and scorer calls reach the API they are given (none listens here).
    let api = ["--base-url", "http://127.0.0.1:9/v1", "--model", "m"];
    let fresh = dir.path().join("fresh");
    let mut explain = vec!["explain", "--cache", s(&cache), "--out", s(&fresh)];
    explain.extend(api);
    let err = fails(&explain);
    assert!(
        err.contains("the chat API at http://127.0.0.1:9/v1/chat/completions failed"),
        "{err}"
    );
    let mut score = vec!["score", "--cache", s(&cache), "--out", s(&dash)];
    score.extend([
        "--explanations",
        s(&explanations),
        "--top",
        "1",
        "--window",
        "1",
    ]);
    score.extend(api);
    let err = fails(&score);
    assert!(err.contains("the chat API at"), "{err}");
    let err = fails(&[
        "score",
        "--cache",
        s(&cache),
        "--explanations",
        s(&data),
        "--out",
        s(&dash),
        "--base-url",
        "u",
        "--model",
        "m",
    ]);
    assert!(err.contains("holds no explanations.json"), "{err}");
}
