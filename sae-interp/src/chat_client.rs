//! A client for OpenAI-compatible chat completion APIs (`POST <base>/chat/completions`), as
//! vLLM, SGLang, llama.cpp's server, Ollama and OpenAI serve them: the explainer and scorer
//! models of `sae explain` and `sae score`.

use std::io::Read as _;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc;
use std::time::Duration;

use base64::prelude::{BASE64_STANDARD, Engine as _};
use serde_json::{Value, json};
use ureq::ErrorKind;

use crate::error::{InterpError, Result};

/// Where the explainer model is served, and how patiently to ask it.
#[derive(Debug, Clone, PartialEq)]
pub struct ChatClient {
    /// The API's base URL, e.g. `http://localhost:8000/v1`.
    pub base_url: String,
    /// The model name the server knows.
    pub model: String,
    /// Sent as a bearer token when set (`OPENAI_API_KEY`).
    pub api_key: Option<String>,
    /// Most tokens per answer.
    pub max_tokens: usize,
    /// Longest time one request may take, from connecting to the answer's last byte.
    pub timeout: Duration,
    /// Tries after the first of a request that met HTTP 429, a 5xx status, a timeout or a
    /// dropped connection (other failures are not retried).
    pub max_retries: u32,
    /// The wait before the first retry, doubled for each next one (each drawn at random
    /// between half and all of it).
    pub backoff: Duration,
    /// Longest wait between tries: caps the doubling and a server's `Retry-After`.
    pub max_wait: Duration,
    /// Largest answer body read, in bytes: a longer one is refused after reading this much.
    pub max_response_bytes: u64,
}

/// One message of a chat.
#[derive(Debug, Clone, PartialEq)]
pub struct Message {
    /// `system`, `user` or `assistant`.
    pub role: &'static str,
    /// The text.
    pub content: String,
    /// PNG images sent after the text (the model must take images).
    pub images: Vec<Vec<u8>>,
}

impl Message {
    /// A request's messages: the instructions, then the user's text.
    pub fn prompt(system: &str, user: String) -> Vec<Message> {
        vec![
            Message {
                role: "system",
                content: system.to_string(),
                images: Vec::new(),
            },
            Message {
                role: "user",
                content: user,
                images: Vec::new(),
            },
        ]
    }

    /// As the API takes it: the text alone, or the text and `data:` URLs of the images.
    fn to_json(&self) -> Value {
        if self.images.is_empty() {
            return json!({"role": self.role, "content": self.content});
        }
        let text = json!({"type": "text", "text": self.content});
        let images = self.images.iter().map(|png| {
            let url = format!("data:image/png;base64,{}", BASE64_STANDARD.encode(png));
            json!({"type": "image_url", "image_url": {"url": url}})
        });
        let content: Vec<Value> = std::iter::once(text).chain(images).collect();
        json!({"role": self.role, "content": content})
    }
}

impl ChatClient {
    /// A client of `model` at `base_url`, with `OPENAI_API_KEY` when it is set.
    pub fn new(base_url: &str, model: &str) -> Self {
        ChatClient {
            base_url: base_url.trim_end_matches('/').to_string(),
            model: model.to_string(),
            api_key: std::env::var("OPENAI_API_KEY")
                .ok()
                .filter(|k| !k.is_empty()),
            max_tokens: 512,
            timeout: Duration::from_secs(300),
            max_retries: 5,
            backoff: Duration::from_secs(1),
            max_wait: Duration::from_secs(60),
            max_response_bytes: 16 << 20,
        }
    }

    /// The model's answer to `messages`, greedy (temperature 0); a request that fails in a
    /// way that may pass is tried again (see [`ChatClient::max_retries`]).
    pub fn complete(&self, messages: &[Message]) -> Result<String> {
        let url = format!("{}/chat/completions", self.base_url);
        let body = json!({
            "model": self.model,
            "messages": messages.iter().map(Message::to_json).collect::<Vec<_>>(),
            "temperature": 0.0,
            "max_tokens": self.max_tokens,
        });
        let failed = |reason: String| InterpError::Api {
            url: url.clone(),
            reason,
        };
        let mut retries = 0;
        let bytes = loop {
            match self.post(&url, &body) {
                Ok(bytes) => break bytes,
                Err(Failure::Transient {
                    reason,
                    retry_after,
                }) if retries < self.max_retries => {
                    let wait = self.retry_wait(retries, retry_after);
                    tracing::warn!(url = %url, wait = ?wait, "{reason}; trying again");
                    std::thread::sleep(wait);
                    retries += 1;
                }
                Err(Failure::Transient { reason, .. }) => {
                    let tries = retries + 1;
                    return Err(failed(format!("{reason} (gave up after {tries} tries)")));
                }
                Err(Failure::Final(reason)) => return Err(failed(reason)),
            }
        };
        let answer: Value = serde_json::from_slice(&bytes)
            .map_err(|e| failed(format!("the answer is not JSON: {e}")))?;
        answer["choices"][0]["message"]["content"]
            .as_str()
            .map(str::to_string)
            .ok_or_else(|| failed("the answer has no choices[0].message.content".into()))
    }

    /// One try of `body` at `url`: the answer's body, or why there is none.
    fn post(&self, url: &str, body: &Value) -> std::result::Result<Vec<u8>, Failure> {
        let mut request = ureq::post(url).timeout(self.timeout);
        if let Some(key) = &self.api_key {
            request = request.set("Authorization", &format!("Bearer {key}"));
        }
        let response = match request.send_json(body) {
            Ok(response) => response,
            Err(ureq::Error::Status(code, response)) => {
                let retry_after = (response.header("Retry-After"))
                    .and_then(|v| v.trim().parse().ok())
                    .map(Duration::from_secs);
                // The start of the body says why; the rest is not read.
                let mut text = Vec::new();
                let _ = response.into_reader().take(1024).read_to_end(&mut text);
                let excerpt: String = String::from_utf8_lossy(&text).chars().take(300).collect();
                let reason = format!("HTTP {code}: {excerpt}");
                return Err(if code == 429 || code >= 500 {
                    Failure::Transient {
                        reason,
                        retry_after,
                    }
                } else {
                    Failure::Final(reason)
                });
            }
            Err(ureq::Error::Transport(e)) => {
                let reason = self.transport_reason(e.to_string());
                return Err(match e.kind() {
                    ErrorKind::Io | ErrorKind::ConnectionFailed => Failure::transient(reason),
                    _ => Failure::Final(reason),
                });
            }
        };
        let cap = self.max_response_bytes;
        let mut bytes = Vec::new();
        match response
            .into_reader()
            .take(cap.saturating_add(1))
            .read_to_end(&mut bytes)
        {
            Ok(_) if bytes.len() as u64 > cap => Err(Failure::Final(format!(
                "the answer is longer than the {cap} bytes read of one at most (max_response_bytes): refused"
            ))),
            Ok(_) => Ok(bytes),
            Err(e) => Err(Failure::transient(
                self.transport_reason(format!("reading the answer: {e}")),
            )),
        }
    }

    /// `message` of a failed connection, said plainly when it is a timeout.
    fn transport_reason(&self, message: String) -> String {
        if message.contains("timed out") {
            let secs = self.timeout.as_secs_f64();
            format!("no complete answer within the {secs} s timeout ({message})")
        } else {
            message
        }
    }

    /// The wait before retry `retry` (0 for the first): what the server asked for, else the
    /// backoff doubled `retry` times and jittered; never more than [`ChatClient::max_wait`].
    fn retry_wait(&self, retry: u32, retry_after: Option<Duration>) -> Duration {
        let wait = retry_after.unwrap_or_else(|| {
            let doubled = self.backoff.saturating_mul(1 << retry.min(30));
            doubled
                .min(self.max_wait)
                .mul_f64(rand::random_range(0.5..=1.0))
        });
        wait.min(self.max_wait)
    }
}

/// Why one try of a request failed.
enum Failure {
    /// It may pass if tried again (after at least `retry_after`, when the server said so).
    Transient {
        reason: String,
        retry_after: Option<Duration>,
    },
    /// Trying again would fail the same way.
    Final(String),
}

impl Failure {
    /// A transient failure with no wait asked for.
    fn transient(reason: String) -> Self {
        Failure::Transient {
            reason,
            retry_after: None,
        }
    }
}

/// Where a run of requests is: one latent answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Progress<'a> {
    /// The hook point whose latents are asked about.
    pub hook: &'a str,
    /// The latent just answered.
    pub latent: usize,
    /// Latents of this hook point answered so far in this run.
    pub done: usize,
    /// Latents of this hook point this run asks about.
    pub total: usize,
}

/// Runs `ask` on every item on up to `concurrency` threads (requests to the API overlap) and
/// hands each result to `done` on the calling thread as it comes, in any order. The first error
/// (of `ask` or `done`) stops handing out items and is returned once the threads end.
pub fn ask_concurrently<T: Sync, R: Send>(
    items: &[T],
    concurrency: usize,
    ask: impl Fn(&T) -> Result<R> + Sync,
    mut done: impl FnMut(&T, R) -> Result<()>,
) -> Result<()> {
    let next = AtomicUsize::new(0);
    let failed = AtomicBool::new(false);
    std::thread::scope(|scope| {
        let (sender, results) = mpsc::channel();
        for _ in 0..concurrency.clamp(1, items.len().max(1)) {
            let (sender, next, failed, ask) = (sender.clone(), &next, &failed, &ask);
            scope.spawn(move || {
                // A panicking `ask` stops the others too (the scope then re-raises it).
                let _stop = StopOnPanic(failed);
                while !failed.load(Ordering::Relaxed) {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(item) = items.get(i) else { break };
                    let result = ask(item);
                    failed.fetch_or(result.is_err(), Ordering::Relaxed);
                    if sender.send((i, result)).is_err() {
                        break;
                    }
                }
            });
        }
        drop(sender);
        let mut first_error = None;
        for (i, result) in results {
            if let Err(e) = result.and_then(|r| done(&items[i], r)) {
                failed.store(true, Ordering::Relaxed);
                first_error.get_or_insert(e);
            }
        }
        first_error.map_or(Ok(()), Err)
    })
}

/// Sets its flag when dropped by a panicking thread.
struct StopOnPanic<'a>(&'a AtomicBool);

impl Drop for StopOnPanic<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.0.store(true, Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waits_double_with_jitter_and_stay_under_the_cap() {
        let mut client = ChatClient::new("http://localhost/v1", "m");
        (client.backoff, client.max_wait) = (Duration::from_secs(1), Duration::from_secs(10));
        for _ in 0..50 {
            for (retry, full) in [
                (0, 1.0),
                (1, 2.0),
                (2, 4.0),
                (3, 8.0),
                (4, 10.0),
                (40, 10.0),
            ] {
                let wait = client.retry_wait(retry, None).as_secs_f64();
                assert!(
                    full / 2.0 <= wait && wait <= full,
                    "retry {retry}: {wait} s"
                );
            }
        }
        // The server's Retry-After, exactly, up to the cap.
        let asked = |secs| client.retry_wait(3, Some(Duration::from_secs(secs)));
        assert_eq!(asked(2), Duration::from_secs(2));
        assert_eq!(asked(3600), Duration::from_secs(10));
    }

    #[test]
    fn every_item_is_asked_once_and_the_first_error_stops_the_rest() {
        let items: Vec<usize> = (0..20).collect();
        let mut got = Vec::new();
        let double = |&i: &usize| Ok(2 * i);
        ask_concurrently(&items, 4, double, |&i, r| {
            got.push((i, r));
            Ok(())
        })
        .unwrap();
        got.sort();
        assert_eq!(got, (0..20).map(|i| (i, 2 * i)).collect::<Vec<_>>());
        let fail_at_5 = |&i: &usize| match i {
            5 => Err(InterpError::Invalid("item 5".into())),
            i => Ok(i),
        };
        let mut done = 0;
        let err = ask_concurrently(&items, 1, fail_at_5, |_, _| {
            done += 1;
            Ok(())
        });
        assert_eq!(err.unwrap_err().to_string(), "item 5");
        // One thread: items 0 to 4 were done, nothing after the error was asked.
        assert_eq!(done, 5);
    }
}
