//! The trait every vision-language network implements ([`VisionLanguage`]), and
//! [`VisionNetwork`], any of them loaded with its image processor behind one type.

use std::fmt::Debug;
use std::path::Path;

use burn::tensor::backend::Backend;
use burn::tensor::{DType, Int, Tensor};
use image::DynamicImage;
use sae_core::{HookPoint, HookedModule, Hooks};

use super::images::{ImageInputs, ProcessedImages};
use crate::config::DecoderConfig;
use crate::decoder::{KvCache, LmOutput, VlInput};
use crate::error::Result;
use crate::generate::{ImageLm, WithImages};
use crate::image_processor::ProcessorSettings;
use crate::scope::LoadScope;
use crate::token_layout::ImageTokenLayout;

/// A vision-language network: what a model folder under this crate implements to run behind
/// [`VisionLanguageModel`](super::VisionLanguageModel) (see docs/src/models.md).
pub trait VisionLanguage<B: Backend>: HookedModule<B> + Debug + Sized + 'static {
    /// What its image processor returns.
    type Images: ImageInputs;
    /// Its image processor.
    type Processor: ProcessorSettings + Debug + Clone + 'static;
    /// The `model_type`s of `config.json` it runs.
    const MODEL_TYPES: &'static [&'static str];
    /// The image placeholder as the tokenizer spells it (`<|image_pad|>`, `<image>`).
    const PLACEHOLDER: &'static str;
    /// Its processor also returns `mm_token_type_ids` (1 for image tokens, 0 for text).
    const TOKEN_TYPE_IDS: bool = false;

    /// Loads what `scope` needs of the network from a Hugging Face folder, computing in
    /// `dtype`.
    fn load_network(
        dir: &Path,
        dtype: DType,
        scope: &LoadScope,
        device: &B::Device,
    ) -> Result<Self>;

    /// The hook points of the network in a Hugging Face folder, from its config alone.
    fn hook_points_of(dir: &Path) -> Result<Vec<HookPoint>>;

    /// Loads the image processor, then what `scope` needs of the network.
    fn load(
        dir: &Path,
        dtype: DType,
        scope: &LoadScope,
        device: &B::Device,
    ) -> Result<(Self, Self::Processor)> {
        let processor = Self::Processor::from_model_dir(dir)?;
        Ok((Self::load_network(dir, dtype, scope, device)?, processor))
    }

    /// The language model's configuration.
    fn text_config(&self) -> &DecoderConfig;

    /// The placeholder token id, one per image token.
    fn image_token(&self) -> i64;

    /// One prompt's images processed, and how many tokens each takes.
    fn process_images(
        &self,
        processor: &Self::Processor,
        images: &[DynamicImage],
    ) -> Result<(Self::Images, Vec<usize>)>;

    /// For each image: how many tokens it takes, and which of them form a grid over it.
    fn token_layouts(
        &self,
        processor: &Self::Processor,
        images: &Self::Images,
    ) -> Vec<ImageTokenLayout>;

    /// The forward pass over new tokens after those in `cache` (which it extends), the images
    /// as processed on the host; images may come only with the first call.
    fn forward_processed(
        &self,
        input: VlInput<B, Self::Images>,
        cache: &mut KvCache<B>,
        hooks: &mut dyn Hooks<B>,
    ) -> Result<LmOutput<B>>;

    /// The shape transformers gives the output of hook `path` that has `shape` here (the same,
    /// unless the model's towers drop the batch dimension hooks carry).
    fn transformers_shape(path: &str, shape: &[usize]) -> Vec<usize> {
        let _ = path;
        shape.to_vec()
    }
}

/// A vision-language forward pass's input with the images as processed on the host.
pub type VisionInput<B> = VlInput<B, ProcessedImages>;

/// Any [`VisionLanguage`] network with its image processor.
#[derive(Debug)]
pub struct VisionNetwork<B: Backend>(Box<dyn Network<B>>);

impl<B: Backend> VisionNetwork<B> {
    /// `network` with its image processor.
    pub fn new<N: VisionLanguage<B>>(network: N, processor: N::Processor) -> Self {
        VisionNetwork(Box::new(Loaded { network, processor }))
    }

    /// Loads what `scope` needs of a network of type `N` from a Hugging Face folder.
    pub fn load<N: VisionLanguage<B>>(
        dir: &Path,
        dtype: DType,
        scope: &LoadScope,
        device: &B::Device,
    ) -> Result<Self> {
        let (network, processor) = N::load(dir, dtype, scope, device)?;
        Ok(Self::new(network, processor))
    }

    /// The language model's configuration.
    pub fn text_config(&self) -> &DecoderConfig {
        self.0.text_config()
    }

    /// The placeholder token id, one per image token.
    pub fn image_token(&self) -> i64 {
        self.0.image_token()
    }

    /// The image placeholder as the tokenizer spells it.
    pub fn placeholder(&self) -> &'static str {
        self.0.placeholder()
    }

    /// The processor also returns `mm_token_type_ids`.
    pub fn token_type_ids(&self) -> bool {
        self.0.token_type_ids()
    }

    /// One prompt's images processed, and how many tokens each takes.
    pub fn process_images(&self, images: &[DynamicImage]) -> Result<(ProcessedImages, Vec<usize>)> {
        self.0.process_images(images)
    }

    /// For each image: its tokens and their grid (nothing for another model's images).
    pub fn token_layouts(&self, images: &ProcessedImages) -> Vec<ImageTokenLayout> {
        self.0.token_layouts(images)
    }

    /// The forward pass over new tokens after those in `cache` (which it extends); images may
    /// come only with the first call.
    pub fn forward_cached(
        &self,
        input: VisionInput<B>,
        cache: &mut KvCache<B>,
        hooks: &mut dyn Hooks<B>,
    ) -> Result<LmOutput<B>> {
        self.0.forward_cached(input, cache, hooks)
    }

    /// The shape transformers gives the output of hook `path` that has `shape` here.
    pub fn transformers_shape(&self, path: &str, shape: &[usize]) -> Vec<usize> {
        self.0.transformers_shape(path, shape)
    }

    /// A [`Generator`](crate::Generator) for prompts holding `images`' tokens.
    pub fn generator(
        &self,
        images: Option<ProcessedImages>,
    ) -> WithImages<'_, Self, ProcessedImages> {
        WithImages::new(self, images)
    }
}

impl<B: Backend> ImageLm<B> for VisionNetwork<B> {
    type Images = ProcessedImages;

    fn forward_images(
        &self,
        input_ids: Tensor<B, 2, Int>,
        attention_mask: Tensor<B, 2, Int>,
        images: Option<ProcessedImages>,
        cache: &mut KvCache<B>,
        hooks: &mut dyn Hooks<B>,
    ) -> Result<Tensor<B, 3>> {
        let input = VisionInput {
            input_ids,
            attention_mask: Some(attention_mask),
            images,
        };
        let out = self.forward_cached(input, cache, hooks)?;
        Ok(out.logits.expect("generation hooks do not stop the pass"))
    }

    fn context(&self) -> usize {
        self.text_config().max_position_embeddings
    }
}

impl<B: Backend> HookedModule<B> for VisionNetwork<B> {
    type Input = VisionInput<B>;
    type Output = Result<LmOutput<B>>;

    fn hook_points(&self) -> Vec<HookPoint> {
        self.0.hook_points()
    }

    fn forward_hooked(&self, input: VisionInput<B>, hooks: &mut dyn Hooks<B>) -> Self::Output {
        self.forward_cached(input, &mut KvCache::new(), hooks)
    }
}

/// A network and its processor.
#[derive(Debug)]
struct Loaded<N, P> {
    network: N,
    processor: P,
}

/// [`VisionLanguage`] with the image types erased, behind [`VisionNetwork`].
trait Network<B: Backend>: Debug {
    fn text_config(&self) -> &DecoderConfig;
    fn image_token(&self) -> i64;
    fn placeholder(&self) -> &'static str;
    fn token_type_ids(&self) -> bool;
    fn hook_points(&self) -> Vec<HookPoint>;
    fn process_images(&self, images: &[DynamicImage]) -> Result<(ProcessedImages, Vec<usize>)>;
    fn token_layouts(&self, images: &ProcessedImages) -> Vec<ImageTokenLayout>;
    fn forward_cached(
        &self,
        input: VisionInput<B>,
        cache: &mut KvCache<B>,
        hooks: &mut dyn Hooks<B>,
    ) -> Result<LmOutput<B>>;
    fn transformers_shape(&self, path: &str, shape: &[usize]) -> Vec<usize>;
}

impl<B: Backend, N: VisionLanguage<B, Processor = P>, P: Debug> Network<B> for Loaded<N, P> {
    fn text_config(&self) -> &DecoderConfig {
        self.network.text_config()
    }

    fn image_token(&self) -> i64 {
        self.network.image_token()
    }

    fn placeholder(&self) -> &'static str {
        N::PLACEHOLDER
    }

    fn token_type_ids(&self) -> bool {
        N::TOKEN_TYPE_IDS
    }

    fn hook_points(&self) -> Vec<HookPoint> {
        self.network.hook_points()
    }

    fn process_images(&self, images: &[DynamicImage]) -> Result<(ProcessedImages, Vec<usize>)> {
        let (processed, counts) = self.network.process_images(&self.processor, images)?;
        Ok((ProcessedImages::new(processed), counts))
    }

    fn token_layouts(&self, images: &ProcessedImages) -> Vec<ImageTokenLayout> {
        match images.downcast_ref() {
            Some(images) => self.network.token_layouts(&self.processor, images),
            None => Vec::new(),
        }
    }

    fn forward_cached(
        &self,
        input: VisionInput<B>,
        cache: &mut KvCache<B>,
        hooks: &mut dyn Hooks<B>,
    ) -> Result<LmOutput<B>> {
        let input = input.map_images(ProcessedImages::downcast)?;
        self.network.forward_processed(input, cache, hooks)
    }

    fn transformers_shape(&self, path: &str, shape: &[usize]) -> Vec<usize> {
        N::transformers_shape(path, shape)
    }
}
