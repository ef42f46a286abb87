//! The training loss of TopK and BatchTopK SAEs and its gradients as tensor operations on the
//! SAE's backend: the math of [`host_grad`](crate::sae::host_grad) with the sparse kernels of
//! [`SaeBackend`], so that no dense `[tokens, latents]` matrix is built besides the encoder's
//! pre-activations. The GPU backends train with it and keep the parameters on the device: the
//! `[tokens, k]` selection and a few scalars are all that is read back (the selection also
//! groups the slots by latent for the weight gradients). Both select on the device
//! ([`device_select`](crate::sae::device_select); BatchTopK from each token's `4k` largest).
//!
//! With `A` the sparse `[tokens, latents]` activations (`[tokens, k]` values at their indices),
//! `M` where a gradient passes (selected, and positive under ReLU) and `G = dL/dx_hat`:
//! `dW_dec = A^T G`, `dPre = (G W_dec^T) * M` (needed only at the selected slots),
//! `dW_enc = dPre^T x_c`, `db_enc = sum_n dPre`, `db_dec = sum_n G - (sum_n dPre) W_enc`.

use burn::tensor::backend::Backend;
use burn::tensor::{ElementConversion, Tensor, TensorData};

use super::device_select::{PreActivations, top_k_on_device};
use super::host_grad::{HostStep, gather};
use super::params::DeviceParams;
use super::share::BatchShare;
use super::{Sae, total_variance, zero_padding};
use crate::error::{Result, SaeError};
use crate::host::to_host;
use crate::kernels::{
    LatentGroups, SaeBackend, sparse_decode, sparse_dot, sparse_transpose_matmul,
};
use crate::select::{self, Selection};

/// A selection on the device: its activations, latents grouped for the weight gradients, and
/// per slot whether it passes a gradient.
struct Sparse<B: Backend> {
    /// The selected activations, `[tokens, width]`.
    values: Tensor<B, 2>,
    /// The selected latents, `[tokens, width]`, and their slots grouped by latent.
    groups: LatentGroups<B>,
    /// 1 where a slot passes a gradient to the encoder, `[tokens, width]`.
    passes: Tensor<B, 2>,
}

impl<B: SaeBackend> Sae<B> {
    /// The training loss on `[tokens, d_in]` activations, adding the gradients of
    /// `weight x loss` to `grads` (shaped like [`device_params`](Self::device_params)); the
    /// same numbers as [`add_loss_grads`](Self::add_loss_grads), computed on the backend
    /// (`share` as there).
    pub fn add_device_loss_grads(
        &self,
        x: Tensor<B, 2>,
        dead_mask: Option<&[bool]>,
        weight: f32,
        share: Option<&BatchShare>,
        grads: &mut DeviceParams<B>,
    ) -> Result<HostStep> {
        if !self.has_host_gradients() {
            return Err(SaeError::InvalidConfig(format!(
                "device gradients cover TopK and BatchTopK, not {:?}",
                self.config.architecture
            )));
        }
        self.check_width(&x)?;
        let x = x.detach();
        let x_c = self.center(x.clone()).detach();
        let (pre, sparse, values, indices) = match self.select_on_device(&x_c)? {
            Some(on_device) => {
                let values = on_device.values();
                let host = (to_host(values.clone()), on_device.host_indices());
                let groups = LatentGroups::new(on_device.indices, &host.1, self.num_latents());
                let valid = on_device.valid.as_deref();
                let passes = valid.map(|valid| zero_padding(values.ones_like(), Some(valid)));
                let sparse = self.sparse(groups, values, passes);
                (
                    PreActivations::Device(on_device.pre),
                    sparse,
                    host.0,
                    host.1,
                )
            }
            None => {
                let pre = self.host_pre_activations(&x_c)?;
                let selection = self.select(&pre);
                let values = gather(&pre, self.num_latents(), &selection);
                let sparse = self.sparse_from_host(&selection, &values, &x.device());
                (PreActivations::Host(pre), sparse, values, selection.indices)
            }
        };
        let total_variance = match share {
            Some(share) => share.total_variance,
            None => scalar(total_variance(x.clone())),
        };

        let residual = self.decode_sparse(&sparse, true) - x.clone();
        let fvu = scalar(residual.clone().square().sum()) / total_variance;
        let scale = 2.0 * weight / total_variance as f32;
        self.backprop(&x_c, &sparse, residual.clone(), scale, grads, true);

        let auxk = match dead_mask.and_then(|mask| Some((mask, self.auxk_width(mask)?))) {
            None => None,
            Some((mask, (k_aux, aux_scale))) => {
                let aux = self.sparse_top_k(&pre, k_aux, Some(mask));
                // The target is the residual x - x_hat, detached: diff = e_hat - (x - x_hat).
                let diff = self.decode_sparse(&aux, false) + residual;
                let loss = aux_scale * scalar(diff.clone().square().sum()) / total_variance;
                let coef =
                    weight * self.config.aux_k_alpha * (2.0 * aux_scale / total_variance) as f32;
                self.backprop(&x_c, &aux, diff, coef, grads, false);
                Some(loss)
            }
        };

        let multi_topk_fvu = self.config.multi_topk.then(|| {
            let wide = self.sparse_top_k(&pre, 4 * self.config.k, None);
            let diff = self.decode_sparse(&wide, true) - x.clone();
            let fvu = scalar(diff.clone().square().sum()) / total_variance;
            let coef = weight / 8.0 * 2.0 / total_variance as f32;
            self.backprop(&x_c, &wide, diff, coef, grads, true);
            fvu
        });

        let losses = (fvu, auxk, multi_topk_fvu);
        Ok(HostStep::new(&self.config, losses, values, indices))
    }

    /// A selection's `[tokens, width]` values at `groups`' indices; `passes` marks the slots
    /// that pass a gradient (all, when `None`), before the ReLU's own condition.
    fn sparse(
        &self,
        groups: LatentGroups<B>,
        values: Tensor<B, 2>,
        passes: Option<Tensor<B, 2>>,
    ) -> Sparse<B> {
        let mut passes = passes.unwrap_or_else(|| values.ones_like());
        if self.config.relu {
            passes = passes * values.clone().greater_elem(0.0).float();
        }
        Sparse {
            values,
            groups,
            passes,
        }
    }

    /// Each token's top `k` pre-activations among the `allowed` latents (AuxK's dead ones):
    /// selected on the device when the pre-activations are there, else on the host.
    fn sparse_top_k(
        &self,
        pre: &PreActivations<B>,
        k: usize,
        allowed: Option<&[bool]>,
    ) -> Sparse<B> {
        match pre {
            PreActivations::Device(pre) => {
                let indices = top_k_on_device(pre.clone(), k, allowed);
                let values = pre.clone().gather(1, indices.clone());
                let groups = LatentGroups::of_device(indices, self.num_latents());
                self.sparse(groups, values, None)
            }
            PreActivations::Host(pre) => {
                let selection = select::top_k_among(pre, self.num_latents(), k, allowed);
                let values = gather(pre, self.num_latents(), &selection);
                self.sparse_from_host(&selection, &values, &self.b_dec.device())
            }
        }
    }

    /// [`sparse`](Self::sparse) of a host selection (its padding slots zero and passing
    /// nothing).
    fn sparse_from_host(&self, s: &Selection, values: &[f32], device: &B::Device) -> Sparse<B> {
        let shape = [s.rows, s.width];
        let groups = LatentGroups::of_host(&s.indices, s.width, self.num_latents(), device);
        let values = Tensor::from_data(TensorData::new(values.to_vec(), shape), device);
        let passes = s.valid.as_ref().map(|valid| {
            let valid: Vec<f32> = valid.iter().map(|&v| f32::from(u8::from(v))).collect();
            Tensor::from_data(TensorData::new(valid, shape), device)
        });
        self.sparse(groups, values, passes)
    }

    /// `A W_dec` of the selection's activations `A`, plus `b_dec` when `with_bias`.
    fn decode_sparse(&self, sparse: &Sparse<B>, with_bias: bool) -> Tensor<B, 2> {
        let indices = sparse.groups.indices.clone();
        let out = sparse_decode(sparse.values.clone(), indices, self.w_dec.val().detach());
        if with_bias {
            out + self.b_dec.val().detach().unsqueeze_dim(0)
        } else {
            out
        }
    }

    /// Adds the gradients of a loss whose gradient with respect to the reconstruction
    /// `A W_dec (+ b_dec)` is `scale g`; `encoder` also propagates through the activations to
    /// the encoder and `b_dec` (decoder bias term included).
    fn backprop(
        &self,
        x_c: &Tensor<B, 2>,
        sparse: &Sparse<B>,
        g: Tensor<B, 2>,
        scale: f32,
        grads: &mut DeviceParams<B>,
        encoder: bool,
    ) {
        let flat = |t: Tensor<B, 2>| t.flatten::<1>(0, 1);
        let g = g.mul_scalar(scale);
        let add = |sum: &mut Tensor<B, 1>, t: Tensor<B, 1>| *sum = sum.clone() + t;
        let groups = &sparse.groups;
        let transposed = |coefs: &Tensor<B, 2>, dense: Tensor<B, 2>| {
            sparse_transpose_matmul(coefs.clone(), groups, dense)
        };
        add(
            &mut grads.w_dec,
            flat(transposed(&sparse.values, g.clone())),
        );
        if !encoder {
            return;
        }
        add(&mut grads.b_dec, flat(g.clone().sum_dim(0)));
        let w_dec = self.w_dec.val().detach();
        let dpre = sparse_dot(g, groups.indices.clone(), w_dec) * sparse.passes.clone();
        add(&mut grads.w_enc, flat(transposed(&dpre, x_c.clone())));
        // Per-latent sums of dPre: its transposed product with a column of ones, `[latents, 1]`.
        let [tokens, _] = dpre.dims();
        let sums = transposed(&dpre, Tensor::ones([tokens, 1], &dpre.device())).transpose();
        if let Some(b_enc) = &mut grads.b_enc {
            add(b_enc, flat(sums.clone()));
        }
        let through_centre = flat(sums.matmul(self.w_enc.val().detach()));
        grads.b_dec = grads.b_dec.clone() - through_centre;
    }
}

/// A one-element tensor's value, read back.
fn scalar<B: Backend>(t: Tensor<B, 1>) -> f64 {
    f64::from(t.into_scalar().elem::<f32>())
}
