//! The vision tower of Qwen2-VL and Qwen2.5-VL: a patch embedding of `temporal x 14 x 14`
//! patches, `depth` pre-norm transformer blocks with axial 2-D RoPE attending within each image
//! (Qwen2.5-VL: within windows, except the `fullatt_block_indexes` blocks), and the merger that
//! turns every `2 x 2` patches into one language-model token.
//!
//! Hooks: `model.visual.blocks.N` (and its `.attn`, `.mlp`) and `model.visual.merger`, each as
//! `[1, patches, width]`. As in transformers, Qwen2.5-VL's block and merger outputs are in
//! window order; the tokens go back to image order after the merger.

use burn::module::Module;
use burn::nn::{LayerNorm, Linear, RmsNorm};
use burn::tensor::activation::{gelu, sigmoid, silu};
use burn::tensor::backend::Backend;
use burn::tensor::{DType, Int, Tensor, TensorData};

use super::config::VisionConfig;
use crate::error::Result;
use crate::mask;
use crate::rope::{Rope, softmax_in_f32};
use crate::tap::{Stopped, Tap, linear};
use crate::weights::Weights;

/// The module path of the tower in memory.
pub(crate) const PREFIX: &str = "model.visual";

/// LayerNorm (Qwen2-VL) or RMSNorm (Qwen2.5-VL).
#[derive(Module, Debug)]
pub enum Norm<B: Backend> {
    /// With bias.
    Layer(LayerNorm<B>),
    /// Without.
    Rms(RmsNorm<B>),
}

impl<B: Backend> Norm<B> {
    fn load(w: &Weights, name: &str, c: &VisionConfig, device: &B::Device) -> Result<Self> {
        Ok(if c.rms_norm {
            Norm::Rms(w.rms_norm(name, c.embed_dim, 1e-6, device)?)
        } else {
            Norm::Layer(w.layer_norm(name, c.embed_dim, 1e-6, device)?)
        })
    }

    fn forward<const D: usize>(&self, x: Tensor<B, D>) -> Tensor<B, D> {
        match self {
            Norm::Layer(n) => n.forward(x),
            Norm::Rms(n) => n.forward(x),
        }
    }
}

/// The block MLP: `fc2(act(fc1 x))` (Qwen2-VL), or gated, `down(act(gate x) * up x)`
/// (Qwen2.5-VL).
#[derive(Module, Debug)]
pub struct VisionMlp<B: Backend> {
    /// `fc1` or `gate_proj`.
    input: Linear<B>,
    /// `up_proj` when gated.
    up: Option<Linear<B>>,
    /// `fc2` or `down_proj`.
    output: Linear<B>,
}

/// The activation functions the vision configs name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activation {
    /// `x sigmoid(1.702 x)`.
    QuickGelu,
    /// `x sigmoid(x)`.
    Silu,
    /// The exact (erf) GELU.
    Gelu,
}

impl Activation {
    /// The activation called `name` in a config.
    pub fn from_name(name: &str) -> Option<Self> {
        match name {
            "quick_gelu" => Some(Activation::QuickGelu),
            "silu" | "swish" => Some(Activation::Silu),
            "gelu" => Some(Activation::Gelu),
            _ => None,
        }
    }

    fn apply<B: Backend, const D: usize>(self, x: Tensor<B, D>) -> Tensor<B, D> {
        match self {
            Activation::QuickGelu => x.clone() * sigmoid(x.mul_scalar(1.702)),
            Activation::Silu => silu(x),
            Activation::Gelu => gelu(x),
        }
    }
}

impl<B: Backend> VisionMlp<B> {
    fn forward(&self, x: Tensor<B, 3>, act: Activation) -> Tensor<B, 3> {
        let hidden = act.apply(linear(&self.input, x.clone()));
        let hidden = match &self.up {
            Some(up) => hidden * linear(up, x),
            None => hidden,
        };
        linear(&self.output, hidden)
    }
}

/// One pre-norm block: `x + attn(norm1 x)`, then `x + mlp(norm2 x)`.
#[derive(Module, Debug)]
pub struct VisionBlock<B: Backend> {
    norm1: Norm<B>,
    qkv: Linear<B>,
    proj: Linear<B>,
    norm2: Norm<B>,
    mlp: VisionMlp<B>,
}

/// What every block reads besides its input: the RoPE tables and the two attention masks.
struct BlockContext<B: Backend> {
    rope: Rope<B>,
    /// Additive `[1, patches, patches]` masks: within each image, and within each window.
    full: Tensor<B, 3>,
    windowed: Option<Tensor<B, 3>>,
}

impl<B: Backend> VisionBlock<B> {
    /// Non-causal multi-head attention of the patches with the same segment in `mask`.
    fn attention(
        &self,
        x: Tensor<B, 3>,
        rope: &Rope<B>,
        mask: &Tensor<B, 3>,
        heads: usize,
    ) -> Tensor<B, 3> {
        let [_, n, e] = x.dims();
        let d = e / heads;
        let qkv = linear(&self.qkv, x).reshape([1, n, 3, heads, d]);
        let part = |i: usize| {
            qkv.clone()
                .slice([0..1, 0..n, i..i + 1, 0..heads, 0..d])
                .reshape([1, n, heads, d])
        };
        let (q, k, v) = (rope.apply(part(0)), rope.apply(part(1)), part(2));
        let heads_first = |y: Tensor<B, 4>| y.swap_dims(1, 2).reshape([heads, n, d]);
        let (q, k, v) = (heads_first(q), heads_first(k), heads_first(v));
        let scores = q
            .matmul(k.swap_dims(1, 2))
            .mul_scalar((d as f64).powf(-0.5))
            + mask.clone();
        let probs = softmax_in_f32(scores, 2);
        let out = probs.matmul(v).swap_dims(0, 1).reshape([1, n, e]);
        linear(&self.proj, out)
    }
}

/// The vision tower.
#[derive(Module, Debug)]
pub struct VisionTower<B: Backend> {
    /// The Conv3d patch embedding as a `[C x T x P x P, embed]` matrix (kernel = stride).
    patch_embed: Linear<B>,
    blocks: Vec<VisionBlock<B>>,
    merger_norm: Norm<B>,
    merger_fc1: Linear<B>,
    merger_fc2: Linear<B>,
    #[module(skip)]
    config: VisionConfig,
}

impl<B: Backend> VisionTower<B> {
    /// Loads the tower from tensors stored under `stored` (`visual` or `model.visual`).
    pub fn load(c: VisionConfig, w: &Weights, stored: &str, device: &B::Device) -> Result<Self> {
        let e = c.embed_dim;
        let patch_embed = w.flattened_linear(
            &format!("{stored}.patch_embed.proj"),
            &[
                e,
                c.in_channels,
                c.temporal_patch_size,
                c.patch_size,
                c.patch_size,
            ],
            false,
            device,
        )?;
        let blocks = (0..c.depth)
            .map(|i| {
                let p = format!("{stored}.blocks.{i}");
                let lin = |name: &str, d_in, d_out| {
                    w.linear(&format!("{p}.{name}"), d_in, d_out, true, device)
                };
                let inter = c.intermediate_size;
                let mlp = if c.gated_mlp {
                    VisionMlp {
                        input: lin("mlp.gate_proj", e, inter)?,
                        up: Some(lin("mlp.up_proj", e, inter)?),
                        output: lin("mlp.down_proj", inter, e)?,
                    }
                } else {
                    VisionMlp {
                        input: lin("mlp.fc1", e, inter)?,
                        up: None,
                        output: lin("mlp.fc2", inter, e)?,
                    }
                };
                Ok(VisionBlock {
                    norm1: Norm::load(w, &format!("{p}.norm1"), &c, device)?,
                    qkv: lin("attn.qkv", e, 3 * e)?,
                    proj: lin("attn.proj", e, e)?,
                    norm2: Norm::load(w, &format!("{p}.norm2"), &c, device)?,
                    mlp,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let merged = e * c.spatial_merge_size * c.spatial_merge_size;
        Ok(VisionTower {
            patch_embed,
            blocks,
            merger_norm: Norm::load(w, &format!("{stored}.merger.ln_q"), &c, device)?,
            merger_fc1: w.linear(
                &format!("{stored}.merger.mlp.0"),
                merged,
                merged,
                true,
                device,
            )?,
            merger_fc2: w.linear(
                &format!("{stored}.merger.mlp.2"),
                merged,
                c.out_dim,
                true,
                device,
            )?,
            config: c,
        })
    }

    /// Language-model tokens `[sum(t h w) / merge^2, out_dim]` of the patches `pixel_values`
    /// (`[sum(t h w), C T P P]`, images one after the other) with grids `grids` (t, h, w),
    /// which [`check`](VisionConfig::check) has accepted.
    pub(crate) fn forward(
        &self,
        pixel_values: Tensor<B, 2>,
        grids: &[[usize; 3]],
        tap: &mut Tap<B>,
    ) -> std::result::Result<Tensor<B, 2>, Stopped> {
        let c = &self.config;
        let [n, _] = pixel_values.dims();
        let device = pixel_values.device();
        let unit = c.spatial_merge_size * c.spatial_merge_size;
        let order = match &c.window {
            Some(w) => window_order(
                grids,
                c.spatial_merge_size,
                w.window_size / c.spatial_merge_size / c.patch_size,
            ),
            None => Order::identity(n / unit),
        };
        let patch_order: Vec<usize> = order
            .units
            .iter()
            .flat_map(|&u| u * unit..(u + 1) * unit)
            .collect();
        let permute = |positions: Vec<[i64; 2]>| {
            patch_order
                .iter()
                .map(|&i| positions[i])
                .collect::<Vec<_>>()
        };
        let dtype = self.patch_embed.weight.val().dtype();
        let rope = Rope::axial(
            &permute(vision_positions(grids, c.spatial_merge_size)),
            c.embed_dim / c.num_heads,
            c.rope_theta,
            &device,
        )
        .cast(dtype);
        let ctx = BlockContext {
            rope: rope.for_heads(c.num_heads),
            full: segment_mask(&image_segments(grids), n, dtype, &device),
            windowed: c
                .window
                .as_ref()
                .map(|_| segment_mask(&order.segments, n, dtype, &device)),
        };

        let x = linear(&self.patch_embed, pixel_values.cast(dtype).unsqueeze_dim(0));
        let mut x = select_rows(x, &patch_order);
        let act = c.activation;
        for (i, block) in self.blocks.iter().enumerate() {
            let p = format!("{PREFIX}.blocks.{i}");
            let full_attention = c
                .window
                .as_ref()
                .is_none_or(|w| w.fullatt_block_indexes.contains(&i));
            let mask = match (&ctx.windowed, full_attention) {
                (Some(windowed), false) => windowed,
                _ => &ctx.full,
            };
            let attn =
                block.attention(block.norm1.forward(x.clone()), &ctx.rope, mask, c.num_heads);
            x = x + tap.call(&format!("{p}.attn"), attn)?;
            let mlp = block.mlp.forward(block.norm2.forward(x.clone()), act);
            x = x + tap.call(&format!("{p}.mlp"), mlp)?;
            x = tap.call(&p, x)?;
        }
        let merged = self
            .merger_norm
            .forward(x)
            .reshape([1, n / unit, c.embed_dim * unit]);
        let merged = linear(&self.merger_fc2, gelu(linear(&self.merger_fc1, merged)));
        let merged = tap.call(&format!("{PREFIX}.merger"), merged)?;
        // Back to image order (unit `order.units[j]` is at row j), after the merger module as
        // in transformers.
        let mut inverse = vec![0usize; order.units.len()];
        for (row, &u) in order.units.iter().enumerate() {
            inverse[u] = row;
        }
        let merged = select_rows(merged, &inverse);
        Ok(merged.squeeze_dim(0))
    }
}

/// Rows `rows` of a `[1, n, d]` tensor, in that order.
fn select_rows<B: Backend>(x: Tensor<B, 3>, rows: &[usize]) -> Tensor<B, 3> {
    if rows.iter().enumerate().all(|(i, &r)| i == r) {
        return x;
    }
    let device = x.device();
    let idx: Vec<i64> = rows.iter().map(|&r| r as i64).collect();
    let idx = Tensor::<B, 1, Int>::from_data(TensorData::new(idx, [rows.len()]), &device);
    x.select(1, idx)
}

/// The (row, column) of every patch in the processor's order: images one after the other,
/// frames one after the other, `merge x merge` blocks row by row, patches within a block row by
/// row.
fn vision_positions(grids: &[[usize; 3]], merge: usize) -> Vec<[i64; 2]> {
    let mut out = Vec::new();
    for &[t, h, w] in grids {
        for _ in 0..t {
            for bh in 0..h / merge {
                for bw in 0..w / merge {
                    for mh in 0..merge {
                        for mw in 0..merge {
                            out.push([(bh * merge + mh) as i64, (bw * merge + mw) as i64]);
                        }
                    }
                }
            }
        }
    }
    out
}

/// `[start, end)` patch ranges of each frame of each image.
fn image_segments(grids: &[[usize; 3]]) -> Vec<(usize, usize)> {
    let mut start = 0;
    let mut out = Vec::new();
    for &[t, h, w] in grids {
        for _ in 0..t {
            out.push((start, start + h * w));
            start += h * w;
        }
    }
    out
}

/// The order merge units are processed in and the attention segments over that order.
struct Order {
    /// Merge-unit indices (`merge^2` consecutive patches each), in processing order.
    units: Vec<usize>,
    /// `[start, end)` patch ranges attending together (windows).
    segments: Vec<(usize, usize)>,
}

impl Order {
    fn identity(units: usize) -> Self {
        Order {
            units: (0..units).collect(),
            segments: Vec::new(),
        }
    }
}

/// Qwen2.5-VL's windows: each frame's grid of merge units cut into `size x size` windows (the
/// last ones smaller), windows row by row, units within a window row by row.
fn window_order(grids: &[[usize; 3]], merge: usize, size: usize) -> Order {
    let unit = merge * merge;
    let size = size.max(1);
    let (mut units, mut segments) = (Vec::new(), Vec::new());
    let (mut offset, mut start) = (0usize, 0usize);
    for &[t, h, w] in grids {
        let (lh, lw) = (h / merge, w / merge);
        for frame in 0..t {
            for wh in 0..lh.div_ceil(size) {
                for ww in 0..lw.div_ceil(size) {
                    let before = units.len();
                    for r in wh * size..((wh + 1) * size).min(lh) {
                        for col in ww * size..((ww + 1) * size).min(lw) {
                            units.push(offset + frame * lh * lw + r * lw + col);
                        }
                    }
                    let len = (units.len() - before) * unit;
                    segments.push((start, start + len));
                    start += len;
                }
            }
        }
        offset += t * lh * lw;
    }
    Order { units, segments }
}

/// The additive mask letting each patch attend to the patches of its own segment only: 0 inside,
/// [`mask::hidden`] elsewhere.
fn segment_mask<B: Backend>(
    segments: &[(usize, usize)],
    n: usize,
    dtype: DType,
    device: &B::Device,
) -> Tensor<B, 3> {
    let mut values = vec![mask::hidden::<B>(device, dtype); n * n];
    for &(start, end) in segments {
        for q in start..end {
            values[q * n + start..q * n + end].fill(0.0);
        }
    }
    Tensor::<B, 3>::from_data(TensorData::new(values, [1, n, n]), device).cast(dtype)
}

#[cfg(test)]
mod tests {
    use super::*;

    // transformers' get_vision_window_index for one 1 x 6 x 8 image (merge 2, window 56, patch
    // 14: 2 x 2 units per window) over a 3 x 4 unit grid, worked by hand: windows
    // [0 1 4 5] [2 3 6 7] [8 9] [10 11], so cu_window_seqlens [0 16 32 40 48].
    #[test]
    fn windows_follow_transformers() {
        let order = window_order(&[[1, 6, 8]], 2, 2);
        assert_eq!(order.units, vec![0, 1, 4, 5, 2, 3, 6, 7, 8, 9, 10, 11]);
        assert_eq!(order.segments, vec![(0, 16), (16, 32), (32, 40), (40, 48)]);
    }

    // get_vision_position_ids for a 1 x 2 x 4 grid with merge 2: blocks (0,0) then (0,1).
    #[test]
    fn positions_are_block_major() {
        let p = vision_positions(&[[1, 2, 4]], 2);
        let expected = [
            [0, 0],
            [0, 1],
            [1, 0],
            [1, 1],
            [0, 2],
            [0, 3],
            [1, 2],
            [1, 3],
        ];
        assert_eq!(p, expected);
    }
}
