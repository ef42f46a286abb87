//! The compute backend, chosen by cargo feature: `cuda` > `wgpu` > `ndarray` > `flex` (the
//! default), so an explicitly enabled GPU or CPU feature wins over the default one.

#[cfg(feature = "cuda")]
pub type Backend = burn::backend::Cuda;

#[cfg(all(feature = "wgpu", not(feature = "cuda")))]
pub type Backend = burn::backend::Wgpu;

#[cfg(all(feature = "ndarray", not(any(feature = "cuda", feature = "wgpu"))))]
pub type Backend = burn::backend::NdArray;

#[cfg(all(
    feature = "flex",
    not(any(feature = "cuda", feature = "wgpu", feature = "ndarray"))
))]
pub type Backend = burn::backend::Flex;

#[cfg(not(any(
    feature = "flex",
    feature = "ndarray",
    feature = "wgpu",
    feature = "cuda"
)))]
compile_error!("enable one backend feature of sae-cli: flex, ndarray, wgpu or cuda");

/// The dtype a model computes in unless told otherwise: the checkpoint's `stored` one on the
/// GPU backends (bf16 checkpoints run in bf16, at half the memory of f32); f32 on the CPU
/// backends, where flex's bf16 and f16 matmuls are slower than its f32 one (0.69x and 0.84x,
/// docs/perf.md "Compute dtype on the CPU") and the weights are converted as they are read.
pub fn default_dtype(stored: Option<sae_core::StorageDtype>) -> sae_core::StorageDtype {
    if cfg!(any(feature = "wgpu", feature = "cuda")) {
        stored.unwrap_or_default()
    } else {
        sae_core::StorageDtype::F32
    }
}

/// The backend's default device. On the GPU backends the first call checks that it works: a
/// one-element round trip (without a driver or an adapter the runtime panics on its own thread,
/// which this turns into an error naming the cause), then the SAE kernels against their
/// reference (`sae_core::kernels::check_kernels`).
pub fn device() -> anyhow::Result<burn::tensor::Device<Backend>> {
    device_of_rank(0)
}

/// The device that the process of local rank `local` drives in a data-parallel job (one
/// process per device): GPU `local` of this machine on the GPU backends, the CPU otherwise;
/// checked as [`device`] checks it.
pub fn device_of_rank(local: usize) -> anyhow::Result<burn::tensor::Device<Backend>> {
    let device = nth_device(local);
    if cfg!(any(feature = "wgpu", feature = "cuda")) {
        static PROBE: std::sync::OnceLock<Result<(), String>> = std::sync::OnceLock::new();
        let checked = || {
            probe(&device)
                .map_err(|cause| format!("the {NAME} backend found no usable GPU: {cause}"))?;
            sae_core::kernels::check_kernels::<Backend>(&device)
                .map_err(|error| format!("the {NAME} backend: {error}"))
        };
        if let Err(message) = PROBE.get_or_init(checked) {
            anyhow::bail!("{message}");
        }
    }
    Ok(device)
}

#[cfg(feature = "cuda")]
fn nth_device(local: usize) -> burn::tensor::Device<Backend> {
    burn::backend::cuda::CudaDevice { index: local }
}

#[cfg(all(feature = "wgpu", not(feature = "cuda")))]
fn nth_device(local: usize) -> burn::tensor::Device<Backend> {
    match local {
        0 => Default::default(),
        n => burn::backend::wgpu::WgpuDevice::DiscreteGpu(n),
    }
}

#[cfg(not(any(feature = "wgpu", feature = "cuda")))]
fn nth_device(_local: usize) -> burn::tensor::Device<Backend> {
    Default::default()
}

/// Moves one value to `device` and back; the first panic message on failure (the runtime's,
/// from whichever thread), with the default panic output held back meanwhile.
fn probe(device: &burn::tensor::Device<Backend>) -> Result<(), String> {
    use std::sync::{Arc, Mutex};
    let messages = Arc::new(Mutex::new(Vec::<String>::new()));
    let seen = Arc::clone(&messages);
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let payload = info.payload();
        let text = payload
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| payload.downcast_ref::<String>().cloned())
            .unwrap_or_default();
        seen.lock().unwrap_or_else(|e| e.into_inner()).push(text);
    }));
    let round_trip = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        burn::tensor::Tensor::<Backend, 1>::zeros([1], device).into_data()
    }));
    std::panic::set_hook(previous);
    match round_trip {
        Ok(_) => Ok(()),
        Err(_) => {
            let messages = messages.lock().unwrap_or_else(|e| e.into_inner());
            // The runtime's own message, to its first sentence (cudarc's goes on to list every
            // library name it tried).
            let first = messages
                .first()
                .map_or("the device panicked", String::as_str);
            Err(first
                .split(" - ")
                .next()
                .unwrap_or(first)
                .trim()
                .to_string())
        }
    }
}

/// The backend's name, for logs.
pub const NAME: &str = if cfg!(feature = "cuda") {
    "cuda"
} else if cfg!(feature = "wgpu") {
    "wgpu"
} else if cfg!(feature = "ndarray") {
    "ndarray"
} else {
    "flex"
};
