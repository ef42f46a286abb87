//! Interpreting and steering SAE latents: [`cache`] records the latents an SAE finds over a
//! dataset, [`examples`] samples each latent's top contexts from it, [`dashboard`] writes them
//! as static HTML with any [`explanations`]; [`steer`] clamps latents or adds their decoder
//! directions while a model runs.

pub mod cache;
pub mod dashboard;
pub mod error;
pub mod examples;
pub mod explanations;
pub mod steer;

pub use cache::{Cache, CacheConfig, CacheInfo, HookCache, Records, cache_latents};
pub use dashboard::{DashboardSummary, write_dashboard};
pub use error::{InterpError, Result};
pub use examples::{Context, LatentExamples, SamplingConfig, latent_examples};
pub use explanations::{EXPLANATIONS_FILE, Explanations, read_explanations};
pub use steer::{LatentValue, Steering, SteeringHooks, steered_sae};
