//! Training sparse autoencoders on frozen models: the trainer (AdamW, schedules, decoder
//! normalisation, dead latents and AuxK), the TOML run configuration, metrics, checkpoints with
//! exact resume, TensorBoard logs, and evaluation (FVU, L0, CE and KL loss recovered).

pub mod activations;
pub mod adamw;
pub mod batch_model;
pub mod checkpoint;
pub mod config;
pub mod error;
pub mod eval;
pub mod init;
pub mod metrics;
pub mod plot;
pub mod reading;
pub mod run;
pub mod schedule;
pub mod storage;
pub mod tensorboard;
pub mod trainer;

pub use batch_model::BatchModel;
pub use config::{BiasInit, Schedule, Strategy, TrainConfig};
pub use error::{Result, TrainError};
pub use eval::{EvalConfig, EvalReport, evaluate};
pub use metrics::StepRecord;
pub use reading::ReadConfig;
pub use run::{RunSummary, resume, train};
pub use trainer::{HookMetrics, HookTrainer, Trainer};
