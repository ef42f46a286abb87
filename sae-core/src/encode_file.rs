//! Encoding a whole activation matrix in chunks: sparse latents, reconstruction and FVU on the
//! host, as `sae encode` writes them.

use crate::kernels::SaeBackend;
use burn::tensor::{Tensor, TensorData};

use crate::config::Architecture;
use crate::error::{Result, SaeError};
use crate::host::{int_to_host, to_host};
use crate::sae::Sae;
use crate::tensor_file::{HostData, HostTensor};

/// Latents and reconstruction of `N` tokens.
#[derive(Debug, Clone, PartialEq)]
pub struct Encoded {
    /// Latent values `[N, w]` (`w = k` for TopK; padded with zeros where tokens differ).
    pub latent_acts: HostTensor,
    /// Latent indices `[N, w]`, int64; `-1` marks an empty slot (a token with fewer active
    /// latents than the widest: BatchTopK, JumpReLU and ReLU SAEs).
    pub latent_indices: HostTensor,
    /// Reconstruction `[N, d]`.
    pub sae_out: HostTensor,
    /// `sum((x - x_hat)^2) / sum((x - mean_0(x))^2)` over all `N` tokens.
    pub fvu: f32,
}

/// Flattens `[N, d]` or `[B, T, d]` float activations to `(N, d)`; errors on other ranks, on
/// integers, on no tokens and on a width other than `d_in`.
pub fn token_matrix(x: &HostTensor, d_in: usize) -> Result<(usize, usize)> {
    let invalid = |why: String| Err(SaeError::InvalidActivations(why));
    let Some((&d, lead)) = x
        .shape
        .split_last()
        .filter(|(_, lead)| (1..=2).contains(&lead.len()))
    else {
        return invalid(format!("shape {:?}, expected [N, d] or [B, T, d]", x.shape));
    };
    if matches!(x.data, HostData::I64(_)) {
        return invalid("they are integers, expected floats (F32, F16 or BF16)".into());
    }
    if d != d_in {
        return Err(SaeError::WidthMismatch {
            expected: d_in,
            got: d,
        });
    }
    let n = lead.iter().product();
    if n == 0 {
        return invalid(format!("shape {:?} holds no tokens", x.shape));
    }
    Ok((n, d))
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
    // Tokens of threshold or batch-top-k SAEs differ in their number of active latents: each
    // chunk pads its rows with zero-valued slots, and the chunks are padded to the widest.
    // Such slots become index -1, value 0. (A TopK SAE's zero-valued latents are real
    // selections, as sparsify returns them, and keep their index.)
    let empty = |value: f32| sae.config.architecture != Architecture::TopK && value == 0.0;
    let width = parts.iter().map(|p| p.0).max().unwrap_or(0);
    let mut acts = Vec::with_capacity(n * width);
    let mut idx = Vec::with_capacity(n * width);
    for (w, a, i) in parts {
        for (ra, ri) in a.chunks(w).zip(i.chunks(w)) {
            for (&value, &index) in ra.iter().zip(ri) {
                let (value, index) = if empty(value) {
                    (0.0, -1)
                } else {
                    (value, index)
                };
                acts.push(value);
                idx.push(index);
            }
            acts.extend(std::iter::repeat_n(0.0, width - w));
            idx.extend(std::iter::repeat_n(-1, width - w));
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::SaeConfig;

    type B = burn::backend::Flex;

    #[test]
    fn empty_slots_of_a_relu_sae_are_index_minus_one() {
        let device = Default::default();
        let (n, d, latents) = (7, 6, 24);
        let sae = Sae::<B>::new(d, SaeConfig::relu_l1(latents, 0.0), &device).unwrap();
        // A fresh SAE has zero biases: latent j is active where x . w_enc[j] > 0.
        let w_enc = to_host(sae.w_enc.val());
        let x: Vec<f32> = (0..n * d)
            .map(|i| ((i * 37 % 23) as f32 - 11.0) / 7.0)
            .collect();
        let input = HostTensor::f32(vec![n, d], x.clone());
        // Chunks of 3 tokens: the chunks' widths differ too.
        let encoded = encode_tokens(&sae, &input, 3, &device, |_, _| {}).unwrap();
        let width = encoded.latent_indices.shape[1];
        let (HostData::I64(indices), HostData::F32(values)) =
            (&encoded.latent_indices.data, &encoded.latent_acts.data)
        else {
            panic!("indices are int64 and values f32");
        };
        let mut padded = 0;
        for token in 0..n {
            let row = &x[token * d..(token + 1) * d];
            let active: Vec<i64> = (0..latents)
                .filter(|&j| {
                    let w = &w_enc[j * d..(j + 1) * d];
                    row.iter().zip(w).map(|(a, b)| a * b).sum::<f32>() > 0.0
                })
                .map(|j| j as i64)
                .collect();
            let slots = token * width..(token + 1) * width;
            let mut listed: Vec<i64> = indices[slots.clone()]
                .iter()
                .copied()
                .filter(|&i| i != -1)
                .collect();
            listed.sort();
            assert_eq!(listed, active, "token {token}");
            for (&i, &v) in indices[slots.clone()].iter().zip(&values[slots]) {
                assert!(i != -1 || v == 0.0, "an empty slot holds 0");
            }
            padded += width - active.len();
        }
        assert!(
            padded > 0,
            "the tokens have different numbers of active latents"
        );
    }
}
