//! `explain_latents` and `score_explanations` against a local OpenAI-compatible server that
//! records each request and answers as a fixed rule says, on the hand-written cache of
//! `common`.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::sync::{Arc, Mutex};

use base64::prelude::{BASE64_STANDARD, Engine as _};
use sae_interp::{
    Cache, ChatClient, ExplainConfig, Progress, SamplingConfig, ScoreConfig, explain_latents,
    read_explanations, score_explanations,
};
use serde_json::{Value, json};

mod common;

/// The requests a server saw: headers and JSON body.
type Requests = Arc<Mutex<Vec<(String, Value)>>>;

/// A server on a free local port: `answer(request body)` is the reply's message content.
/// Returns its base URL and the requests (headers, body) it saw.
fn serve(answer: fn(&Value) -> String) -> (String, Requests) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/v1", listener.local_addr().unwrap());
    let seen = Requests::default();
    let log = seen.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let mut stream = stream.unwrap();
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let (mut headers, mut length) = (String::new(), 0);
            loop {
                let mut line = String::new();
                reader.read_line(&mut line).unwrap();
                if line == "\r\n" || line.is_empty() {
                    break;
                }
                if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                    length = v.trim().parse().unwrap();
                }
                headers.push_str(&line);
            }
            let mut body = vec![0; length];
            reader.read_exact(&mut body).unwrap();
            let body: Value = serde_json::from_slice(&body).unwrap();
            let reply =
                json!({"choices": [{"message": {"role": "assistant", "content": answer(&body)}}]});
            log.lock().unwrap().push((headers, body));
            let reply = reply.to_string();
            let head = format!(
                "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                reply.len()
            );
            stream.write_all(head.as_bytes()).unwrap();
            stream.write_all(reply.as_bytes()).unwrap();
        }
    });
    (url, seen)
}

/// The text of the user message (alone, or the first part before images).
fn user_message(body: &Value) -> &str {
    let content = &body["messages"][1]["content"];
    content
        .as_str()
        .or_else(|| content[0]["text"].as_str())
        .unwrap()
}

#[test]
fn explanations_come_from_the_model_and_are_kept_across_runs() {
    let dir = tempfile::tempdir().unwrap();
    let cache = common::hand_cache(dir.path());
    // The explainer names the first marked token it was shown.
    let (url, seen) = serve(|body| {
        let user = user_message(body);
        let marked = &user[user.find("<<").unwrap() + 2..user.find(">>(").unwrap()];
        format!("Thinking it over.\n[EXPLANATION]: the token {marked}")
    });
    let mut client = ChatClient::new(&url, "explainer-72b");
    client.api_key = Some("secret".into());
    let out = dir.path().join("explanations");
    let config = ExplainConfig {
        sampling: SamplingConfig {
            top: 2,
            window: 1,
            images: 1,
            ..SamplingConfig::default()
        },
        max_latents: None,
        latents: None,
        concurrency: 2,
    };
    let mut heard = Vec::new();
    let mut progress = |p: Progress| heard.push((p.hook.to_string(), p.done, p.total));
    let summary = explain_latents(&cache, &client, &out, &config, &mut progress).unwrap();
    assert_eq!((summary.explained, summary.kept), (2, 0));
    let hook = common::HOOK.to_string();
    assert_eq!(heard, [(hook.clone(), 1, 2), (hook, 2, 2)]);
    let explanations = read_explanations(&out).unwrap();
    let hook = &explanations[common::HOOK];
    // Latent 3's top context is (1, 5), at its maximum: 10 on the 0-10 scale.
    assert_eq!(hook[&3], "the token <t115>");
    assert_eq!(hook[&7], "the token <t109>");
    // Two requests in flight: they may arrive in either order. Latent 3's shows its image.
    let mut requests = seen.lock().unwrap().clone();
    assert_eq!(requests.len(), 2);
    requests.sort_by_key(|(_, body)| body["messages"][1]["content"].is_string());
    let (headers, body) = &requests[0];
    assert!(
        headers
            .to_ascii_lowercase()
            .contains("authorization: bearer secret"),
        "{headers}"
    );
    assert_eq!(
        (body["model"].as_str(), body["temperature"].as_f64()),
        (Some("explainer-72b"), Some(0.0))
    );
    assert_eq!(body["messages"][0]["role"], "system");
    // Both top contexts, activations scaled by the latent's maximum 2.0: 1.0 -> 5, 0.5 -> 3.
    let user = user_message(body);
    assert!(
        user.contains("Excerpt 1: <t114><<<t115>>>(10)<t116>"),
        "{user}"
    );
    assert!(
        user.contains("Excerpt 2: <t101><<<t102>>>(5)<<<t103>>>(3)"),
        "{user}"
    );
    // Latent 3 fires on the image (top right region, at its maximum): it follows the text,
    // that region drawn red. Latent 7 has no image: its content is plain text.
    let parts = body["messages"][1]["content"].as_array().unwrap();
    assert_eq!(parts[1]["type"], "image_url");
    let url = parts[1]["image_url"]["url"].as_str().unwrap();
    let png = BASE64_STANDARD
        .decode(url.strip_prefix("data:image/png;base64,").unwrap())
        .unwrap();
    let drawn = image::load_from_memory(&png).unwrap().to_rgb8();
    assert_eq!(
        (drawn.get_pixel(3, 0).0, drawn.get_pixel(0, 0).0),
        ([193, 40, 40], [100, 100, 100])
    );
    assert!(requests[1].1["messages"][1]["content"].is_string());

    // Only the latents asked for: latent 7 alone, into a new folder.
    let only = ExplainConfig {
        latents: Some(vec![7, 5]),
        ..config.clone()
    };
    let seven = dir.path().join("seven");
    let summary = explain_latents(&cache, &client, &seven, &only, &mut |_| {}).unwrap();
    assert_eq!(summary.explained, 1);
    let explained = read_explanations(&seven).unwrap();
    assert_eq!(explained[common::HOOK].keys().collect::<Vec<_>>(), [&7]);
    // A second run asks nothing: every latent is explained already.
    let summary = explain_latents(&cache, &client, &out, &config, &mut |_| {}).unwrap();
    assert_eq!((summary.explained, summary.kept), (0, 2));
    assert_eq!(seen.lock().unwrap().len(), 3);
}

#[test]
fn detection_scores_follow_from_the_answers() {
    let dir = tempfile::tempdir().unwrap();
    let cache = common::hand_cache(dir.path());
    // The scorer says every excerpt fires.
    let (url, seen) = serve(|body| {
        let n = user_message(body).matches("Excerpt ").count();
        format!("{:?}", vec![1; n])
    });
    let client = ChatClient::new(&url, "scorer");
    let explanations = [(
        common::HOOK.to_string(),
        [(3, "fish".to_string()), (7, "cats".to_string())].into(),
    )]
    .into();
    let config = ScoreConfig {
        sampling: SamplingConfig {
            top: 1,
            window: 1,
            random: 5,
            non_activating: 4,
            seed: 7,
            images: 0,
        },
        concurrency: 2,
    };
    let out = dir.path().join("scores");
    let scores =
        score_explanations(&cache, &explanations, &client, &out, &config, &mut |_| {}).unwrap();
    let written: Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("scores.json")).unwrap()).unwrap();
    assert_eq!(written[common::HOOK]["3"]["explanation"], "fish");
    // Latent 3: one random firing beyond its top context, four quiet windows, all judged to
    // fire: tp 1, fp 4.
    let three = &scores[common::HOOK][&3];
    assert_eq!((three.activating, three.non_activating), (1, 4));
    assert_eq!(
        (three.accuracy, three.precision, three.recall),
        (0.2, 0.2, 1.0)
    );
    assert!((three.f1 - 1.0 / 3.0).abs() < 1e-12);
    // Latent 7 fires once, in its top context: nothing to score on, and nothing asked.
    let seven = &scores[common::HOOK][&7];
    assert!(
        seven
            .error
            .as_ref()
            .unwrap()
            .contains("fires nowhere apart from its 1 top contexts")
    );
    assert_eq!(seen.lock().unwrap().len(), 1);
    // A later run on latent 3 alone keeps latent 7's entry.
    let only_three = [(common::HOOK.to_string(), [(3, "fish!".to_string())].into())].into();
    let again = score_explanations(&cache, &only_three, &client, &out, &config, &mut |_| {});
    let again = &again.unwrap()[common::HOOK];
    assert_eq!((again[&3].explanation.as_str(), again.len()), ("fish!", 2));
    // No excerpt where a latent fires: nothing to score on.
    let none = ScoreConfig {
        sampling: SamplingConfig {
            random: 0,
            ..config.sampling.clone()
        },
        concurrency: 1,
    };
    let err = score_explanations(&cache, &only_three, &client, &out, &none, &mut |_| {});
    assert!(
        err.unwrap_err()
            .to_string()
            .contains("at least 1 activating excerpt")
    );
}

#[test]
fn an_unreachable_or_failing_server_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let cache: Cache = common::hand_cache(dir.path());
    let explain = |url: &str| {
        let client = ChatClient::new(url, "m");
        let config = ExplainConfig::default();
        explain_latents(&cache, &client, dir.path(), &config, &mut |_| {})
            .unwrap_err()
            .to_string()
    };
    let err = explain("http://127.0.0.1:9/v1");
    assert!(
        err.starts_with("the chat API at http://127.0.0.1:9/v1/chat/completions failed"),
        "{err}"
    );
    let (url, _) = serve(|_| "   ".to_string());
    // Both latents are asked at once: either may fail first.
    let err = explain(&url);
    assert!(
        err.contains("the explanation of latent 3 is empty")
            || err.contains("the explanation of latent 7 is empty"),
        "{err}"
    );
}

#[test]
fn explanations_of_latents_that_never_fired_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let cache = common::hand_cache(dir.path());
    let client = ChatClient::new("http://127.0.0.1:9/v1", "m");
    let explanations = [(common::HOOK.to_string(), [(5, "x".to_string())].into())].into();
    let err = score_explanations(
        &cache,
        &explanations,
        &client,
        dir.path(),
        &ScoreConfig::default(),
        &mut |_| {},
    )
    .unwrap_err();
    assert!(
        err.to_string()
            .starts_with("none of the 1 explained latents fired in the cache"),
        "{err}"
    );
}
