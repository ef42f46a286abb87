//! The SigLIP vision tower as LLaVA-OneVision reads it: each tile cut into `patch x patch`
//! patches (a convolution with kernel = stride, here a matrix product), learned position
//! embeddings added, then pre-norm encoder layers (LayerNorm, attention with biases, an MLP).
//! LLaVA takes the hidden states it selects (`vision_feature_layer`) before the tower's
//! `post_layernorm`, so neither that nor the pooling head is loaded, and no layer after the
//! deepest selected one is loaded or run.
//!
//! Hooks: `model.vision_tower.encoder.layers.N` and its `.self_attn` and `.mlp`, each as
//! `[tiles, patches, width]`.

use burn::module::Module;
use burn::nn::{Embedding, LayerNorm, Linear};
use burn::tensor::Tensor;
use burn::tensor::activation::{gelu, gelu_approximate};
use burn::tensor::backend::Backend;
use sae_core::{HookKind, HookPoint};

use super::config::SiglipConfig;
use crate::error::Result;
use crate::rope::softmax_in_f32;
use crate::tap::{Stopped, Tap, linear};
use crate::weights::Weights;

/// The module path of the tower in memory.
const PREFIX: &str = "model.vision_tower";

/// The activation functions the configs name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activation {
    /// The exact (erf) GELU, `gelu`.
    Gelu,
    /// The tanh approximation, `gelu_pytorch_tanh`.
    GeluTanh,
}

impl Activation {
    /// The activation called `name` in a config.
    pub fn from_name(name: &str) -> Option<Self> {
        match name {
            "gelu" => Some(Activation::Gelu),
            "gelu_pytorch_tanh" => Some(Activation::GeluTanh),
            _ => None,
        }
    }

    pub(crate) fn apply<B: Backend, const D: usize>(self, x: Tensor<B, D>) -> Tensor<B, D> {
        match self {
            Activation::Gelu => gelu(x),
            Activation::GeluTanh => gelu_approximate(x),
        }
    }
}

/// Multi-head attention over a tile's patches, no mask.
#[derive(Module, Debug)]
pub struct SiglipAttention<B: Backend> {
    q_proj: Linear<B>,
    k_proj: Linear<B>,
    v_proj: Linear<B>,
    out_proj: Linear<B>,
    #[module(skip)]
    heads: usize,
}

impl<B: Backend> SiglipAttention<B> {
    fn forward(&self, x: Tensor<B, 3>) -> Tensor<B, 3> {
        let [n, s, e] = x.dims();
        let (h, d) = (self.heads, e / self.heads);
        let heads_first = |y: Tensor<B, 3>| {
            y.reshape([n, s, h, d])
                .swap_dims(1, 2)
                .reshape([n * h, s, d])
        };
        let q = heads_first(linear(&self.q_proj, x.clone()));
        let k = heads_first(linear(&self.k_proj, x.clone()));
        let v = heads_first(linear(&self.v_proj, x));
        let scores = q
            .matmul(k.swap_dims(1, 2))
            .mul_scalar((d as f64).powf(-0.5));
        let probs = softmax_in_f32(scores, 2);
        let out = probs
            .matmul(v)
            .reshape([n, h, s, d])
            .swap_dims(1, 2)
            .reshape([n, s, e]);
        linear(&self.out_proj, out)
    }
}

/// The MLP: `fc2(act(fc1 x))`.
#[derive(Module, Debug)]
pub struct SiglipMlp<B: Backend> {
    fc1: Linear<B>,
    fc2: Linear<B>,
    #[module(skip)]
    activation: Activation,
}

impl<B: Backend> SiglipMlp<B> {
    fn forward(&self, x: Tensor<B, 3>) -> Tensor<B, 3> {
        linear(&self.fc2, self.activation.apply(linear(&self.fc1, x)))
    }
}

/// One pre-norm encoder layer: `x + attn(norm1 x)`, then `x + mlp(norm2 x)`.
#[derive(Module, Debug)]
pub struct SiglipEncoderLayer<B: Backend> {
    layer_norm1: LayerNorm<B>,
    self_attn: SiglipAttention<B>,
    layer_norm2: LayerNorm<B>,
    mlp: SiglipMlp<B>,
}

impl<B: Backend> SiglipEncoderLayer<B> {
    fn load(c: &SiglipConfig, w: &Weights, p: &str, device: &B::Device) -> Result<Self> {
        let e = c.hidden_size;
        let lin =
            |name: &str, d_in, d_out| w.linear(&format!("{p}.{name}"), d_in, d_out, true, device);
        let norm = |name: &str| w.layer_norm(&format!("{p}.{name}"), e, c.layer_norm_eps, device);
        Ok(SiglipEncoderLayer {
            layer_norm1: norm("layer_norm1")?,
            self_attn: SiglipAttention {
                q_proj: lin("self_attn.q_proj", e, e)?,
                k_proj: lin("self_attn.k_proj", e, e)?,
                v_proj: lin("self_attn.v_proj", e, e)?,
                out_proj: lin("self_attn.out_proj", e, e)?,
                heads: c.num_attention_heads,
            },
            layer_norm2: norm("layer_norm2")?,
            mlp: SiglipMlp {
                fc1: lin("mlp.fc1", e, c.intermediate_size)?,
                fc2: lin("mlp.fc2", c.intermediate_size, e)?,
                activation: c.activation,
            },
        })
    }

    fn forward(
        &self,
        x: Tensor<B, 3>,
        tap: &mut Tap<B>,
        prefix: &str,
    ) -> Result<Tensor<B, 3>, Stopped> {
        let attn = self.self_attn.forward(self.layer_norm1.forward(x.clone()));
        let x = x + tap.call(&format!("{prefix}.self_attn"), attn)?;
        let mlp = self.mlp.forward(self.layer_norm2.forward(x.clone()));
        let x = x + tap.call(&format!("{prefix}.mlp"), mlp)?;
        tap.call(prefix, x)
    }
}

/// The vision tower, as far as the selected hidden states need it.
#[derive(Module, Debug)]
pub struct SiglipVisionTower<B: Backend> {
    /// The Conv2d patch embedding as a `[C x P x P, width]` matrix (kernel = stride), with bias.
    patch_embedding: Linear<B>,
    position_embedding: Embedding<B>,
    layers: Vec<SiglipEncoderLayer<B>>,
    #[module(skip)]
    config: SiglipConfig,
    /// Indices of the hidden states returned, concatenated in this order (0: the embeddings).
    #[module(skip)]
    selected: Vec<usize>,
}

impl SiglipConfig {
    /// The hook points of a tower of `layers` layers, in the order the forward pass calls them.
    pub fn hook_points(&self, layers: usize) -> Vec<HookPoint> {
        let (e, kind) = (self.hidden_size, HookKind::Vision);
        (0..layers)
            .flat_map(|i| {
                let p = format!("{PREFIX}.encoder.layers.{i}");
                [
                    HookPoint::new(format!("{p}.self_attn"), e, kind),
                    HookPoint::new(format!("{p}.mlp"), e, kind),
                    HookPoint::new(p, e, kind),
                ]
            })
            .collect()
    }
}

impl<B: Backend> SiglipVisionTower<B> {
    /// Loads the tower from tensors stored under `stored` (`vision_tower`,
    /// `vision_tower.vision_model`, `model.vision_tower`), up to the deepest of the hidden
    /// states `selected`.
    pub fn load(
        c: SiglipConfig,
        selected: Vec<usize>,
        w: &Weights,
        stored: &str,
        device: &B::Device,
    ) -> Result<Self> {
        let (e, p) = (c.hidden_size, c.patch_size);
        let patch_embedding = w.flattened_linear(
            &format!("{stored}.embeddings.patch_embedding"),
            &[e, c.num_channels, p, p],
            true,
            device,
        )?;
        let depth = selected.iter().copied().max().unwrap_or(0);
        let layers = (0..depth)
            .map(|i| {
                SiglipEncoderLayer::load(&c, w, &format!("{stored}.encoder.layers.{i}"), device)
            })
            .collect::<Result<Vec<_>>>()?;
        let side = c.patches_per_side();
        Ok(SiglipVisionTower {
            patch_embedding,
            position_embedding: w.embedding(
                &format!("{stored}.embeddings.position_embedding"),
                side * side,
                e,
                device,
            )?,
            layers,
            config: c,
            selected,
        })
    }

    /// The selected hidden states `[tiles, patches, width x selected]` of `pixel_values`
    /// (`[tiles, C, image_size, image_size]`).
    pub(crate) fn forward(
        &self,
        pixel_values: Tensor<B, 4>,
        tap: &mut Tap<B>,
    ) -> Result<Tensor<B, 3>, Stopped> {
        let c = &self.config;
        let (p, side) = (c.patch_size, c.patches_per_side());
        let [n, channels, _, _] = pixel_values.dims();
        let dtype = self.patch_embedding.weight.val().dtype();
        let read = side * p;
        // Each patch's pixels in the convolution kernel's (channel, row, column) order.
        let patches = pixel_values
            .slice([0..n, 0..channels, 0..read, 0..read])
            .cast(dtype)
            .reshape([n, channels, side, p, side, p])
            .permute([0, 2, 4, 1, 3, 5])
            .reshape([n, side * side, channels * p * p]);
        let mut x = linear(&self.patch_embedding, patches)
            + self.position_embedding.weight.val().unsqueeze_dim(0);
        let mut states = vec![None; self.layers.len() + 1];
        let mut keep = |i: usize, x: &Tensor<B, 3>| {
            if self.selected.contains(&i) {
                states[i] = Some(x.clone());
            }
        };
        keep(0, &x);
        for (i, layer) in self.layers.iter().enumerate() {
            x = layer.forward(x, tap, &format!("{PREFIX}.encoder.layers.{i}"))?;
            keep(i + 1, &x);
        }
        let selected = self
            .selected
            .iter()
            .map(|&i| states[i].clone().expect("every selected state was kept"))
            .collect();
        Ok(Tensor::cat(selected, 2))
    }
}
