//! Training sparse autoencoders on frozen models: the trainer (AdamW, schedules, decoder
//! normalisation, dead latents and AuxK), the TOML run configuration, metrics, checkpoints with
//! exact resume, what a run logs ([`log`]: metrics.jsonl, TensorBoard, curves), and evaluation
//! (FVU, L0, CE and KL loss recovered). Running the frozen model over the data is
//! `sae-activations`'s.

pub mod adamw;
pub mod checkpoint;
pub mod collective;
pub mod config;
pub mod error;
pub mod eval;
pub mod init;
pub mod interrupt;
pub mod log;
pub mod run;
pub mod schedule;
pub mod storage;
pub mod trainer;
pub mod zero;

pub use config::{BiasInit, Schedule, Strategy, TrainConfig};
pub use error::{Result, TrainError};
pub use eval::{EvalConfig, EvalReport, evaluate};
pub use log::metrics::StepRecord;
pub use run::{RunSummary, resume, train};
pub use trainer::{HookMetrics, HookTrainer, Trainer};
