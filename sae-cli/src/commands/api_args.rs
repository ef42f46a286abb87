//! The chat API `sae explain` and `sae score` talk to.

use std::io::IsTerminal;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};
use sae_interp::{ChatClient, Progress};

/// An OpenAI-compatible chat API and how hard to use it.
#[derive(clap::Args)]
pub struct ApiArgs {
    /// The API's base URL (its /chat/completions is called); OPENAI_API_KEY is sent as a bearer
    /// token when it is set.
    #[arg(long, value_name = "URL")]
    pub base_url: String,
    /// The model's name on that server.
    #[arg(long, value_name = "NAME")]
    pub model: String,
    /// Requests in flight at once (the server answers them in parallel).
    #[arg(long, value_name = "N", default_value_t = 4)]
    pub concurrency: usize,
    /// Longest time one request may take, from connecting to the answer's last byte.
    #[arg(long, value_name = "SECONDS", default_value_t = 300, value_parser = clap::value_parser!(u64).range(1..))]
    pub timeout: u64,
    /// Tries again, up to N times, a request that met HTTP 429, a 5xx status, a timeout or a
    /// dropped connection, waiting 1 s, then 2, 4, ... (at most 60 s, jittered) or as long as the
    /// server's Retry-After asks, up to 60 s. Other failures stop at once.
    #[arg(long, value_name = "N", default_value_t = 5)]
    pub max_retries: u32,
}

/// Reports each answered latent: a progress bar per hook point on a terminal, else a log line
/// (`verb`: what was done to the latent).
pub fn progress_reporter(verb: &'static str) -> impl FnMut(Progress) {
    let terminal = std::io::stderr().is_terminal();
    let mut bar: Option<(String, ProgressBar)> = None;
    move |p: Progress| {
        if !terminal {
            tracing::info!(hook = p.hook, latent = p.latent, "{verb}");
            return;
        }
        if bar.as_ref().is_none_or(|(hook, _)| hook != p.hook) {
            let new = ProgressBar::new(p.total as u64).with_style(
                ProgressStyle::with_template(
                    "{msg} {bar:30} {pos}/{len} latents [{elapsed_precise}<{eta_precise}]",
                )
                .expect("a valid template"),
            );
            new.set_message(p.hook.to_string());
            if let Some((_, old)) = bar.replace((p.hook.to_string(), new)) {
                old.finish();
            }
        }
        if let Some((_, b)) = &bar {
            b.set_position(p.done as u64);
        }
    }
}

impl ApiArgs {
    /// The client of that API.
    pub fn client(&self) -> ChatClient {
        ChatClient {
            timeout: Duration::from_secs(self.timeout),
            max_retries: self.max_retries,
            ..ChatClient::new(&self.base_url, &self.model)
        }
    }
}
