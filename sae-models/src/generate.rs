//! Text generation with a KV cache: greedy or seeded temperature / top-p sampling, stop tokens,
//! and batches of prompts with left padding.

use burn::tensor::backend::Backend;
use burn::tensor::{Int, Tensor, TensorData};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use sae_core::Hooks;

use crate::decoder::{DecoderLm, KvCache, LmInput};
use crate::error::{ModelError, Result};

/// A model generation can drive: forward passes over new tokens after cached ones.
pub trait Generator<B: Backend> {
    /// Logits `[batch, new, vocab]` of `input_ids` (`[batch, new]`, `attention_mask` alike)
    /// after the positions in `cache`, which the pass extends.
    fn next_logits(
        &self,
        input_ids: Tensor<B, 2, Int>,
        attention_mask: Tensor<B, 2, Int>,
        cache: &mut KvCache<B>,
        hooks: &mut dyn Hooks<B>,
    ) -> Result<Tensor<B, 3>>;

    /// The most positions a sequence may have.
    fn context(&self) -> usize;
}

/// A vision-language model's forward pass over new tokens after cached ones, images (if any)
/// in the first pass.
pub trait ImageLm<B: Backend> {
    /// The images a prompt comes with.
    type Images;

    /// Logits `[batch, new, vocab]`, as [`Generator::next_logits`].
    fn forward_images(
        &self,
        input_ids: Tensor<B, 2, Int>,
        attention_mask: Tensor<B, 2, Int>,
        images: Option<Self::Images>,
        cache: &mut KvCache<B>,
        hooks: &mut dyn Hooks<B>,
    ) -> Result<Tensor<B, 3>>;

    /// The most positions a sequence may have.
    fn context(&self) -> usize;
}

/// An [`ImageLm`] generating after a prompt with images: they go with the first pass only.
pub struct WithImages<'a, M, I> {
    model: &'a M,
    images: std::cell::RefCell<Option<I>>,
}

impl<'a, M, I> WithImages<'a, M, I> {
    /// `model` generating after prompts that hold `images`' tokens.
    pub fn new(model: &'a M, images: Option<I>) -> Self {
        WithImages {
            model,
            images: std::cell::RefCell::new(images),
        }
    }
}

impl<B: Backend, M: ImageLm<B>> Generator<B> for WithImages<'_, M, M::Images> {
    fn next_logits(
        &self,
        input_ids: Tensor<B, 2, Int>,
        attention_mask: Tensor<B, 2, Int>,
        cache: &mut KvCache<B>,
        hooks: &mut dyn Hooks<B>,
    ) -> Result<Tensor<B, 3>> {
        let images = self.images.borrow_mut().take();
        self.model
            .forward_images(input_ids, attention_mask, images, cache, hooks)
    }

    fn context(&self) -> usize {
        self.model.context()
    }
}

impl<B: Backend> Generator<B> for DecoderLm<B> {
    fn next_logits(
        &self,
        input_ids: Tensor<B, 2, Int>,
        attention_mask: Tensor<B, 2, Int>,
        cache: &mut KvCache<B>,
        hooks: &mut dyn Hooks<B>,
    ) -> Result<Tensor<B, 3>> {
        let input = LmInput {
            input_ids,
            attention_mask: Some(attention_mask),
        };
        Ok(self
            .forward_cached(input, cache, hooks)
            .logits
            .expect("generation hooks do not stop the pass"))
    }

    fn context(&self) -> usize {
        self.config().max_position_embeddings
    }
}

/// Sampling instead of greedy decoding.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sampling {
    /// Softmax temperature (> 0).
    pub temperature: f32,
    /// Nucleus sampling: keep the most likely tokens whose probabilities sum to `top_p`.
    pub top_p: f32,
    /// Seed of the random generator (same seed, same tokens).
    pub seed: u64,
}

/// How to generate.
#[derive(Debug, Clone, PartialEq)]
pub struct GenerateConfig {
    /// Most tokens generated per prompt.
    pub max_new_tokens: usize,
    /// `None`: greedy.
    pub sampling: Option<Sampling>,
    /// A sequence ends after producing any of these (kept in its output).
    pub stop_tokens: Vec<i64>,
    /// Used for left padding and after a sequence ended.
    pub pad_token: i64,
}

/// Generates continuations of `prompts`; returns the generated token ids of each (its stop
/// token included, nothing after it). `hooks` see every forward pass (e.g. injected SAEs).
pub fn generate<B: Backend>(
    model: &dyn Generator<B>,
    prompts: &[Vec<i64>],
    config: &GenerateConfig,
    hooks: &mut dyn Hooks<B>,
    device: &B::Device,
) -> Result<Vec<Vec<i64>>> {
    let b = prompts.len();
    let longest = prompts.iter().map(Vec::len).max().unwrap_or(0);
    let limit = model.context();
    if longest + config.max_new_tokens > limit {
        return Err(ModelError::TooLong {
            needed: longest + config.max_new_tokens,
            limit,
        });
    }
    if b == 0 || longest == 0 || config.max_new_tokens == 0 {
        return Ok(vec![Vec::new(); b]);
    }
    let mut ids = Vec::with_capacity(b * longest);
    let mut mask = Vec::with_capacity(b * longest);
    for p in prompts {
        let pad = longest - p.len();
        ids.extend(std::iter::repeat_n(config.pad_token, pad).chain(p.iter().copied()));
        mask.extend(std::iter::repeat_n(0i64, pad).chain(std::iter::repeat_n(1, p.len())));
    }
    let mut input_ids = Tensor::<B, 2, Int>::from_data(TensorData::new(ids, [b, longest]), device);
    let mut attention_mask = Tensor::from_data(TensorData::new(mask, [b, longest]), device);
    let mut rng = config.sampling.map(|s| StdRng::seed_from_u64(s.seed));
    let mut cache = KvCache::new();
    let mut out = vec![Vec::new(); b];
    let mut done = vec![false; b];
    for _ in 0..config.max_new_tokens {
        let logits = model.next_logits(input_ids, attention_mask, &mut cache, hooks)?;
        let [_, t, vocab] = logits.dims();
        let last = logits.slice([0..b, t - 1..t, 0..vocab]).reshape([b, vocab]);
        let last: Vec<f32> = last
            .into_data()
            .convert::<f32>()
            .into_vec()
            .expect("converted");
        let mut next = Vec::with_capacity(b);
        for (row, logits) in last.chunks(vocab).enumerate() {
            if done[row] {
                next.push(config.pad_token);
                continue;
            }
            let token = match (config.sampling, rng.as_mut()) {
                (Some(s), Some(rng)) => sample(logits, s, rng),
                _ => argmax(logits),
            };
            out[row].push(token);
            done[row] = config.stop_tokens.contains(&token);
            next.push(token);
        }
        if done.iter().all(|&d| d) {
            break;
        }
        input_ids = Tensor::from_data(TensorData::new(next, [b, 1]), device);
        attention_mask = Tensor::from_data(TensorData::new(vec![1i64; b], [b, 1]), device);
    }
    Ok(out)
}

/// The most likely token (the first on ties, as torch's argmax).
fn argmax(logits: &[f32]) -> i64 {
    let mut best = 0;
    for (i, v) in logits.iter().enumerate() {
        if *v > logits[best] {
            best = i;
        }
    }
    best as i64
}

/// A token drawn from `softmax(logits / temperature)`, restricted to the top-p nucleus.
fn sample(logits: &[f32], s: Sampling, rng: &mut StdRng) -> i64 {
    let max = logits.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v));
    let mut probs: Vec<(usize, f64)> = logits
        .iter()
        .enumerate()
        .map(|(i, &v)| (i, (((v - max) / s.temperature.max(1e-6)) as f64).exp()))
        .collect();
    let sum: f64 = probs.iter().map(|p| p.1).sum();
    probs.sort_by(|a, b| b.1.total_cmp(&a.1));
    let mut kept = 0.0;
    let mut cut = probs.len();
    for (n, p) in probs.iter().enumerate() {
        kept += p.1 / sum;
        if kept >= s.top_p as f64 {
            cut = n + 1;
            break;
        }
    }
    probs.truncate(cut);
    let total: f64 = probs.iter().map(|p| p.1).sum();
    let mut target = rng.random::<f64>() * total;
    for (i, p) in &probs {
        target -= p;
        if target <= 0.0 {
            return *i as i64;
        }
    }
    probs.last().map_or(0, |p| p.0 as i64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn argmax_takes_the_first_maximum() {
        assert_eq!(argmax(&[0.5, 2.0, 2.0, -1.0]), 1);
    }

    #[test]
    fn top_p_keeps_only_the_nucleus() {
        // Probabilities ~ [0.64, 0.24, 0.09, 0.03]: top_p 0.5 keeps only token 0.
        let logits = [3.0, 2.0, 1.0, 0.0];
        let mut rng = StdRng::seed_from_u64(7);
        let s = Sampling {
            temperature: 1.0,
            top_p: 0.5,
            seed: 7,
        };
        assert!((0..50).all(|_| sample(&logits, s, &mut rng) == 0));
        // With the whole distribution, other tokens appear.
        let s = Sampling { top_p: 1.0, ..s };
        assert!((0..200).any(|_| sample(&logits, s, &mut rng) != 0));
    }
}
