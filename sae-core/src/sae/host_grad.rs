//! The training loss of TopK and BatchTopK SAEs and its gradients, derived by hand and computed
//! on the host: the same numbers as [`Sae::forward`](crate::Sae::forward) plus autodiff, without
//! the autodiff graph. Only the dense selection matmul runs on the backend (on the CPU
//! backends, the `gemm` crate runs it on the host copies directly); the rest is
//! O(tokens x k x d) work in parallel loops where every output element is summed by one thread
//! in a fixed order, so results are deterministic.
//!
//! With `a` the selected activations (indices `idx`), `x_c = x - b_dec`, `x_hat = sum_j a_j
//! W_dec[idx_j] + b_dec` and `G = dL/dx_hat`:
//! `dW_dec[i] = sum a_j G` over the slots selecting `i`, `da_j = G . W_dec[idx_j]`,
//! `dpre_j = da_j relu'(pre_j)`, `dW_enc[i] = sum dpre_j x_c`, `db_enc[i] = sum dpre_j`,
//! `db_dec = sum_n G - sum_n sum_j dpre_j W_enc[idx_j]`. AuxK (as sparsify 1.3) reaches the
//! decoder only and its prediction has no `b_dec`; Multi-TopK is a second full path.

use crate::kernels::SaeBackend;
use burn::tensor::Tensor;
use rayon::prelude::*;

use super::device_select::PreActivations;
use super::params::HostParams;
use super::share::{BatchShare, total_variance};
use super::{Sae, finish_pre_activations, finish_row, non_finite_input};
use crate::config::{Architecture, SaeConfig};
use crate::error::{Result, SaeError};
use crate::host::to_host;
use crate::reduce::dot;
use crate::scratch;
use crate::select::{self, Selection};

/// The loss terms and the selected latents of one training micro-batch.
#[derive(Debug, Clone, PartialEq)]
pub struct HostStep {
    /// The objective (`fvu + aux_k_alpha auxk + multi_topk_fvu / 8`), unweighted.
    pub loss: f32,
    /// Fraction of variance unexplained.
    pub fvu: f32,
    /// AuxK loss, when some latent is dead.
    pub auxk: Option<f32>,
    /// FVU of the top-`4k` reconstruction, when `multi_topk` is on.
    pub multi_topk_fvu: Option<f32>,
    /// Selected activations, `[tokens, width]` (padding slots 0).
    pub values: Vec<f32>,
    /// Their latent indices, `[tokens, width]`.
    pub indices: Vec<i64>,
}

impl HostStep {
    /// The step of loss terms `(fvu, auxk, multi_topk_fvu)` (summed in f64 into the objective
    /// as `config` weighs them) and the selection.
    pub(crate) fn new(
        config: &SaeConfig,
        (fvu, auxk, multi_topk_fvu): (f64, Option<f64>, Option<f64>),
        values: Vec<f32>,
        indices: Vec<i64>,
    ) -> Self {
        let loss = fvu
            + auxk.map_or(0.0, |a| f64::from(config.aux_k_alpha) * a)
            + multi_topk_fvu.map_or(0.0, |m| m / 8.0);
        HostStep {
            loss: loss as f32,
            fvu: fvu as f32,
            auxk: auxk.map(|a| a as f32),
            multi_topk_fvu: multi_topk_fvu.map(|m| m as f32),
            values,
            indices,
        }
    }
}

/// The parameters and inputs the host math reads.
struct Host<'a> {
    relu: bool,
    n: usize,
    d: usize,
    latents: usize,
    x: Vec<f32>,
    x_c: Vec<f32>,
    w_enc: &'a [f32],
    w_dec: &'a [f32],
    b_dec: &'a [f32],
}

impl<B: SaeBackend> Sae<B> {
    /// True when [`loss_and_grads`](Self::loss_and_grads) handles this architecture.
    pub fn has_host_gradients(&self) -> bool {
        matches!(
            self.config.architecture,
            Architecture::TopK | Architecture::BatchTopK
        )
    }

    /// The training loss on `[tokens, d_in]` activations and the gradients of
    /// `weight x loss`; `dead_mask` turns on AuxK as in [`forward`](Self::forward).
    pub fn loss_and_grads(
        &self,
        x: Tensor<B, 2>,
        dead_mask: Option<&[bool]>,
        weight: f32,
    ) -> Result<(HostStep, HostParams)> {
        let params = self.host_params();
        let mut grads = params.zeros_like();
        let step = self.add_loss_grads(&params, x, dead_mask, weight, None, &mut grads)?;
        Ok((step, grads))
    }

    /// As [`loss_and_grads`](Self::loss_and_grads), adding the gradients to `grads`. `params`
    /// must hold this SAE's values ([`host_params`](Self::host_params)): a trainer that keeps
    /// them on the host passes its copy, and on the CPU backends only that copy is read. With
    /// `share`, `x` is one rank's part of that batch, and the losses are its shares of the
    /// batch's.
    pub fn add_loss_grads(
        &self,
        params: &HostParams,
        x: Tensor<B, 2>,
        dead_mask: Option<&[bool]>,
        weight: f32,
        share: Option<&BatchShare>,
        grads: &mut HostParams,
    ) -> Result<HostStep> {
        if !self.has_host_gradients() {
            return Err(SaeError::InvalidConfig(format!(
                "host gradients cover TopK and BatchTopK, not {:?}",
                self.config.architecture
            )));
        }
        self.check_width(&x)?;
        let (latents, d_in) = (self.num_latents(), self.d_in());
        let shapes = [
            (params.w_enc.len(), latents * d_in),
            (params.w_dec.len(), latents * d_in),
            (params.b_dec.len(), d_in),
        ];
        if shapes.iter().any(|(got, expected)| got != expected) {
            return Err(SaeError::InvalidConfig(format!(
                "the host parameters do not fit an SAE of {latents} latents over {d_in} inputs"
            )));
        }
        let [n, d] = x.dims();
        // Off the CPU backends the selection product runs on the backend, and TopK and
        // BatchTopK also select there (`select_on_device`); otherwise its product is read back.
        let on_backend = if B::HOST_GEMM {
            None
        } else {
            let x_c = self.center(x.clone());
            Some(match self.select_on_device(&x_c)? {
                Some(on_device) => {
                    let values = to_host(on_device.values());
                    let selection = Selection {
                        rows: n,
                        width: on_device.indices.dims()[1],
                        indices: on_device.host_indices(),
                        valid: on_device.valid,
                    };
                    (
                        PreActivations::Device(on_device.pre),
                        selection,
                        Some(values),
                    )
                }
                None => {
                    let pre = self.host_pre_activations(&x_c)?;
                    let selection = self.select(&pre);
                    (PreActivations::Host(pre), selection, None)
                }
            })
        };
        let xs = to_host(x);
        let mut x_c = scratch::take(n * d);
        x_c.par_chunks_mut(d)
            .zip(xs.par_chunks(d))
            .for_each(|(c, row)| {
                c.iter_mut()
                    .zip(row)
                    .zip(&params.b_dec)
                    .for_each(|((c, v), b)| *c = v - b)
            });
        let h = Host {
            relu: self.config.relu,
            n,
            d,
            latents: self.num_latents(),
            x: xs,
            x_c,
            w_enc: &params.w_enc,
            w_dec: &params.w_dec,
            b_dec: &params.b_dec,
        };
        let (mut pre, selection, values) = match on_backend {
            Some(picked) => picked,
            None => {
                let mut pre = encoder_product(&h);
                let bias = params.b_enc.as_deref();
                // TopK finishes each row (bias, ReLU, finiteness) just before selecting in it.
                let selection = if self.config.architecture == Architecture::TopK {
                    let finish = |row: &mut [f32]| finish_row(row, bias, h.relu);
                    select::top_k_prepared(&mut pre, h.latents, self.config.k, finish)
                        .ok_or_else(non_finite_input)?
                } else {
                    finish_pre_activations(&mut pre, h.latents, bias, h.relu)?;
                    self.select(&pre)
                };
                (PreActivations::Host(pre), selection, None)
            }
        };
        let values = values.unwrap_or_else(|| gather(pre.host(), h.latents, &selection));
        let total_variance = share.map_or_else(|| total_variance(&h.x, n, d), |s| s.total_variance);

        let residual = minus(decode(&h, &selection, &values, true), &h.x);
        let mut spent = Vec::new();
        let fvu = sum_sq(&residual) / total_variance;
        let scale = 2.0 * weight / total_variance as f32;
        backprop(&h, &selection, &values, (&residual, scale), grads, true);

        let auxk = dead_mask.and_then(|mask| {
            let (aux, scale) = self.auxk_selection(&mut pre, mask)?;
            let aux_values = gather(pre.host(), h.latents, &aux);
            // The target is the residual x - x_hat, detached: diff = e_hat - (x - x_hat).
            let mut diff = decode(&h, &aux, &aux_values, false);
            diff.iter_mut().zip(&residual).for_each(|(e, r)| *e += r);
            let loss = scale * sum_sq(&diff) / total_variance;
            let coef = weight * self.config.aux_k_alpha * (2.0 * scale / total_variance) as f32;
            backprop(&h, &aux, &aux_values, (&diff, coef), grads, false);
            spent.push(diff);
            Some(loss)
        });

        let multi_topk_fvu = self.config.multi_topk.then(|| {
            let wide = select::top_k(pre.host(), h.latents, 4 * self.config.k);
            let wide_values = gather(pre.host(), h.latents, &wide);
            let diff = minus(decode(&h, &wide, &wide_values, true), &h.x);
            let coef = weight / 8.0 * 2.0 / total_variance as f32;
            backprop(&h, &wide, &wide_values, (&diff, coef), grads, true);
            let fvu = sum_sq(&diff) / total_variance;
            spent.push(diff);
            fvu
        });

        spent.extend(pre.into_host());
        spent.extend([residual, h.x, h.x_c]);
        spent.into_iter().for_each(scratch::give);
        let losses = (fvu, auxk, multi_topk_fvu);
        Ok(HostStep::new(
            &self.config,
            losses,
            values,
            selection.indices,
        ))
    }
}

/// `x_c W_enc^T`, `[tokens, num_latents]`, by the `gemm` crate on the host copies (on the CPU
/// backends this skips a copy of the product and runs at the machine's GEMM speed).
fn encoder_product(h: &Host) -> Vec<f32> {
    let (n, d, l) = (h.n, h.d, h.latents);
    // Every element is overwritten (the product does not read `out`).
    let mut out = scratch::take(n * l);
    assert!(h.x_c.len() == n * d && h.w_enc.len() == l * d && out.len() == n * l);
    // SAFETY: `out` is `[n, l]` row-major (column stride 1, row stride l); `x_c` is `[n, d]`
    // row-major; `W_enc^T` is `[d, l]` read from `W_enc` `[l, d]` row-major (column stride d,
    // row stride 1); all three buffers hold exactly those many elements and do not overlap.
    unsafe {
        gemm::gemm(
            n,
            l,
            d,
            out.as_mut_ptr(),
            1,
            l as isize,
            false,
            h.x_c.as_ptr(),
            1,
            d as isize,
            h.w_enc.as_ptr(),
            d as isize,
            1,
            0.0,
            1.0,
            false,
            false,
            false,
            gemm::Parallelism::Rayon(0),
        );
    }
    out
}

fn sum_sq(v: &[f32]) -> f64 {
    v.iter().map(|&x| f64::from(x) * f64::from(x)).sum()
}

/// `a - b`, in `a`'s buffer.
fn minus(mut a: Vec<f32>, b: &[f32]) -> Vec<f32> {
    a.iter_mut().zip(b).for_each(|(a, b)| *a -= b);
    a
}

/// The selected pre-activations, padding slots 0.
pub(crate) fn gather(pre: &[f32], latents: usize, s: &Selection) -> Vec<f32> {
    (0..s.rows * s.width)
        .map(|slot| {
            let valid = s.valid.as_ref().is_none_or(|v| v[slot]);
            let row = slot / s.width;
            if valid {
                pre[row * latents + s.indices[slot] as usize]
            } else {
                0.0
            }
        })
        .collect()
}

/// `sum_j a_j W_dec[idx_j]` per token (plus `b_dec` when `with_bias`).
fn decode(h: &Host, s: &Selection, values: &[f32], with_bias: bool) -> Vec<f32> {
    let d = h.d;
    let mut out = scratch::take(h.n * d);
    out.par_chunks_mut(d).enumerate().for_each(|(n, row)| {
        if with_bias {
            row.copy_from_slice(h.b_dec);
        } else {
            row.fill(0.0);
        }
        for j in 0..s.width {
            let a = values[n * s.width + j];
            if a != 0.0 {
                let w = &h.w_dec[s.indices[n * s.width + j] as usize * d..][..d];
                row.iter_mut().zip(w).for_each(|(o, &w)| *o += a * w);
            }
        }
    });
    out
}

/// Adds the gradients of a loss whose gradient with respect to a reconstruction
/// `sum_j a_j W_dec[idx_j] (+ b_dec)` is `scale g` (`g` is `[tokens, d]`); `encoder` also
/// propagates through the activations to the encoder and `b_dec` (decoder bias term included).
fn backprop(
    h: &Host,
    s: &Selection,
    values: &[f32],
    (g, scale): (&[f32], f32),
    grads: &mut HostParams,
    encoder: bool,
) {
    let (d, w) = (h.d, s.width);
    let slots = groups(s, h.latents);
    // dW_dec[i] += sum over the slots selecting i of a_slot scale g_token.
    add_rows(
        &mut grads.w_dec,
        &slots,
        (d, w),
        |slot| values[slot] * scale,
        g,
    );
    if !encoder {
        return;
    }
    // Column sums of g, accumulated row by row (the same order per column as summing each
    // column, without striding through g once per column).
    let mut column_sums = vec![0f32; d];
    for row in g.chunks_exact(d) {
        column_sums.iter_mut().zip(row).for_each(|(s, v)| *s += v);
    }
    grads
        .b_dec
        .iter_mut()
        .zip(column_sums)
        .for_each(|(b, s)| *b += scale * s);
    // dpre_slot = scale (g_token . W_dec[idx]) relu'(pre), zero on padding.
    let dpre: Vec<f32> = (0..h.n)
        .into_par_iter()
        .flat_map_iter(|n| {
            let g_row = &g[n * d..][..d];
            (0..w).map(move |j| {
                let slot = n * w + j;
                let latent = s.indices[slot] as usize;
                let valid = s.valid.as_ref().is_none_or(|v| v[slot]);
                // ReLU passes no gradient where the selected activation is not positive.
                if !valid || h.relu && values[slot] <= 0.0 {
                    return 0.0;
                }
                scale * dot(g_row, &h.w_dec[latent * d..][..d])
            })
        })
        .collect();
    add_rows(&mut grads.w_enc, &slots, (d, w), |slot| dpre[slot], &h.x_c);
    // Per latent, the sum of its slots' dpre: db_enc, and (x_c = x - b_dec)
    // db_dec -= sum_latent dpre_sum W_enc[latent].
    let dpre_sums: Vec<f32> = (0..h.latents)
        .into_par_iter()
        .map(|i| slots.of(i).iter().map(|&slot| dpre[slot]).sum::<f32>())
        .collect();
    if let Some(b_enc) = &mut grads.b_enc {
        b_enc.iter_mut().zip(&dpre_sums).for_each(|(b, s)| *b += s);
    }
    // Fixed blocks of latents, each summed in order, then the blocks in order: the same
    // result on any thread count.
    const BLOCK: usize = 256;
    let partials: Vec<Vec<f32>> = dpre_sums
        .par_chunks(BLOCK)
        .zip(h.w_enc.par_chunks(BLOCK * d))
        .map(|(sums, rows)| {
            let mut acc = vec![0f32; d];
            for (&c, row) in sums.iter().zip(rows.chunks_exact(d)) {
                if c != 0.0 {
                    acc.iter_mut().zip(row).for_each(|(a, &e)| *a += c * e);
                }
            }
            acc
        })
        .collect();
    for partial in partials {
        grads
            .b_dec
            .iter_mut()
            .zip(partial)
            .for_each(|(b, v)| *b -= v);
    }
}

/// The slots of a selection grouped by latent (slots in token order within a latent).
struct Groups {
    start: Vec<usize>,
    slots: Vec<usize>,
}

impl Groups {
    fn of(&self, latent: usize) -> &[usize] {
        &self.slots[self.start[latent]..self.start[latent + 1]]
    }
}

fn groups(s: &Selection, latents: usize) -> Groups {
    let mut start = vec![0usize; latents + 1];
    for &i in &s.indices {
        start[i as usize + 1] += 1;
    }
    for i in 0..latents {
        start[i + 1] += start[i];
    }
    let mut fill = start.clone();
    let mut slots = vec![0usize; s.indices.len()];
    for (slot, &i) in s.indices.iter().enumerate() {
        slots[fill[i as usize]] = slot;
        fill[i as usize] += 1;
    }
    Groups { start, slots }
}

/// `out[i] += sum over latent i's slots of coef(slot) rows[token(slot)]`, one thread per latent
/// (`d` floats per row, `width` slots per token).
fn add_rows(
    out: &mut [f32],
    groups: &Groups,
    (d, width): (usize, usize),
    coef: impl Fn(usize) -> f32 + Sync,
    rows: &[f32],
) {
    out.par_chunks_mut(d).enumerate().for_each(|(i, out_row)| {
        for &slot in groups.of(i) {
            let c = coef(slot);
            if c != 0.0 {
                let row = &rows[(slot / width) * d..][..d];
                out_row.iter_mut().zip(row).for_each(|(o, &r)| *o += c * r);
            }
        }
    });
}
