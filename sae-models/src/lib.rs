//! Model ports with hook points for sparse-autoencoder work. Every model implements
//! [`sae_core::HookedModule`] with hook paths named as Hugging Face names the modules in memory,
//! so SAE Made Easy's `target_modules` work unchanged.
//!
//! Models: decoder-only LMs (Qwen2, Llama / SmolLM2) from a Hugging Face folder, the hub or a
//! GGUF file ([`LanguageModel`]), and the vision-language models Qwen2-VL, Qwen2.5-VL and
//! LLaVA-OneVision with their image processors ([`VisionLanguageModel`]; each network implements
//! [`VisionLanguage`], one line in `vision_language`'s registry loads it by `model_type`);
//! tokenizers and chat templates, prompts as processors return them ([`ProcessedPrompt`]), and
//! generation with a KV cache ([`generate()`]).

pub mod any_model;
pub mod config;
pub mod decoder;
pub mod error;
pub mod generate;
pub mod gguf;
pub mod gguf_model;
pub mod image_processor;
pub mod language_model;
pub mod llava_onevision;
mod mask;
pub mod projection;
pub mod prompt;
pub mod qwen2_vl;
mod rope;
pub mod scope;
pub mod shard;
pub mod source;
mod tap;
pub mod token_layout;
pub mod tokenizer;
pub mod vision_language;
pub mod weights;

pub use any_model::AnyModel;
pub use config::DecoderConfig;
pub use decoder::{DecoderLm, KvCache, LmInput, LmOutput};
pub use error::{ModelError, Result};
pub use generate::{GenerateConfig, Generator, ImageLm, Sampling, WithImages, generate};
pub use image_processor::{
    LlavaOnevisionImageInputs, LlavaOnevisionImageProcessor, ProcessorSettings, Qwen2VlImageInputs,
    Qwen2VlImageProcessor, decode_image, load_image,
};
pub use language_model::{LanguageModel, Prompt};
pub use prompt::ProcessedPrompt;
pub use scope::LoadScope;
pub use shard::{ShardExchange, Shards};
pub use source::ModelSource;
pub use token_layout::{ImageTokenLayout, TokenGrid};
pub use tokenizer::{Message, Tokenizer};
pub use vision_language::{
    ImageInputs, ImageTokens, ProcessedImages, VisionInput, VisionLanguage, VisionLanguageModel,
    VisionNetwork, expand_image_tokens, is_vision_language,
};
pub use weights::Weights;
