//! `SaeConfig`: one serde struct for every SAE of the family (TopK in its SAE Made Easy and
//! sparsify variants, BatchTopK, JumpReLU, ReLU + L1).

use serde::{Deserialize, Serialize};

use crate::error::{Result, SaeError};
use crate::hooks::HookPoint;

/// How latents are chosen from the encoder's pre-activations.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Architecture {
    /// The `k` largest latents of each token.
    #[default]
    TopK,
    /// The `k x tokens` largest latents of the whole batch (tokens may use more or fewer than `k`).
    BatchTopK,
    /// Latents above a learned per-latent threshold.
    JumpRelu,
    /// Every positive latent, trained with an L1 penalty.
    Relu,
}

/// Configuration of one sparse autoencoder; `d_in` comes from the hook point it attaches to.
///
/// The defaults are SAE Made Easy's `TopKSaeConfig`: TopK, `k = 32`, `expansion_factor = 32`, no
/// ReLU, no encoder bias, no decoder normalisation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SaeConfig {
    /// How latents are selected.
    pub architecture: Architecture,
    /// Active latents per token (TopK, BatchTopK).
    pub k: usize,
    /// Dictionary size; 0 means `expansion_factor x d_in`.
    pub num_latents: usize,
    /// Used when `num_latents` is 0.
    pub expansion_factor: usize,
    /// Apply ReLU to the pre-activations (sparsify, SAELens); SAE Made Easy does not.
    pub relu: bool,
    /// The encoder has a bias (sparsify, SAELens); SAE Made Easy's has none.
    pub encoder_bias: bool,
    /// Keep decoder rows at unit norm (sparsify's `normalize_decoder`).
    pub normalize_decoder: bool,
    /// Also reconstruct from the top `4k` latents and report that FVU (sparsify's Multi-TopK).
    pub multi_topk: bool,
    /// Latents in the AuxK loss; `None` means `d_in / 2` as in sparsify.
    pub aux_k: Option<usize>,
    /// Weight of the AuxK loss in the total loss.
    pub aux_k_alpha: f32,
    /// A latent that has not fired for this many tokens counts as dead.
    pub dead_tokens_threshold: u64,
    /// Weight of the L1 penalty (ReLU architecture).
    pub l1_coefficient: f32,
    /// Initial threshold of every latent (JumpReLU).
    pub jumprelu_init_threshold: f32,
    /// Width of the rectangle kernel of the thresholds' straight-through gradient (JumpReLU,
    /// SAELens' `jumprelu_bandwidth`).
    pub jumprelu_bandwidth: f32,
    /// Weight of the L0 penalty, the mean number of active latents per token (JumpReLU,
    /// SAELens' `l0_coefficient`).
    pub l0_coefficient: f32,
}

impl Default for SaeConfig {
    fn default() -> Self {
        SaeConfig {
            architecture: Architecture::TopK,
            k: 32,
            num_latents: 0,
            expansion_factor: 32,
            relu: false,
            encoder_bias: false,
            normalize_decoder: false,
            multi_topk: false,
            aux_k: None,
            aux_k_alpha: 1.0 / 32.0,
            dead_tokens_threshold: 10_000_000,
            l1_coefficient: 0.0,
            jumprelu_init_threshold: 0.001,
            jumprelu_bandwidth: 0.05,
            l0_coefficient: 1e-3,
        }
    }
}

impl SaeConfig {
    /// SAE Made Easy's `TopKSaeConfig(k, num_latents)`: no ReLU, no encoder bias.
    pub fn topk(k: usize, num_latents: usize) -> Self {
        SaeConfig {
            k,
            num_latents,
            ..Self::default()
        }
    }

    /// EleutherAI sparsify's `SparseCoderConfig(num_latents, k)`: ReLU, encoder bias, unit-norm
    /// decoder.
    pub fn sparsify_topk(k: usize, num_latents: usize) -> Self {
        SaeConfig {
            k,
            num_latents,
            relu: true,
            encoder_bias: true,
            normalize_decoder: true,
            ..Self::default()
        }
    }

    /// BatchTopK with ReLU and encoder bias: `k` latents per token on average over a batch.
    pub fn batch_topk(k: usize, num_latents: usize) -> Self {
        SaeConfig {
            architecture: Architecture::BatchTopK,
            ..Self::sparsify_topk(k, num_latents)
        }
    }

    /// JumpReLU with encoder bias and a per-latent threshold.
    pub fn jumprelu(num_latents: usize) -> Self {
        SaeConfig {
            architecture: Architecture::JumpRelu,
            num_latents,
            encoder_bias: true,
            ..Self::default()
        }
    }

    /// The classic ReLU SAE with an L1 sparsity penalty.
    pub fn relu_l1(num_latents: usize, l1_coefficient: f32) -> Self {
        SaeConfig {
            architecture: Architecture::Relu,
            num_latents,
            relu: true,
            encoder_bias: true,
            l1_coefficient,
            ..Self::default()
        }
    }

    /// This configuration with `num_latents` fixed for `point`: SAE Made Easy sizes the
    /// dictionary from a linear layer's input width (`in_features`), else the hook's width.
    pub fn sized_for(&self, point: &HookPoint) -> SaeConfig {
        SaeConfig {
            num_latents: self.latents_for(point.in_features.unwrap_or(point.width)),
            ..self.clone()
        }
    }

    /// The dictionary size for an input of width `d_in`.
    pub fn latents_for(&self, d_in: usize) -> usize {
        if self.num_latents == 0 {
            self.expansion_factor.saturating_mul(d_in)
        } else {
            self.num_latents
        }
    }

    /// True for SAE Made Easy's exact math (what a `TOPK_SAE` PEFT adapter can express).
    pub fn is_sae_made_easy(&self) -> bool {
        self.architecture == Architecture::TopK && !self.relu && !self.encoder_bias
    }

    /// Checks the configuration against an input width.
    pub fn validate(&self, d_in: usize) -> Result<()> {
        let latents = self.latents_for(d_in);
        let bad = |msg: String| Err(SaeError::InvalidConfig(msg));
        if d_in == 0 {
            return bad("d_in must be positive".into());
        }
        if latents == 0 {
            return bad("num_latents and expansion_factor are both 0".into());
        }
        let needs_k = matches!(
            self.architecture,
            Architecture::TopK | Architecture::BatchTopK
        );
        if needs_k && (self.k == 0 || self.k > latents) {
            return bad(format!("k = {} must be in 1..={latents}", self.k));
        }
        if self.multi_topk && 4 * self.k > latents {
            return bad(format!(
                "multi_topk needs 4k = {} <= num_latents = {latents}",
                4 * self.k
            ));
        }
        if self.architecture == Architecture::JumpRelu && !self.encoder_bias {
            return bad("JumpReLU needs an encoder bias".into());
        }
        Ok(())
    }
}
