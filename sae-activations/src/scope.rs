//! What of a model a job over a dataset loads (see [`LoadScope`]): the layers up to the deepest
//! hook it reads, and the vision tower only when the dataset has images.

use burn::tensor::backend::Backend;
use sae_data::{Dataset, Kind};
use sae_models::{AnyModel, LoadScope};

use crate::error::Result;

/// The part of `model` (a `--model` spec) that a job reading `hooks` over `dataset` needs; the
/// job's recorder must end the pass after the deepest of `hooks`.
pub fn dataset_scope<'a, B: Backend>(
    model: &str,
    hooks: impl IntoIterator<Item = &'a str>,
    dataset: &Dataset,
) -> Result<LoadScope> {
    let points = AnyModel::<B>::hook_points_of(model)?;
    Ok(LoadScope::through(&points, hooks, has_images(dataset)))
}

/// True when the rows of `dataset` may hold images (chats; plain texts never do).
pub fn has_images(dataset: &Dataset) -> bool {
    dataset.kind() == Kind::Chat
}
