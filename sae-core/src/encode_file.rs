//! Encoding a whole activation matrix in chunks: sparse latents, reconstruction and FVU on the
//! host, as `sae encode` writes them.

use crate::kernels::SaeBackend;
use burn::tensor::{Tensor, TensorData};

use crate::error::{Result, SaeError};
use crate::sae::{Sae, int_to_host, to_host};
use crate::tensor_file::HostTensor;

/// Latents and reconstruction of `N` tokens.
#[derive(Debug, Clone, PartialEq)]
pub struct Encoded {
    /// Latent values `[N, w]` (`w = k` for TopK; padded with zeros where tokens differ).
    pub latent_acts: HostTensor,
    /// Latent indices `[N, w]`, int64.
    pub latent_indices: HostTensor,
    /// Reconstruction `[N, d]`.
    pub sae_out: HostTensor,
    /// `sum((x - x_hat)^2) / sum((x - mean_0(x))^2)` over all `N` tokens.
    pub fvu: f32,
}

/// Flattens `[N, d]` or `[B, T, d]` float activations to `(N, d)`; errors on other ranks and on
/// a width other than `d_in`.
pub fn token_matrix(x: &HostTensor, d_in: usize) -> Result<(usize, usize)> {
    let (&d, lead) = x.shape.split_last().ok_or_else(|| {
        SaeError::InvalidConfig("the activations are a scalar, expected [N, d] or [B, T, d]".into())
    })?;
    if !(1..=2).contains(&lead.len()) {
        return Err(SaeError::InvalidConfig(format!(
            "activations of shape {:?}: expected [N, d] or [B, T, d]",
            x.shape
        )));
    }
    if d != d_in {
        return Err(SaeError::WidthMismatch {
            expected: d_in,
            got: d,
        });
    }
    Ok((lead.iter().product(), d))
}

/// Encodes and decodes every token of `x` (`[N, d]` or `[B, T, d]`), `chunk` tokens at a time;
/// `progress(done, total)` is called after each chunk.
pub fn encode_tokens<B: SaeBackend>(
    sae: &Sae<B>,
    x: &HostTensor,
    chunk: usize,
    device: &B::Device,
    mut progress: impl FnMut(usize, usize),
) -> Result<Encoded> {
    let (n, d) = token_matrix(x, sae.d_in())?;
    let values = x.to_f32();
    let mut parts = Vec::new();
    let mut sae_out = Vec::with_capacity(n * d);
    for start in (0..n).step_by(chunk.max(1)) {
        let rows = chunk.max(1).min(n - start);
        let data = TensorData::new(values[start * d..(start + rows) * d].to_vec(), [rows, d]);
        let latents = sae.encode(Tensor::from_data(data, device))?;
        sae_out.extend(to_host(sae.decode(&latents)));
        let width = latents.values.dims()[1];
        parts.push((width, to_host(latents.values), int_to_host(latents.indices)));
        progress(start + rows, n);
    }
    // Chunks of threshold or batch-top-k SAEs may differ in width: pad to the widest.
    let width = parts.iter().map(|p| p.0).max().unwrap_or(0);
    let mut acts = Vec::with_capacity(n * width);
    let mut idx = Vec::with_capacity(n * width);
    for (w, a, i) in parts {
        for (ra, ri) in a.chunks(w).zip(i.chunks(w)) {
            acts.extend(
                ra.iter()
                    .copied()
                    .chain(std::iter::repeat_n(0.0, width - w)),
            );
            idx.extend(ri.iter().copied().chain(std::iter::repeat_n(0, width - w)));
        }
    }
    Ok(Encoded {
        latent_acts: HostTensor::f32(vec![n, width], acts),
        latent_indices: HostTensor::i64(vec![n, width], idx),
        fvu: fvu(&values, &sae_out, d),
        sae_out: HostTensor::f32(vec![n, d], sae_out),
    })
}

/// Fraction of variance unexplained, accumulated in f64.
fn fvu(x: &[f32], x_hat: &[f32], d: usize) -> f32 {
    let n = x.len() / d;
    let mut mean = vec![0f64; d];
    for row in x.chunks(d) {
        mean.iter_mut()
            .zip(row)
            .for_each(|(m, v)| *m += *v as f64 / n as f64);
    }
    let total: f64 = x
        .chunks(d)
        .flat_map(|r| r.iter().zip(&mean).map(|(v, m)| (*v as f64 - m).powi(2)))
        .sum();
    let error: f64 = x
        .iter()
        .zip(x_hat)
        .map(|(a, b)| (*a as f64 - *b as f64).powi(2))
        .sum();
    (error / total) as f32
}
