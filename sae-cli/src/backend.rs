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

/// The backend's default device.
pub fn device() -> burn::tensor::Device<Backend> {
    Default::default()
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
