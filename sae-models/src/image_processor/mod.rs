//! Image processors that reproduce Hugging Face transformers' (5.24, torchvision backend, the one
//! `AutoImageProcessor` picks) exactly, to the same f32 values given the same decoded pixels:
//! Qwen2-VL / Qwen2.5-VL (`Qwen2VLImageProcessor`) and LLaVA-OneVision
//! (`LlavaOnevisionImageProcessor`). JPEG decoding alone differs from PIL's by a few levels.
//!
//! Both follow the same steps: decode ([`load_image`]), convert to RGB compositing transparency
//! onto white as PIL does, resize with torchvision's antialiased bicubic on uint8 (torch's
//! fixed-point kernel, see `resize`), then rescale and normalise in f32 ([`Normalization`]). The
//! outputs are host tensors ([`sae_core::HostTensor`]) so that the caller picks the backend.
//!
//! Settings come from a model folder's `processor_config.json` (transformers 5) or
//! `preprocessor_config.json` (older hub layout): see `from_model_dir` on each processor.

mod config;

pub use config::ProcessorSettings;
mod decode;
mod llava_onevision;
mod normalize;
mod qwen2_vl;
mod resize;

pub use decode::{MAX_IMAGE_PIXELS, decode_image, load_image};
pub(crate) use llava_onevision::select_best_resolution;
pub use llava_onevision::{LlavaOnevisionImageInputs, LlavaOnevisionImageProcessor};
pub use normalize::Normalization;
pub use qwen2_vl::{Qwen2VlImageInputs, Qwen2VlImageProcessor, smart_resize};
