//! TopK and BatchTopK selection on the device for the CubeCL backends (wgpu, cuda): the
//! [`top_k_rows`](crate::kernels::top_k_rows) kernel picks each token's `k` largest
//! pre-activations in the order of [`select::top_k`](crate::select::top_k) (larger first, ties
//! to the lower index), so the dense `[tokens, latents]` pre-activations stay on the device;
//! only the `[tokens, k]` indices and the selected values are read back (BatchTopK: each
//! token's `4k` largest, from which the host picks the batch's `k x tokens`). The CPU backends
//! select on the host, where the pre-activations already are.

use burn::tensor::backend::Backend;
use burn::tensor::{ElementConversion, Int, Tensor, TensorData};

use super::{Sae, non_finite_input, zero_padding};
use crate::config::Architecture;
use crate::error::Result;
use crate::host::{int_to_host, to_host};
use crate::kernels::{SaeBackend, top_k_rows};
use crate::select;

/// Each row's `k` largest values, as their column indices `[rows, k]`, largest first and ties
/// to the lower index as [`select::top_k_among`](crate::select::top_k_among), among the
/// columns `allowed` marks (all when `None`; `k` must not exceed them): the others get the most
/// negative float added before [`top_k_rows`]: below every allowed pre-activation, and finite
/// (WGSL lets compilers assume no infinities).
pub fn top_k_on_device<B: SaeBackend>(
    values: Tensor<B, 2>,
    k: usize,
    allowed: Option<&[bool]>,
) -> Tensor<B, 2, Int> {
    let values = match allowed {
        None => values,
        Some(allowed) => {
            let barred = |&a: &bool| if a { 0.0 } else { f32::MIN };
            let penalty: Vec<f32> = allowed.iter().map(barred).collect();
            let penalty = TensorData::new(penalty, [allowed.len()]);
            let penalty = Tensor::<B, 1>::from_data(penalty, &values.device());
            values + penalty.unsqueeze_dim(0)
        }
    };
    top_k_rows(values, k)
}

/// Detached dense pre-activations, `[tokens, latents]`: on the host, or still on the device
/// after a device selection, copied to the host only when a later selection needs them.
pub(crate) enum PreActivations<B: Backend> {
    /// Row-major host values.
    Host(Vec<f32>),
    /// The device tensor.
    Device(Tensor<B, 2>),
}

impl<B: Backend> PreActivations<B> {
    /// The values on the host, read back from the device on first use.
    pub(crate) fn host(&mut self) -> &[f32] {
        if let Self::Device(t) = self {
            *self = Self::Host(to_host(t.clone()));
        }
        match self {
            Self::Host(values) => values,
            Self::Device(_) => unreachable!("replaced just above"),
        }
    }

    /// The host buffer, when the values were read to the host.
    pub(crate) fn into_host(self) -> Option<Vec<f32>> {
        match self {
            Self::Host(values) => Some(values),
            Self::Device(_) => None,
        }
    }
}

/// A TopK or BatchTopK selection made on the device.
pub(crate) struct DeviceSelection<B: Backend> {
    /// The detached pre-activations, `[tokens, latents]` (bias and ReLU applied).
    pub pre: Tensor<B, 2>,
    /// Each token's latent indices, `[tokens, width]`, largest first.
    pub indices: Tensor<B, 2, Int>,
    /// Which slots are real, where tokens have different counts (BatchTopK); padding slots
    /// point at latent 0.
    pub valid: Option<Vec<bool>>,
    /// `indices` on the host where they were chosen there (BatchTopK).
    chosen_on_host: Option<Vec<i64>>,
}

impl<B: Backend> DeviceSelection<B> {
    /// The selected pre-activations, `[tokens, width]`, zero at padding slots.
    pub(crate) fn values(&self) -> Tensor<B, 2> {
        let values = self.pre.clone().gather(1, self.indices.clone());
        zero_padding(values, self.valid.as_deref())
    }

    /// `indices` on the host: read back, unless they were chosen there.
    pub(crate) fn host_indices(&self) -> Vec<i64> {
        match &self.chosen_on_host {
            Some(indices) => indices.clone(),
            None => int_to_host(self.indices.clone()),
        }
    }
}

/// The widest per-token candidate list BatchTopK's device selection reads back, in multiples
/// of `k`: past it the pre-activations are read back whole.
const BATCH_CANDIDATES: usize = 4;

impl<B: SaeBackend> Sae<B> {
    /// TopK's and BatchTopK's selection on the device. `None` where selection runs on the
    /// host: the CPU backends, the other architectures, `k` not below the number of latents. An
    /// error when a pre-activation is NaN or infinite (checked before the ReLU, which would
    /// hide a NaN).
    ///
    /// BatchTopK reads back each token's `4k` largest pre-activations, which settle the batch's
    /// selection unless a token has all of them selected; then, or where `4k` is not below the
    /// number of latents, the whole matrix is read back.
    pub(crate) fn select_on_device(
        &self,
        x_c: &Tensor<B, 2>,
    ) -> Result<Option<DeviceSelection<B>>> {
        let (k, latents) = (self.config.k, self.num_latents());
        let batch = match self.config.architecture {
            Architecture::TopK => false,
            Architecture::BatchTopK => true,
            _ => return Ok(None),
        };
        if k >= latents || !B::DEVICE_SELECT {
            return Ok(None);
        }
        let mut pre = x_c
            .clone()
            .detach()
            .matmul(self.w_enc.val().detach().transpose());
        if let Some(b) = &self.b_enc {
            pre = pre + b.val().detach().unsqueeze_dim(0);
        }
        if !pre.clone().is_finite().all().into_scalar().elem::<bool>() {
            return Err(non_finite_input());
        }
        if self.config.relu {
            pre = burn::tensor::activation::relu(pre);
        }
        if !batch {
            let indices = top_k_rows(pre.clone(), k);
            return Ok(Some(DeviceSelection {
                pre,
                indices,
                valid: None,
                chosen_on_host: None,
            }));
        }
        let (total, cap) = (k * pre.dims()[0], BATCH_CANDIDATES * k);
        // The kernel ranks -0.0 and +0.0 (and, where a GPU flushes them, subnormals and zero)
        // as equal, the host does not: among such ties the two may keep different latents.
        let from_candidates = || {
            let candidates = top_k_rows(pre.clone(), cap);
            let values = to_host(pre.clone().gather(1, candidates.clone()));
            let indices = int_to_host(candidates);
            select::batch_top_k_of_candidates(&values, &indices, cap, latents, total)
        };
        let selection = (cap < latents)
            .then(from_candidates)
            .flatten()
            .unwrap_or_else(|| select::batch_top_k(&to_host(pre.clone()), latents, total));
        let shape = [selection.rows, selection.width];
        let data = TensorData::new(selection.indices.clone(), shape);
        Ok(Some(DeviceSelection {
            indices: Tensor::from_data(data, &pre.device()),
            pre,
            valid: selection.valid,
            chosen_on_host: Some(selection.indices),
        }))
    }
}
