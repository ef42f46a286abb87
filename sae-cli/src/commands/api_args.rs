//! The chat API `sae explain` and `sae score` talk to.

use sae_interp::ChatClient;

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
}

impl ApiArgs {
    /// The client of that API.
    pub fn client(&self) -> ChatClient {
        ChatClient::new(&self.base_url, &self.model)
    }
}
