//! `explain_latents` and `score_explanations` against a local OpenAI-compatible server that
//! records each request and answers as a fixed rule says, on the hand-written cache of
//! `common`.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::prelude::{BASE64_STANDARD, Engine as _};
use sae_interp::{
    Cache, ChatClient, ExplainConfig, Message, Progress, SamplingConfig, ScoreConfig,
    explain_latents, read_explanations, score_explanations,
};
use serde_json::{Value, json};

mod common;

/// The requests a server saw: headers and JSON body.
type Requests = Arc<Mutex<Vec<(String, Value)>>>;

/// A server on a free local port that reads each request, records it, and hands its index
/// among the requests seen (0 for the first), its body and the connection to `respond`, each
/// connection on its own thread. Returns its base URL and the requests (headers, body) it saw.
fn serve_with(
    respond: impl Fn(usize, &Value, &mut TcpStream) + Send + Sync + 'static,
) -> (String, Requests) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/v1", listener.local_addr().unwrap());
    let seen = Requests::default();
    let log = seen.clone();
    let respond = Arc::new(respond);
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let (mut stream, log, respond) = (stream.unwrap(), log.clone(), respond.clone());
            std::thread::spawn(move || {
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
                let index = {
                    let mut log = log.lock().unwrap();
                    log.push((headers, body.clone()));
                    log.len() - 1
                };
                respond(index, &body, &mut stream);
            });
        }
    });
    (url, seen)
}

/// Writes an HTTP response of `status` (e.g. `200 OK`) with `headers` (lines ending in CRLF)
/// and `body`; a client that has gone is no error.
fn reply(stream: &mut TcpStream, status: &str, headers: &str, body: &str) {
    let head = format!(
        "HTTP/1.1 {status}\r\n{headers}Content-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    let _ = stream.write_all(head.as_bytes());
    let _ = stream.write_all(body.as_bytes());
}

/// Answers a chat completion whose message is `content`.
fn answer_with(stream: &mut TcpStream, content: &str) {
    let reply_body = json!({"choices": [{"message": {"role": "assistant", "content": content}}]});
    let json = "Content-Type: application/json\r\n";
    reply(stream, "200 OK", json, &reply_body.to_string());
}

/// A server on a free local port: `answer(request body)` is the reply's message content.
fn serve(answer: fn(&Value) -> String) -> (String, Requests) {
    serve_with(move |_, body, stream| answer_with(stream, &answer(body)))
}

/// A client of `url` that retries `max_retries` times after waits of a few milliseconds.
fn quick_client(url: &str, max_retries: u32) -> ChatClient {
    ChatClient {
        max_retries,
        backoff: Duration::from_millis(5),
        ..ChatClient::new(url, "m")
    }
}

/// One request of `client`: its answer, or its error's sentence.
fn ask(client: &ChatClient) -> Result<String, String> {
    let messages = Message::prompt("Answer.", "Question?".into());
    client.complete(&messages).map_err(|e| e.to_string())
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
    let explanations = fish_and_cats();
    let config = score_config(1);
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
        let client = quick_client(url, 2);
        let config = ExplainConfig::default();
        explain_latents(&cache, &client, dir.path(), &config, &mut |_| {})
            .unwrap_err()
            .to_string()
    };
    let err = explain("http://127.0.0.1:9/v1");
    assert!(
        err.starts_with("the chat API at http://127.0.0.1:9/v1/chat/completions failed")
            && err.ends_with("(gave up after 3 tries)"),
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

#[test]
fn a_rate_limit_is_waited_out_as_long_as_the_server_asks_up_to_a_cap() {
    // The first request is refused with Retry-After: 1 (second), the next answered.
    let (url, seen) = serve_with(|i, _, stream| match i {
        0 => reply(
            stream,
            "429 Too Many Requests",
            "Retry-After: 1\r\n",
            "slow down",
        ),
        _ => answer_with(stream, "fine"),
    });
    let client = quick_client(&url, 5);
    let start = Instant::now();
    assert_eq!(ask(&client).unwrap(), "fine");
    let waited = start.elapsed().as_secs_f64();
    assert!((1.0..3.0).contains(&waited), "{waited} s");
    assert_eq!(seen.lock().unwrap().len(), 2);
    // A server asking for 30 s is waited for max_wait only.
    let (url, seen) = serve_with(|i, _, stream| match i {
        0 => reply(stream, "429 Too Many Requests", "Retry-After: 30\r\n", ""),
        _ => answer_with(stream, "fine"),
    });
    let client = ChatClient {
        max_wait: Duration::from_millis(100),
        ..quick_client(&url, 5)
    };
    let start = Instant::now();
    assert_eq!(ask(&client).unwrap(), "fine");
    assert!(
        start.elapsed() < Duration::from_secs(1),
        "{:?}",
        start.elapsed()
    );
    assert_eq!(seen.lock().unwrap().len(), 2);
}

#[test]
fn server_errors_are_retried_and_client_errors_are_not() {
    let (url, seen) = serve_with(|i, _, stream| match i {
        0 | 1 => reply(stream, "503 Service Unavailable", "", "overloaded"),
        _ => answer_with(stream, "at last"),
    });
    assert_eq!(ask(&quick_client(&url, 5)).unwrap(), "at last");
    assert_eq!(seen.lock().unwrap().len(), 3);
    // --max-retries bounds the tries: 1 retry, 2 requests, then the last error.
    let (url, seen) = serve_with(|_, _, stream| reply(stream, "502 Bad Gateway", "", "down"));
    let err = ask(&quick_client(&url, 1)).unwrap_err();
    assert!(
        err.ends_with("failed: HTTP 502: down (gave up after 2 tries)"),
        "{err}"
    );
    assert_eq!(seen.lock().unwrap().len(), 2);
    // A 400 would fail again: one request only.
    let (url, seen) =
        serve_with(|_, _, stream| reply(stream, "400 Bad Request", "", "no such model"));
    let err = ask(&quick_client(&url, 5)).unwrap_err();
    assert!(err.ends_with("failed: HTTP 400: no such model"), "{err}");
    assert_eq!(seen.lock().unwrap().len(), 1);
}

#[test]
fn a_dropped_connection_is_retried() {
    // The first connection closes before any answer, the second halfway through the body.
    let (url, seen) = serve_with(|i, _, stream| match i {
        0 => {}
        1 => {
            let head = "HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n{\"choices\"";
            let _ = stream.write_all(head.as_bytes());
        }
        _ => answer_with(stream, "third time"),
    });
    assert_eq!(ask(&quick_client(&url, 5)).unwrap(), "third time");
    assert_eq!(seen.lock().unwrap().len(), 3);
    let (url, seen) = serve_with(|_, _, _| {});
    let err = ask(&quick_client(&url, 2)).unwrap_err();
    assert!(err.ends_with("(gave up after 3 tries)"), "{err}");
    assert_eq!(seen.lock().unwrap().len(), 3);
}

#[test]
fn an_oversized_answer_is_refused_without_reading_it_all() {
    // 64 MiB of JSON whitespace against a 1 MiB cap; the server reports how much it could
    // write before the client hung up.
    const SENT: usize = 64 << 20;
    let (written, wrote) = std::sync::mpsc::channel();
    let (url, seen) = serve_with(move |_, _, stream| {
        let head = "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n\r\n";
        stream.write_all(head.as_bytes()).unwrap();
        let chunk = vec![b' '; 64 << 10];
        let mut sent = 0;
        while sent < SENT && stream.write_all(&chunk).is_ok() {
            sent += chunk.len();
        }
        written.send(sent).unwrap();
    });
    let client = ChatClient {
        max_response_bytes: 1 << 20,
        ..quick_client(&url, 5)
    };
    let err = ask(&client).unwrap_err();
    assert!(
        err.ends_with(
            "failed: the answer is longer than the 1048576 bytes read of one at most (max_response_bytes): refused"
        ),
        "{err}"
    );
    let sent = wrote.recv_timeout(Duration::from_secs(30)).unwrap();
    // What the kernel's socket buffers took beyond the cap, far from all of it; not retried.
    assert!(sent < 16 << 20, "the server wrote {sent} bytes");
    assert_eq!(seen.lock().unwrap().len(), 1);
}

#[test]
fn a_server_that_never_answers_times_out() {
    let (url, seen) = serve_with(|_, _, _| std::thread::sleep(Duration::from_secs(3)));
    let client = ChatClient {
        timeout: Duration::from_millis(200),
        ..quick_client(&url, 1)
    };
    let start = Instant::now();
    let err = ask(&client).unwrap_err();
    assert!(
        err.contains("failed: no complete answer within the 0.2 s timeout")
            && err.ends_with("(gave up after 2 tries)"),
        "{err}"
    );
    assert!(
        start.elapsed() < Duration::from_secs(2),
        "{:?}",
        start.elapsed()
    );
    assert_eq!(seen.lock().unwrap().len(), 2);
}

#[test]
fn a_rerun_scores_only_the_latents_without_a_score() {
    let dir = tempfile::tempdir().unwrap();
    let cache = common::hand_cache(dir.path());
    // Every excerpt fires, says the scorer, except that it cannot judge "cats" while broken.
    let broken = Arc::new(AtomicBool::new(true));
    let broke = broken.clone();
    let (url, seen) = serve_with(move |_, body, stream| {
        let user = user_message(body);
        if broke.load(Ordering::Relaxed) && user.starts_with("Explanation: cats") {
            return answer_with(stream, "no idea");
        }
        let n = user.matches("Excerpt ").count();
        answer_with(stream, &format!("{:?}", vec![1; n]));
    });
    let asked = |from: usize| -> Vec<String> {
        let seen = seen.lock().unwrap();
        let user = |body: &Value| user_message(body).lines().next().unwrap().to_string();
        seen[from..].iter().map(|(_, body)| user(body)).collect()
    };
    let client = quick_client(&url, 0);
    let explanations = fish_and_cats();
    // With no top context left out, both latents have an excerpt where they fire.
    let config = score_config(0);
    let out = dir.path().join("scores");
    let score = |explanations| {
        score_explanations(&cache, explanations, &client, &out, &config, &mut |_| {}).unwrap()
    };
    let first = score(&explanations);
    let first = &first[common::HOOK];
    assert_eq!(first[&3].error, None);
    assert_eq!(
        first[&7].error.as_deref(),
        Some("the answer holds no JSON list")
    );
    assert_eq!(asked(0).len(), 2);
    // The rerun asks about latent 7 alone and keeps latent 3's score as it was.
    broken.store(false, Ordering::Relaxed);
    let second = score(&explanations);
    let second = &second[common::HOOK];
    assert_eq!(asked(2), ["Explanation: cats"]);
    assert_eq!(second[&3], first[&3]);
    assert_eq!((second[&7].error.as_ref(), second[&7].recall), (None, 1.0));
    let written: Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("scores.json")).unwrap()).unwrap();
    assert_eq!(written[common::HOOK]["7"]["recall"], 1.0);
    // Everything is scored: nothing is asked.
    score(&explanations);
    assert_eq!(seen.lock().unwrap().len(), 3);

    // When no latent can be scored there are no means to give: an error, the file written.
    broken.store(true, Ordering::Relaxed);
    let cats = [(common::HOOK.to_string(), [(7, "cats".to_string())].into())].into();
    let out = dir.path().join("cats");
    let err = score_explanations(&cache, &cats, &client, &out, &config, &mut |_| {});
    let err = err.unwrap_err().to_string();
    let file = out.join("scores.json");
    assert_eq!(
        err,
        format!(
            "none of the 1 explained latents could be scored (latent 7 of model.layers.0: the answer holds no JSON list); each one's error is in {}",
            file.display()
        )
    );
    assert!(file.is_file());
}

/// Explanations of latents 3 ("fish") and 7 ("cats") of the hand-made cache's hook point.
fn fish_and_cats() -> sae_interp::Explanations {
    [(
        common::HOOK.to_string(),
        [(3, "fish".to_string()), (7, "cats".to_string())].into(),
    )]
    .into()
}

/// Scoring with `top` top contexts left out, 5 activating and 4 non-activating excerpts.
fn score_config(top: usize) -> ScoreConfig {
    ScoreConfig {
        sampling: SamplingConfig {
            top,
            window: 1,
            random: 5,
            non_activating: 4,
            seed: 7,
            images: 0,
        },
        concurrency: 2,
    }
}
