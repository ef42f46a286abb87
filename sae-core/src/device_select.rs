//! TopK selection on the device for the CubeCL backends (wgpu, cuda): CubeCL's top-k
//! reduction (in passes of up to [`DEVICE_TOP_K_MAX`]) picks each token's `k` largest
//! pre-activations in the order of
//! [`select::top_k`](crate::select::top_k) (larger first, ties to the lower index), so the dense
//! `[tokens, latents]` pre-activations stay on the device; only the `[tokens, k]` indices and
//! the selected values are read back. The CPU backends select on the host, where the
//! pre-activations already are.

use burn::tensor::backend::Backend;
use burn::tensor::{ElementConversion, IndexingUpdateOp, Int, Tensor, TensorData};

use crate::config::Architecture;
use crate::error::Result;
use crate::sae::{Sae, non_finite_input, to_host};

/// The widest top-k CubeCL selects in one pass. Its top-k reduction unrolls its `k`-slot
/// insertion at compile time, so its compile time grows with `k²` (k = 32 compiles in seconds,
/// k = 128 did not finish in minutes on a software Vulkan device); wider selections (AuxK's,
/// Multi-TopK's) take several passes ([`top_k_on_device`]).
pub const DEVICE_TOP_K_MAX: usize = 64;

/// True on the CubeCL backends (`B` possibly wrapped in autodiff or fusion), whose reduce
/// kernels include top-k.
pub fn selects_on_device<B: Backend>(device: &B::Device) -> bool {
    B::name(device).contains("cubecl<")
}

/// Each row's `k` largest values, as their column indices `[rows, k]`, largest first and ties
/// to the lower index as [`select::top_k_among`](crate::select::top_k_among), among the
/// columns `allowed` marks (all when `None`; `k` must not exceed them). CubeCL's top-k runs in
/// passes at most `width` wide, each after the columns picked before it are set to -inf. A
/// pass is a power of two wide (the first picks of a wider one are the same), so a varying `k`
/// (AuxK's, with the number of dead latents) compiles only a few kernels.
pub fn top_k_on_device<B: Backend>(
    values: Tensor<B, 2>,
    k: usize,
    allowed: Option<&[bool]>,
    width: usize,
) -> Tensor<B, 2, Int> {
    let ([rows, cols], device) = (values.dims(), values.device());
    let mut rest = match allowed {
        None => values,
        Some(allowed) => {
            let barred = |&a: &bool| if a { 0.0 } else { f32::NEG_INFINITY };
            let penalty: Vec<f32> = allowed.iter().map(barred).collect();
            let penalty = Tensor::<B, 1>::from_data(TensorData::new(penalty, [cols]), &device);
            values + penalty.unsqueeze_dim(0)
        }
    };
    // The widest pass: a power of two, at most `width`.
    let widest = k.next_power_of_two().min(1 << width.max(1).ilog2());
    // CubeCL's top-k needs more columns than it picks: pad narrow matrices with -inf columns,
    // never picked since at most the allowed columns are.
    if cols <= widest {
        let padding = Tensor::full([rows, widest + 1 - cols], f32::NEG_INFINITY, &device);
        rest = Tensor::cat(vec![rest, padding], 1);
    }
    let mut passes = Vec::new();
    let mut left = k;
    while left > 0 {
        let pass = left.next_power_of_two().min(widest);
        let take = left.min(pass);
        let picked = rest.clone().argtopk(pass, 1).slice([0..rows, 0..take]);
        left -= take;
        if left > 0 {
            let barred = Tensor::full([rows, take], f32::NEG_INFINITY, &device);
            rest = rest.scatter(1, picked.clone(), barred, IndexingUpdateOp::Add);
        }
        passes.push(picked);
    }
    Tensor::cat(passes, 1)
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

/// A TopK selection made on the device.
pub(crate) struct DeviceTopK<B: Backend> {
    /// The detached pre-activations, `[tokens, latents]` (bias and ReLU applied).
    pub pre: Tensor<B, 2>,
    /// Each token's `k` latent indices, `[tokens, k]`, largest first.
    pub indices: Tensor<B, 2, Int>,
}

impl<B: Backend> Sae<B> {
    /// TopK's selection on the device. `None` where selection runs on the host: the CPU
    /// backends, the other architectures, `k` not below the number of latents. An error when a
    /// pre-activation is NaN or infinite (checked before the ReLU, which would hide a NaN).
    pub(crate) fn select_on_device(&self, x_c: &Tensor<B, 2>) -> Result<Option<DeviceTopK<B>>> {
        let k = self.config.k;
        if self.config.architecture != Architecture::TopK
            || k >= self.num_latents()
            || !selects_on_device::<B>(&x_c.device())
        {
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
        let indices = top_k_on_device(pre.clone(), k, None, DEVICE_TOP_K_MAX);
        Ok(Some(DeviceTopK { pre, indices }))
    }
}
