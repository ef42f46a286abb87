//! Interpreting and steering SAE latents: [`cache`] records the latents an SAE finds over a
//! dataset, [`examples`] samples each latent's top contexts from it, [`dashboard`] writes them
//! as static HTML with any [`explanations`], which [`explain`] asks a larger model for and
//! [`score`] checks by detection; [`steer`] clamps latents or adds their decoder directions
//! while a model runs.

pub mod cache;
pub mod chat_client;
pub mod dashboard;
pub mod error;
pub mod examples;
pub mod explain;
pub mod explanations;
pub mod heatmap;
pub mod image_grid;
pub mod score;
pub mod steer;

pub use cache::{Cache, CacheConfig, CacheInfo, HookCache, Records, cache_latents};
pub use chat_client::{ChatClient, Message, Progress};
pub use dashboard::{DashboardSummary, write_dashboard};
pub use error::{InterpError, Result};
pub use examples::{Context, LatentExamples, SamplingConfig, latent_examples};
pub use explain::{ExplainConfig, ExplainSummary, explain_latents};
pub use explanations::{EXPLANATIONS_FILE, Explanations, read_explanations};
pub use image_grid::ImagePlacement;
pub use score::{LatentScore, SCORES_FILE, ScoreConfig, Scores, score_explanations};
pub use steer::{LatentValue, Steering, SteeringHooks, steered_sae};
