//! Rotary position embeddings: the 1-D RoPE of decoder LMs, Qwen2-VL's multimodal M-RoPE, and
//! the axial 2-D RoPE of Qwen2-VL's vision tower, as `cos`/`sin` tables applied with
//! `x cos + rotate_half(x) sin`; and the f32 softmax of the attention scores that goes with
//! them.

use burn::tensor::activation::softmax;
use burn::tensor::backend::Backend;
use burn::tensor::{DType, Tensor, TensorData};

/// Rotary position embedding tables for one batch: `cos` and `sin`, `[batch, tokens, 1, head_dim]`
/// (applied to `[batch, tokens, heads, head_dim]`, before heads move forward: contiguous is fast).
pub(crate) struct Rope<B: Backend> {
    pub(crate) cos: Tensor<B, 4>,
    pub(crate) sin: Tensor<B, 4>,
}

/// `theta^(-2i/dim)` for `i < dim / 2`, in f32 as transformers computes it.
fn inverse_frequencies(theta: f64, dim: usize) -> Vec<f32> {
    (0..dim / 2)
        .map(|i| (1.0 / theta.powf((2 * i) as f64 / dim as f64)) as f32)
        .collect()
}

impl<B: Backend> Rope<B> {
    /// HF's default RoPE: `inv_freq_i = theta^(-2i/d)`, angles `pos x inv_freq` repeated twice.
    /// Positions are (temporal, height, width); with `mrope_section` (Qwen2-VL's M-RoPE) the
    /// first `s0` frequencies follow the temporal position, the next `s1` the height, the last
    /// `s2` the width; without it all three are equal and only the first is read.
    pub(crate) fn new(
        positions: &[[i64; 3]],
        mrope_section: Option<&[usize]>,
        (batch, tokens): (usize, usize),
        head_dim: usize,
        theta: f64,
        device: &B::Device,
    ) -> Self {
        let inv_freq = inverse_frequencies(theta, head_dim);
        let axis: Vec<usize> = match mrope_section {
            Some(sections) => sections
                .iter()
                .enumerate()
                .flat_map(|(axis, &n)| std::iter::repeat_n(axis, n))
                .collect(),
            None => vec![0; inv_freq.len()],
        };
        let angles: Vec<f32> = positions
            .iter()
            .flat_map(|p| inv_freq.iter().zip(&axis).map(|(f, &a)| p[a] as f32 * f))
            .collect();
        Self::from_half_angles(&angles, (batch, tokens), head_dim, device)
    }

    /// The vision tower's axial RoPE for patches at `(row, column)`: the first quarter of the
    /// frequencies (`theta^(-4i/head_dim)`) turn with the row, the second with the column, and
    /// the half repeats.
    pub(crate) fn axial(
        positions: &[[i64; 2]],
        head_dim: usize,
        theta: f64,
        device: &B::Device,
    ) -> Self {
        let inv_freq = inverse_frequencies(theta, head_dim / 2);
        let angles: Vec<f32> = positions
            .iter()
            .flat_map(|&[h, w]| {
                let row = inv_freq.iter().map(move |f| h as f32 * f);
                row.chain(inv_freq.iter().map(move |f| w as f32 * f))
            })
            .collect();
        Self::from_half_angles(&angles, (1, positions.len()), head_dim, device)
    }

    /// Tables from `head_dim / 2` angles per token, each used for both halves.
    fn from_half_angles(
        angles: &[f32],
        (batch, tokens): (usize, usize),
        head_dim: usize,
        device: &B::Device,
    ) -> Self {
        let mut cos = Vec::with_capacity(angles.len() * 2);
        let mut sin = Vec::with_capacity(angles.len() * 2);
        for token in angles.chunks(head_dim / 2) {
            for _ in 0..2 {
                cos.extend(token.iter().map(|a| a.cos()));
                sin.extend(token.iter().map(|a| a.sin()));
            }
        }
        let table = |v: Vec<f32>| {
            Tensor::from_data(TensorData::new(v, [batch, tokens, 1, head_dim]), device)
        };
        Rope {
            cos: table(cos),
            sin: table(sin),
        }
    }

    /// The tables in the compute dtype `dtype` (they are made in f32).
    pub(crate) fn cast(self, dtype: DType) -> Self {
        if dtype == DType::F32 {
            return self;
        }
        Rope {
            cos: self.cos.cast(dtype),
            sin: self.sin.cast(dtype),
        }
    }

    /// The tables repeated for `heads` heads, `[batch, tokens, heads, head_dim]`: the products in
    /// [`apply`](Self::apply) are then elementwise on equal shapes (broadcasting is slow on the
    /// CPU backends), and each layer reuses them.
    pub(crate) fn for_heads(&self, heads: usize) -> Self {
        Rope {
            cos: self.cos.clone().repeat_dim(2, heads),
            sin: self.sin.clone().repeat_dim(2, heads),
        }
    }

    /// `x cos + rotate_half(x) sin`, with `rotate_half([a, b]) = [-b, a]`.
    pub(crate) fn apply(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        let [b, t, h, d] = x.dims();
        let first = x.clone().slice([0..b, 0..t, 0..h, 0..d / 2]);
        let second = x.clone().slice([0..b, 0..t, 0..h, d / 2..d]);
        let rotated = Tensor::cat(vec![second.neg(), first], 3);
        x * self.cos.clone() + rotated * self.sin.clone()
    }
}

/// Softmax over `dim` computed in f32 whatever the compute dtype, as transformers does, and
/// cast back to the scores' dtype.
pub(crate) fn softmax_in_f32<B: Backend, const D: usize>(
    scores: Tensor<B, D>,
    dim: usize,
) -> Tensor<B, D> {
    let dtype = scores.dtype();
    softmax(scores.cast(DType::F32), dim).cast(dtype)
}
