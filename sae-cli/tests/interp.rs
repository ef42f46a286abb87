//! `sae cache`, `sae dashboard`, `sae explain` and `sae score` as scripts call them, on the tiny Qwen2 fixture with SAE
//! Made Easy's adapter (128 latents, k = 4, at model.layers.1.mlp.down_proj).

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

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
    // A cache is written beside its folder and moved in whole: what a killed one left there
    // does not block the retry, and a folder that another process writes is refused by name.
    let retry = dir.path().join("retry");
    let left = dir.path().join(".retry.tmp-4000000");
    std::fs::create_dir_all(left.join("latents")).unwrap();
    std::fs::write(left.join("tokens.safetensors"), "half").unwrap();
    let mut again = args.clone();
    again[at] = s(&retry);
    {
        let _held = sae_core::FolderLock::acquire(&retry).unwrap();
        let err = fails(&again);
        let in_use = format!(
            "{} is in use by process {}",
            retry.display(),
            std::process::id()
        );
        assert!(err.contains(&in_use), "{err}");
    }
    let summary: serde_json::Value = serde_json::from_str(&ok(&again)).unwrap();
    assert_eq!(summary["tokens"], 64);
    assert!(!left.exists(), "the killed cache's folder is left");

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

    // The explainer and scorer calls reach the API they are given (none listens here; a
    // refused connection would be retried).
    let api = [
        "--base-url",
        "http://127.0.0.1:9/v1",
        "--model",
        "m",
        "--max-retries",
        "0",
    ];
    let fresh = dir.path().join("fresh");
    let mut explain = vec!["explain", "--cache", s(&cache), "--out", s(&fresh)];
    explain.extend(api);
    let err = fails(&explain);
    assert!(
        err.contains("the chat API at http://127.0.0.1:9/v1/chat/completions failed"),
        "{err}"
    );
    // One writer of an explanations folder at a time.
    {
        let _held = sae_core::FolderLock::acquire(&fresh).unwrap();
        let err = fails(&explain);
        assert!(err.contains("is in use by process"), "{err}");
    }
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

    score_resumes_and_fails_when_nothing_scores(dir.path(), &cache, &explanations);
}

/// `sae score` against a local scorer that cannot judge the explanations of even latents
/// while it is broken: a rerun asks only about the latents left without a score, and a run
/// where no latent can be scored fails.
fn score_resumes_and_fails_when_nothing_scores(dir: &Path, cache: &Path, explanations: &Path) {
    let broken = Arc::new(AtomicBool::new(true));
    let broke = broken.clone();
    let (url, asked) = chat_server(move |user| {
        let latent: usize = user["Explanation: latent ".len()..user.find('\n').unwrap()]
            .parse()
            .unwrap();
        if broke.load(Ordering::Relaxed) && latent.is_multiple_of(2) {
            return "no idea".into();
        }
        format!("{:?}", vec![1; user.matches("Excerpt ").count()])
    });
    let out = dir.join("scored");
    let mut score = vec!["score", "--cache", s(cache), "--out", s(&out)];
    score.extend(["--explanations", s(explanations), "--top", "1"]);
    score.extend(["--base-url", &url, "--model", "m", "--timeout", "30"]);
    let first: serde_json::Value = serde_json::from_str(&ok(&score)).unwrap();
    let scores: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("scores.json")).unwrap()).unwrap();
    let scores = scores["model.layers.1.mlp.down_proj"].as_object().unwrap();
    let unanswered: Vec<String> = (scores.iter())
        .filter(|(_, s)| s["error"] == "the answer holds no JSON list")
        .map(|(latent, _)| format!("Explanation: latent {latent}"))
        .collect();
    let before = asked.lock().unwrap().len();
    assert!(
        !unanswered.is_empty() && before > unanswered.len(),
        "{first}"
    );
    broken.store(false, Ordering::Relaxed);
    let second: serde_json::Value = serde_json::from_str(&ok(&score)).unwrap();
    let mut again: Vec<String> = asked.lock().unwrap()[before..].to_vec();
    again.sort();
    let mut unanswered = unanswered;
    unanswered.sort();
    assert_eq!(again, unanswered);
    let scored = |summary: &serde_json::Value| summary["scored"].as_u64().unwrap();
    assert_eq!(scored(&second), scored(&first) + unanswered.len() as u64);

    // Explanations of even latents alone, the scorer broken: nothing can be scored.
    broken.store(true, Ordering::Relaxed);
    let even = dir.join("even");
    std::fs::create_dir_all(&even).unwrap();
    let every: serde_json::Map<String, serde_json::Value> = (0..128)
        .step_by(2)
        .map(|l| (l.to_string(), format!("latent {l}").into()))
        .collect();
    let written = serde_json::json!({"model.layers.1.mlp.down_proj": every});
    std::fs::write(even.join("explanations.json"), written.to_string()).unwrap();
    let none = dir.join("none");
    let (at_out, at_explanations) = (4, 6);
    score[at_out] = s(&none);
    score[at_explanations] = s(&even);
    let err = fails(&score);
    assert!(
        err.contains("explained latents could be scored (latent ")
            && err.contains("each one's error is in"),
        "{err}"
    );
}

/// A local chat API answering each request with `answer(the user message)`, one connection
/// at a time; returns its base URL and the first line of each user message it saw.
fn chat_server(
    answer: impl Fn(&str) -> String + Send + 'static,
) -> (String, Arc<Mutex<Vec<String>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/v1", listener.local_addr().unwrap());
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = seen.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let mut stream = stream.unwrap();
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut length = 0;
            loop {
                let mut line = String::new();
                reader.read_line(&mut line).unwrap();
                if line == "\r\n" || line.is_empty() {
                    break;
                }
                if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                    length = v.trim().parse().unwrap();
                }
            }
            let mut body = vec![0; length];
            reader.read_exact(&mut body).unwrap();
            let body: serde_json::Value = serde_json::from_slice(&body).unwrap();
            let user = body["messages"][1]["content"].as_str().unwrap();
            log.lock()
                .unwrap()
                .push(user.lines().next().unwrap().to_string());
            let content = answer(user);
            let reply = serde_json::json!({"choices": [{"message": {"content": content}}]});
            let reply = reply.to_string();
            let head = format!(
                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                reply.len()
            );
            stream.write_all(head.as_bytes()).unwrap();
            stream.write_all(reply.as_bytes()).unwrap();
        }
    });
    (url, seen)
}
