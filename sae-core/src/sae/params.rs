//! An SAE's parameters by name, over any storage: host buffers ([`HostParams`], the trainer's
//! master copy and its gradients on the CPU backends) or flat device tensors
//! ([`DeviceParams`], the same on the GPU backends). Checkpoints and optimisers walk them by
//! the names the checkpoint formats use.

use burn::tensor::backend::Backend;

use crate::kernels::SaeBackend;
use burn::tensor::{Tensor, TensorData};

use super::Sae;
use crate::config::SaeConfig;
use crate::error::Result;

/// One value per SAE parameter, row-major like the parameters; the optional ones present when
/// the architecture has them.
#[derive(Debug, Clone, PartialEq)]
pub struct Params<T> {
    /// `[num_latents, d_in]`.
    pub w_enc: T,
    /// `[num_latents]`, when the SAE has an encoder bias.
    pub b_enc: Option<T>,
    /// `[num_latents, d_in]`.
    pub w_dec: T,
    /// `[d_in]`.
    pub b_dec: T,
    /// `[num_latents]`, JumpReLU's thresholds.
    pub threshold: Option<T>,
}

/// An SAE's parameters, or their gradients, on the host.
pub type HostParams = Params<Vec<f32>>;

/// The same on the device, each flattened to one dimension.
pub type DeviceParams<B> = Params<Tensor<B, 1>>;

impl<T> Params<T> {
    /// The parameters present, by the names checkpoints use.
    pub fn iter(&self) -> impl Iterator<Item = (&'static str, &T)> {
        [
            ("w_enc", Some(&self.w_enc)),
            ("b_enc", self.b_enc.as_ref()),
            ("w_dec", Some(&self.w_dec)),
            ("b_dec", Some(&self.b_dec)),
            ("threshold", self.threshold.as_ref()),
        ]
        .into_iter()
        .filter_map(|(name, v)| v.map(|v| (name, v)))
    }

    /// The parameters present, mutable.
    pub fn iter_mut(&mut self) -> impl Iterator<Item = (&'static str, &mut T)> {
        [
            ("w_enc", Some(&mut self.w_enc)),
            ("b_enc", self.b_enc.as_mut()),
            ("w_dec", Some(&mut self.w_dec)),
            ("b_dec", Some(&mut self.b_dec)),
            ("threshold", self.threshold.as_mut()),
        ]
        .into_iter()
        .filter_map(|(name, v)| v.map(|v| (name, v)))
    }

    /// The parameter called `name`, when present.
    pub fn get(&self, name: &str) -> Option<&T> {
        self.iter().find(|(n, _)| *n == name).map(|(_, v)| v)
    }

    /// The same, mutable.
    pub fn get_mut(&mut self, name: &str) -> Option<&mut T> {
        self.iter_mut().find(|(n, _)| *n == name).map(|(_, v)| v)
    }

    /// Each present value mapped by `f`, the same ones present.
    pub fn map<U>(&self, mut f: impl FnMut(&T) -> U) -> Params<U> {
        Params {
            w_enc: f(&self.w_enc),
            b_enc: self.b_enc.as_ref().map(&mut f),
            w_dec: f(&self.w_dec),
            b_dec: f(&self.b_dec),
            threshold: self.threshold.as_ref().map(&mut f),
        }
    }

    /// Each present value mapped by `f`, given its name; the first error stops the mapping.
    pub fn try_map_named<U, E>(
        &self,
        mut f: impl FnMut(&'static str, &T) -> Result<U, E>,
    ) -> Result<Params<U>, E> {
        Ok(Params {
            w_enc: f("w_enc", &self.w_enc)?,
            b_enc: self.b_enc.as_ref().map(|v| f("b_enc", v)).transpose()?,
            w_dec: f("w_dec", &self.w_dec)?,
            b_dec: f("b_dec", &self.b_dec)?,
            threshold: self
                .threshold
                .as_ref()
                .map(|v| f("threshold", v))
                .transpose()?,
        })
    }
}

impl<T: AsRef<[f32]>> Params<T> {
    /// The name of the first parameter holding a NaN or an infinity (a diverged or corrupt
    /// SAE), if any.
    pub fn first_non_finite(&self) -> Option<&'static str> {
        self.iter()
            .find(|(_, v)| v.as_ref().iter().any(|x| !x.is_finite()))
            .map(|(name, _)| name)
    }
}

impl HostParams {
    /// Zeros shaped like `self` (the same optional parameters present).
    pub fn zeros_like(&self) -> Self {
        self.map(|v| vec![0.0; v.len()])
    }

    /// A copy on `device`.
    pub fn to_device<B: Backend>(&self, device: &B::Device) -> DeviceParams<B> {
        self.map(|v| Tensor::from_data(TensorData::new(v.clone(), [v.len()]), device))
    }
}

impl<B: Backend> DeviceParams<B> {
    /// Zeros shaped like `self`, on the same device.
    pub fn zeros_like(&self) -> Self {
        self.map(Tensor::zeros_like)
    }

    /// A copy on the host.
    pub fn to_host(&self) -> HostParams {
        self.map(|t| crate::host::to_host(t.clone()))
    }
}

impl<B: SaeBackend> Sae<B> {
    /// This SAE's parameters, detached and flattened, on its device (no copy).
    pub fn device_params(&self) -> DeviceParams<B> {
        let flat = |t: Tensor<B, 2>| t.detach().flatten(0, 1);
        Params {
            w_enc: flat(self.w_enc.val()),
            b_enc: self.b_enc.as_ref().map(|p| p.val().detach()),
            w_dec: flat(self.w_dec.val()),
            b_dec: self.b_dec.val().detach(),
            threshold: self.threshold.as_ref().map(|p| p.val().detach()),
        }
    }

    /// The SAE with `params` (the inverse of [`device_params`](Self::device_params)), its
    /// shapes checked against `config` as [`from_tensors`](Self::from_tensors) does.
    pub fn from_device_params(config: SaeConfig, params: &DeviceParams<B>) -> Result<Self> {
        let d = params.b_dec.dims()[0];
        let matrix = |t: &Tensor<B, 1>| {
            let latents = t.dims()[0] / d.max(1);
            t.clone().reshape([latents, d])
        };
        Self::from_tensors(
            config,
            matrix(&params.w_enc),
            params.b_enc.clone(),
            matrix(&params.w_dec),
            params.b_dec.clone(),
            params.threshold.clone(),
        )
    }

    /// This SAE's parameters, copied to the host.
    pub fn host_params(&self) -> HostParams {
        self.device_params().to_host()
    }

    /// The SAE with `params` (the inverse of [`host_params`](Self::host_params)) on `device`.
    pub fn from_host_params(
        config: SaeConfig,
        params: &HostParams,
        device: &B::Device,
    ) -> Result<Self> {
        Self::from_device_params(config, &params.to_device(device))
    }
}
