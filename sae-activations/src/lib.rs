//! Running a frozen model over a dataset, the part training ([`sae-train`]), evaluation and
//! latent caching ([`sae-interp`]) share: dataset batches as model inputs ([`input`]), how a
//! dataset is read once in order ([`reading`]), which tokens count and the rows an SAE sees
//! ([`tokens`]), what of the model such a job loads ([`scope`]), and the tensor names of an activations file ([`file`]). Hook outputs are
//! recorded with [`sae_core::Recorder`].
//!
//! [`sae-train`]: https://docs.rs/sae-train
//! [`sae-interp`]: https://docs.rs/sae-interp

pub mod error;
pub mod file;
pub mod input;
pub mod reading;
pub mod scope;
pub mod tokens;

pub use error::{ActivationsError, Result};
pub use input::{BatchModel, lm_input, vision_input};
pub use reading::{ReadConfig, sequence_batching};
pub use scope::{dataset_scope, has_images};
pub use tokens::{TokenFilter, hook_rows, select_tokens};
