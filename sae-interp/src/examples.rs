//! Example sampling: each latent's firing statistics and its top-activating contexts, from a
//! [`Cache`]. A context is a window of tokens around the token where the latent fired, with the
//! latent's activation at each of them; one sequence gives a latent at most one context per
//! window, so the examples are not copies of one passage.

use std::collections::{HashMap, HashSet};

use serde::Serialize;

use crate::cache::Cache;
use crate::error::Result;

/// How to sample.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SamplingConfig {
    /// Contexts per latent, most activating first.
    pub top: usize,
    /// Tokens on each side of the activating token.
    pub window: usize,
}

impl Default for SamplingConfig {
    fn default() -> Self {
        SamplingConfig {
            top: 10,
            window: 12,
        }
    }
}

/// A window of a cached sequence around a token where a latent fired.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Context {
    /// The cached sequence.
    pub sequence: usize,
    /// The position of the window's first token in the sequence.
    pub start: usize,
    /// The position of the activating token in the sequence.
    pub position: usize,
    /// The window's token ids.
    pub tokens: Vec<i64>,
    /// The latent's activation at each token of the window (0 where it did not fire).
    pub activations: Vec<f32>,
}

impl Context {
    /// The activation at the activating token.
    pub fn max_activation(&self) -> f32 {
        self.activations[self.position - self.start]
    }
}

/// One latent's statistics and top contexts.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LatentExamples {
    /// The latent's index.
    pub latent: usize,
    /// Tokens it fired on.
    pub firings: u64,
    /// `firings` over the tokens the SAE saw.
    pub frequency: f64,
    /// Its largest activation.
    pub max_activation: f32,
    /// Its mean activation where it fired.
    pub mean_activation: f32,
    /// Its most activating contexts.
    pub top: Vec<Context>,
}

/// Every latent of the SAE at `hook` that fired in the cache, in latent order, with its
/// statistics and top contexts.
pub fn latent_examples(
    cache: &Cache,
    hook: &str,
    config: &SamplingConfig,
) -> Result<Vec<LatentExamples>> {
    let records = cache.records(hook)?;
    let tokens = cache.info.hooks[hook].tokens.max(1) as f64;
    // Records by latent, each latent's most activating first (ties: earlier in the cache).
    let mut order: Vec<usize> = (0..records.activations.len()).collect();
    order.sort_by(|&a, &b| {
        let (la, lb) = (records.locations[a][2], records.locations[b][2]);
        let (va, vb) = (records.activations[a], records.activations[b]);
        la.cmp(&lb).then(vb.total_cmp(&va)).then(a.cmp(&b))
    });
    let groups = order.chunk_by(|&a, &b| records.locations[a][2] == records.locations[b][2]);
    let examples = groups
        .map(|group| {
            let latent = records.locations[group[0]][2];
            let values = group.iter().map(|&r| records.activations[r]);
            let sum: f64 = values.map(f64::from).sum();
            let firing = |r: usize| {
                let [s, p, _] = records.locations[r];
                ((s, p), records.activations[r])
            };
            let top = top_contexts(cache, group.iter().map(|&r| firing(r)), config);
            LatentExamples {
                latent,
                firings: group.len() as u64,
                frequency: group.len() as f64 / tokens,
                max_activation: records.activations[group[0]],
                mean_activation: (sum / group.len() as f64) as f32,
                top,
            }
        })
        .collect();
    Ok(examples)
}

/// The top contexts among one latent's firings `((sequence, position), activation)`, given
/// most activating first.
fn top_contexts(
    cache: &Cache,
    firings: impl Iterator<Item = ((usize, usize), f32)> + Clone,
    config: &SamplingConfig,
) -> Vec<Context> {
    let mut chosen: Vec<(usize, usize)> = Vec::new();
    for ((s, p), _) in firings.clone() {
        if chosen.len() == config.top {
            break;
        }
        let overlaps = (chosen.iter()).any(|&(cs, cp)| cs == s && cp.abs_diff(p) <= config.window);
        if !overlaps {
            chosen.push((s, p));
        }
    }
    let sequences: HashSet<usize> = chosen.iter().map(|c| c.0).collect();
    let values: HashMap<(usize, usize), f32> = firings
        .filter(|((s, _), _)| sequences.contains(s))
        .collect();
    (chosen.into_iter())
        .map(|(sequence, position)| {
            let ids = cache.sequence(sequence);
            let start = position.saturating_sub(config.window);
            let end = (position + config.window + 1).min(ids.len());
            let activations = (start..end)
                .map(|p| values.get(&(sequence, p)).copied().unwrap_or(0.0))
                .collect();
            Context {
                sequence,
                start,
                position,
                tokens: ids[start..end].to_vec(),
                activations,
            }
        })
        .collect()
}
