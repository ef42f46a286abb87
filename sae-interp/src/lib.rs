//! Interpreting and steering SAE latents: [`steer`] clamps latents or adds their decoder
//! directions while a model runs.

pub mod error;
pub mod steer;

pub use error::{InterpError, Result};
pub use steer::{LatentValue, Steering, SteeringHooks, steered_sae};
