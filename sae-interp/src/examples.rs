//! Example sampling: each latent's firing statistics and its top-activating contexts, from a
//! [`Cache`]. A context is a window of tokens around the token where the latent fired, with the
//! latent's activation at each of them; no two of a latent's contexts share a token, so the
//! examples are not copies of one passage. For scoring explanations, also
//! contexts around random firings and windows where the latent does not fire at all (seeded).

use std::collections::{HashMap, HashSet};

use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
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
    /// Contexts around random firings per latent, apart from the top ones (fewer where the
    /// latent fires too rarely).
    pub random: usize,
    /// Windows where the latent does not fire, per latent.
    pub non_activating: usize,
    /// Seeds the random contexts (with the latent's index).
    pub seed: u64,
    /// Images per latent with its activations on their tokens, most activating first.
    pub images: usize,
}

impl Default for SamplingConfig {
    fn default() -> Self {
        SamplingConfig {
            top: 10,
            window: 12,
            random: 0,
            non_activating: 0,
            seed: 0,
            images: 4,
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
    /// Contexts around random firings (`SamplingConfig::random`).
    pub random: Vec<Context>,
    /// Windows where it does not fire (`SamplingConfig::non_activating`), activations all 0.
    pub non_activating: Vec<Context>,
    /// The images it fires on most (`SamplingConfig::images`).
    pub images: Vec<ImageActivations>,
}

/// A latent's activations on an image's tokens: a heatmap over the image's regions.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ImageActivations {
    /// The image's index in the cache's `info.images`.
    pub image: usize,
    /// The activation on each token of its `rows x cols` grid, row-major (0 where it did not
    /// fire).
    pub activations: Vec<f32>,
    /// The largest of them.
    pub max: f32,
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
            let firing = |r: usize| {
                let [s, p, _] = records.locations[r];
                ((s, p), records.activations[r])
            };
            let firings: Vec<((usize, usize), f32)> = group.iter().map(|&r| firing(r)).collect();
            let sum: f64 = firings.iter().map(|f| f64::from(f.1)).sum();
            let top = top_contexts(cache, &firings, config);
            let mut rng = ChaCha8Rng::seed_from_u64(config.seed ^ latent as u64);
            let random = random_contexts(cache, &firings, &top, config, &mut rng);
            let non_activating = quiet_windows(cache, &firings, config, &mut rng);
            let images = top_images(cache, &firings, config.images);
            LatentExamples {
                latent,
                firings: group.len() as u64,
                frequency: group.len() as f64 / tokens,
                max_activation: records.activations[group[0]],
                mean_activation: (sum / group.len() as f64) as f32,
                top,
                random,
                non_activating,
                images,
            }
        })
        .collect();
    Ok(examples)
}

/// The top contexts among one latent's firings `((sequence, position), activation)`, given
/// most activating first.
fn top_contexts(
    cache: &Cache,
    firings: &[((usize, usize), f32)],
    config: &SamplingConfig,
) -> Vec<Context> {
    let mut chosen: Vec<(usize, usize)> = Vec::new();
    for &((s, p), _) in firings {
        if chosen.len() == config.top {
            break;
        }
        if apart(&chosen, (s, p), config.window) {
            chosen.push((s, p));
        }
    }
    windows(cache, firings.iter().copied(), &chosen, config.window)
}

/// Contexts around up to `config.random` firings drawn at random, none overlapping the `top`
/// contexts or each other (fewer when the latent fires too rarely).
fn random_contexts(
    cache: &Cache,
    firings: &[((usize, usize), f32)],
    top: &[Context],
    config: &SamplingConfig,
    rng: &mut ChaCha8Rng,
) -> Vec<Context> {
    if config.random == 0 {
        return Vec::new();
    }
    let mut taken: Vec<(usize, usize)> = top.iter().map(|c| (c.sequence, c.position)).collect();
    let mut order: Vec<usize> = (0..firings.len()).collect();
    order.shuffle(rng);
    let mut chosen = Vec::new();
    for i in order {
        let (s, p) = firings[i].0;
        if chosen.len() == config.random {
            break;
        }
        if apart(&taken, (s, p), config.window) {
            taken.push((s, p));
            chosen.push((s, p));
        }
    }
    windows(cache, firings.iter().copied(), &chosen, config.window)
}

/// Up to `config.non_activating` random windows in which the latent does not fire.
fn quiet_windows(
    cache: &Cache,
    firings: &[((usize, usize), f32)],
    config: &SamplingConfig,
    rng: &mut ChaCha8Rng,
) -> Vec<Context> {
    let fired: HashSet<(usize, usize)> = firings.iter().map(|f| f.0).collect();
    let sequences = cache.info.sequences;
    let mut chosen: Vec<(usize, usize)> = Vec::new();
    for _ in 0..config.non_activating.saturating_mul(20) {
        if chosen.len() == config.non_activating {
            break;
        }
        let s = rng.random_range(0..sequences);
        let len = cache.sequence(s).len();
        if len == 0 {
            continue;
        }
        let p = rng.random_range(0..len);
        let (start, end) = span(p, len, config.window);
        let quiet = (start..end).all(|q| !fired.contains(&(s, q)));
        if quiet && apart(&chosen, (s, p), config.window) {
            chosen.push((s, p));
        }
    }
    windows(cache, std::iter::empty(), &chosen, config.window)
}

/// The `count` images with the largest activations among `firings`, each with the latent's
/// activation on every token of its grid.
fn top_images(
    cache: &Cache,
    firings: &[((usize, usize), f32)],
    count: usize,
) -> Vec<ImageActivations> {
    if count == 0 || cache.info.images.is_empty() {
        return Vec::new();
    }
    let mut heat: HashMap<usize, Vec<f32>> = HashMap::new();
    for &((s, p), a) in firings {
        if let Some((image, cell)) = cache.image_at(s, p) {
            let placement = &cache.info.images[image];
            let cells = heat
                .entry(image)
                .or_insert_with(|| vec![0.0; placement.rows * placement.cols]);
            cells[cell] = a;
        }
    }
    let mut images: Vec<ImageActivations> = (heat.into_iter())
        .map(|(image, activations)| {
            let max = activations.iter().fold(f32::MIN, |m, &a| m.max(a));
            ImageActivations {
                image,
                activations,
                max,
            }
        })
        .collect();
    images.sort_by(|a, b| b.max.total_cmp(&a.max).then(a.image.cmp(&b.image)));
    images.truncate(count);
    images
}

/// Whether the window around position `p` of sequence `s` shares no token with the windows
/// around `chosen`.
fn apart(chosen: &[(usize, usize)], (s, p): (usize, usize), window: usize) -> bool {
    let reach = window.saturating_mul(2);
    !(chosen.iter()).any(|&(cs, cp)| cs == s && cp.abs_diff(p) <= reach)
}

/// The positions `[start, end)` of the window around `position` in a sequence of `len`.
fn span(position: usize, len: usize, window: usize) -> (usize, usize) {
    let end = position.saturating_add(window).saturating_add(1);
    (position.saturating_sub(window), end.min(len))
}

/// The contexts around `places`, with the activations `firings` give in them.
fn windows(
    cache: &Cache,
    firings: impl Iterator<Item = ((usize, usize), f32)>,
    places: &[(usize, usize)],
    window: usize,
) -> Vec<Context> {
    let sequences: HashSet<usize> = places.iter().map(|c| c.0).collect();
    let values: HashMap<(usize, usize), f32> = firings
        .filter(|((s, _), _)| sequences.contains(s))
        .collect();
    (places.iter())
        .map(|&(sequence, position)| {
            let ids = cache.sequence(sequence);
            let (start, end) = span(position, ids.len(), window);
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
