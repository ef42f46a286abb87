//! A client for OpenAI-compatible chat completion APIs (`POST <base>/chat/completions`), as
//! vLLM, SGLang, llama.cpp's server, Ollama and OpenAI serve them: the explainer and scorer
//! models of `sae explain` and `sae score`.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc;
use std::time::Duration;

use base64::prelude::{BASE64_STANDARD, Engine as _};
use serde_json::{Value, json};

use crate::error::{InterpError, Result};

/// Where the explainer model is served.
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
        }
    }

    /// The model's answer to `messages`, greedy (temperature 0).
    pub fn complete(&self, messages: &[Message]) -> Result<String> {
        let url = format!("{}/chat/completions", self.base_url);
        let body = json!({
            "model": self.model,
            "messages": messages.iter().map(Message::to_json).collect::<Vec<_>>(),
            "temperature": 0.0,
            "max_tokens": self.max_tokens,
        });
        let mut request = ureq::post(&url).timeout(Duration::from_secs(300));
        if let Some(key) = &self.api_key {
            request = request.set("Authorization", &format!("Bearer {key}"));
        }
        let failed = |reason: String| InterpError::Api {
            url: url.clone(),
            reason,
        };
        let response = match request.send_json(body) {
            Ok(response) => response,
            Err(ureq::Error::Status(code, response)) => {
                let text = response.into_string().unwrap_or_default();
                let excerpt: String = text.chars().take(300).collect();
                return Err(failed(format!("HTTP {code}: {excerpt}")));
            }
            Err(e) => return Err(failed(e.to_string())),
        };
        let answer: Value = response
            .into_json()
            .map_err(|e| failed(format!("the answer is not JSON: {e}")))?;
        answer["choices"][0]["message"]["content"]
            .as_str()
            .map(str::to_string)
            .ok_or_else(|| failed("the answer has no choices[0].message.content".into()))
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
