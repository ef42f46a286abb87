//! Sparse autoencoders on Burn: the SAE family ([`Sae`], [`SaeConfig`]), PEFT-style injection
//! into any model with named hook points ([`inject`], [`SaeModel`], [`HookedModule`]), and the
//! checkpoint layouts of SAE Made Easy, EleutherAI sparsify and SAELens ([`formats`]).
//!
//! ```no_run
//! use sae_core::{AdapterConfig, SaeConfig, TargetModules};
//! let config = AdapterConfig {
//!     sae: SaeConfig::topk(32, 4096),
//!     target_modules: TargetModules::Names(vec!["model.layers.24.mlp.down_proj".into()]),
//! };
//! ```

#[cfg(feature = "mimalloc")]
pub mod allocator;
pub mod config;
pub mod convert;
pub mod encode_file;
pub mod error;
pub mod folder;
pub mod formats;
pub mod hooks;
pub mod host;
pub mod inject;
pub mod kernels;
pub mod mapped;
pub mod memory;
#[cfg(feature = "parity")]
pub mod parity;
pub mod paths;
pub mod reduce;
pub mod sae;
mod scratch;
pub mod select;
pub mod targets;
pub mod tensor_file;

pub use config::{Architecture, SaeConfig};
pub use encode_file::{Encoded, encode_tokens};
pub use error::{Result, SaeError};
pub use folder::FolderLock;
pub use formats::{Checkpoint, HostSae, Layout};
pub use hooks::{Chain, FirstError, HookKind, HookPoint, HookedModule, Hooks, NoHooks, Recorder};
pub use inject::{
    Adapter, AdapterConfig, DEFAULT_ADAPTER, Forward, Mode, Record, SaeModel, inject,
};
pub use kernels::{SaeAutodiffBackend, SaeBackend};
pub use sae::host_grad::HostStep;
pub use sae::params::{DeviceParams, HostParams, Params};
pub use sae::share::BatchShare;
pub use sae::{Sae, SaeOutput, SparseLatents};
pub use targets::TargetModules;
pub use tensor_file::{HostData, HostTensor, StorageDtype, TensorFile};
