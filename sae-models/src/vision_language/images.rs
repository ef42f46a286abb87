//! Processed images on the host. Each model's processor returns its own type ([`ImageInputs`]);
//! [`ProcessedImages`] holds any of them, so data loaders and prompts carry images without
//! knowing the model, and the model takes back its own type (or refuses another model's).

use std::any::Any;
use std::fmt::Debug;

use sae_core::HostTensor;

use crate::error::{ModelError, Result};

/// What a model's image processor returns for one or more prompts, in transformers' layout.
pub trait ImageInputs: Debug + Clone + PartialEq + 'static {
    /// How many images.
    fn count(&self) -> usize;

    /// The pixel values (`pixel_values`).
    fn pixel_values(&self) -> &HostTensor;

    /// The images of several prompts, one prompt after the other (`parts` is not empty).
    fn concat(parts: Vec<Self>) -> Self;

    /// The processor's outputs as transformers names them (`pixel_values`, `image_grid_thw`,
    /// ...).
    fn tensors(&self) -> Vec<(&'static str, HostTensor)>;
}

/// Images processed by some model's processor.
#[derive(Debug)]
pub struct ProcessedImages(Box<dyn AnyImages>);

impl ProcessedImages {
    /// Wraps a processor's output.
    pub fn new<I: ImageInputs>(images: I) -> Self {
        ProcessedImages(Box::new(images))
    }

    /// The processor's output, when it is of type `I`.
    pub fn downcast_ref<I: ImageInputs>(&self) -> Option<&I> {
        self.0.as_any().downcast_ref()
    }

    /// The processor's output of type `I`; an error for another model's images.
    pub fn downcast<I: ImageInputs>(self) -> Result<I> {
        self.0
            .into_any()
            .downcast()
            .map(|b| *b)
            .map_err(|_| other_processor())
    }

    /// How many images.
    pub fn count(&self) -> usize {
        self.0.count()
    }

    /// The pixel values.
    pub fn pixel_values(&self) -> &HostTensor {
        self.0.pixel_values()
    }

    /// The processor's outputs as transformers names them.
    pub fn tensors(&self) -> Vec<(&'static str, HostTensor)> {
        self.0.tensors()
    }

    /// The images of several prompts, one after the other (`None` when there are none); an
    /// error when they come from different processors.
    pub fn concat(parts: Vec<ProcessedImages>) -> Result<Option<Self>> {
        let mut parts = parts.into_iter().map(|p| p.0);
        let Some(first) = parts.next() else {
            return Ok(None);
        };
        Ok(Some(ProcessedImages(first.concat_dyn(parts.collect())?)))
    }
}

impl Clone for ProcessedImages {
    fn clone(&self) -> Self {
        ProcessedImages(self.0.clone_box())
    }
}

impl PartialEq for ProcessedImages {
    fn eq(&self, other: &Self) -> bool {
        self.0.eq_dyn(other.0.as_ref())
    }
}

/// The error for images another model's processor made.
pub(crate) fn other_processor() -> ModelError {
    ModelError::BadInput("the images were processed for another model".into())
}

/// [`ImageInputs`] behind a pointer.
trait AnyImages: Debug {
    fn as_any(&self) -> &dyn Any;
    fn into_any(self: Box<Self>) -> Box<dyn Any>;
    fn clone_box(&self) -> Box<dyn AnyImages>;
    fn eq_dyn(&self, other: &dyn AnyImages) -> bool;
    fn count(&self) -> usize;
    fn pixel_values(&self) -> &HostTensor;
    fn tensors(&self) -> Vec<(&'static str, HostTensor)>;
    /// These images followed by `more`'s.
    fn concat_dyn(self: Box<Self>, more: Vec<Box<dyn AnyImages>>) -> Result<Box<dyn AnyImages>>;
}

impl<I: ImageInputs> AnyImages for I {
    fn as_any(&self) -> &dyn Any {
        self
    }

    fn into_any(self: Box<Self>) -> Box<dyn Any> {
        self
    }

    fn clone_box(&self) -> Box<dyn AnyImages> {
        Box::new(self.clone())
    }

    fn eq_dyn(&self, other: &dyn AnyImages) -> bool {
        other.as_any().downcast_ref::<I>() == Some(self)
    }

    fn count(&self) -> usize {
        ImageInputs::count(self)
    }

    fn pixel_values(&self) -> &HostTensor {
        ImageInputs::pixel_values(self)
    }

    fn tensors(&self) -> Vec<(&'static str, HostTensor)> {
        ImageInputs::tensors(self)
    }

    fn concat_dyn(self: Box<Self>, more: Vec<Box<dyn AnyImages>>) -> Result<Box<dyn AnyImages>> {
        let mut parts = vec![*self];
        for part in more {
            let part = part
                .into_any()
                .downcast::<I>()
                .map_err(|_| other_processor())?;
            parts.push(*part);
        }
        Ok(Box::new(I::concat(parts)))
    }
}

/// Pixel tensors stacked along their first dimension; when their second dimensions differ
/// (LLaVA's tiles), each is padded with zeros to the largest.
pub(crate) fn stack(parts: &[&HostTensor]) -> HostTensor {
    let widest = parts.iter().map(|p| p.shape[1]).max().unwrap_or(0);
    let mut shape = parts[0].shape.clone();
    shape[0] = parts.iter().map(|p| p.shape[0]).sum();
    shape[1] = widest;
    let inner: usize = shape[2..].iter().product();
    let mut values = Vec::with_capacity(shape.iter().product());
    for part in parts {
        let data = part.to_f32();
        for item in data.chunks(part.shape[1] * inner) {
            values.extend_from_slice(item);
            values.resize(values.len() + (widest - part.shape[1]) * inner, 0.0);
        }
    }
    HostTensor::f32(shape, values)
}
