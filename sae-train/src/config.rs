//! The training configuration: one TOML file (every key optional but the model, the data and the
//! hook points), with dotted-key overrides from the command line (`train.lr = 1e-3`). Unknown
//! keys are rejected by name.

use std::path::{Path, PathBuf};

use sae_core::{SaeConfig, StorageDtype, TargetModules};
use serde::{Deserialize, Serialize};

use crate::error::{Result, TrainError};

/// Everything a training run needs; saved as `config.toml` in the run folder.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainConfig {
    /// The run folder (metrics, checkpoints, the trained SAEs).
    #[serde(default = "default_out")]
    pub out: PathBuf,
    /// The hook points that get an SAE each: a list of paths or suffixes, or one full-match
    /// regex (PEFT's `target_modules`).
    pub target_modules: TargetModules,
    /// The frozen model.
    pub model: ModelConfig,
    /// The training data.
    pub data: DataConfig,
    /// The SAE trained at every hook point.
    #[serde(default)]
    pub sae: SaeConfig,
    /// Optimisation.
    #[serde(default)]
    pub train: OptimConfig,
    /// Checkpointing.
    #[serde(default)]
    pub checkpoint: CheckpointConfig,
    /// Logging.
    #[serde(default)]
    pub log: LogConfig,
    /// Data parallelism.
    #[serde(default)]
    pub parallel: ParallelConfig,
}

/// How the SAEs' work is spread over devices.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Strategy {
    /// Every device holds the SAEs and optimiser; gradients are averaged.
    #[default]
    Ddp,
    /// Optimiser state sharded (ZeRO stage 1).
    Zero1,
    /// Optimiser state and gradients sharded (ZeRO stage 2).
    Zero2,
    /// Optimiser state, gradients and parameters sharded (ZeRO stage 3).
    Zero3,
}

/// Devices and strategy (`--devices`, `--parallel`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ParallelConfig {
    /// Devices to train on.
    pub devices: usize,
    /// The data-parallel strategy.
    pub strategy: Strategy,
    /// The longest a collective waits for the other ranks, in seconds, before this rank stops
    /// the job (a rank that hangs).
    pub timeout_s: f64,
}

impl Default for ParallelConfig {
    fn default() -> Self {
        ParallelConfig {
            devices: 1,
            strategy: Strategy::Ddp,
            timeout_s: 300.0,
        }
    }
}

fn default_out() -> PathBuf {
    PathBuf::from("runs/sae")
}

/// Which model, and how it computes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelConfig {
    /// A local HF folder, a hub id or a `.gguf` file.
    pub name: String,
    /// Compute dtype of the frozen model: `f32`, `f16` or `bf16` (the SAEs train in f32).
    #[serde(default)]
    pub dtype: StorageDtype,
}

/// Where the data is and how it becomes sequences.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataConfig {
    /// A dataset folder written by `sae preprocess` (or any standard Parquet folder).
    pub path: PathBuf,
    /// Tokens per packed context (text datasets).
    #[serde(default = "default_context")]
    pub context: usize,
    /// Longest sequence (chat datasets, one conversation per sequence, right-padded).
    #[serde(default = "default_max_len")]
    pub max_len: usize,
    /// Cut conversations longer than `max_len` (else skip them).
    #[serde(default = "yes")]
    pub truncate: bool,
    /// Shuffle rows (by the run's seed).
    #[serde(default = "yes")]
    pub shuffle: bool,
}

fn default_context() -> usize {
    256
}

fn default_max_len() -> usize {
    2048
}

fn yes() -> bool {
    true
}

/// How the learning rate changes after warmup.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Schedule {
    /// Stays at `lr`.
    #[default]
    Constant,
    /// Falls linearly to 0 at the last step (sparsify's schedule).
    Linear,
    /// Follows half a cosine down to 0 at the last step.
    Cosine,
}

/// How `b_dec` starts, from the first batch's activations.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum BiasInit {
    /// The geometric median (Weiszfeld's algorithm), robust to outliers.
    #[default]
    GeometricMedian,
    /// The mean (sparsify 1.x).
    Mean,
    /// Zero.
    Zeros,
}

/// Optimisation and what the loss sees.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct OptimConfig {
    /// Optimiser steps: the run's total length (schedules follow it).
    pub steps: u64,
    /// Sequences per micro-batch.
    pub batch_size: usize,
    /// Micro-batches per optimiser step.
    pub grad_acc_steps: usize,
    /// Peak learning rate; `None` means sparsify's `2e-4 / sqrt(num_latents / 2^14)`.
    pub lr: Option<f64>,
    /// Adam's `beta1`.
    pub beta1: f64,
    /// Adam's `beta2`.
    pub beta2: f64,
    /// Adam's epsilon (PyTorch's default).
    pub eps: f64,
    /// Decoupled weight decay (AdamW) on the encoder and decoder weights.
    pub weight_decay: f64,
    /// Steps of linear warmup from 0.
    pub warmup_steps: u64,
    /// The decay after warmup.
    pub schedule: Schedule,
    /// Clip each SAE's gradient to this global L2 norm.
    pub grad_clip: Option<f64>,
    /// How `b_dec` starts.
    pub b_dec_init: BiasInit,
    /// Scale activations so their mean norm is `sqrt(d_in)` (estimated on the first batch); the
    /// saved SAEs fold the scale back in and take raw activations.
    pub normalize_activations: bool,
    /// Leave the tokenizer's special tokens out of the loss.
    pub exclude_special_tokens: bool,
    /// Token ids left out of the loss (e.g. image placeholder tokens).
    pub exclude_tokens: Vec<i64>,
    /// Leave the first this many positions of every sequence out of the loss (attention
    /// sinks, whose huge activations would dominate the FVU).
    pub skip_first_tokens: usize,
    /// Seed of the SAE initialisation and the data order.
    pub seed: u64,
}

impl Default for OptimConfig {
    fn default() -> Self {
        OptimConfig {
            steps: 1000,
            batch_size: 8,
            grad_acc_steps: 1,
            lr: None,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.0,
            warmup_steps: 0,
            schedule: Schedule::Constant,
            grad_clip: None,
            b_dec_init: BiasInit::GeometricMedian,
            normalize_activations: false,
            exclude_special_tokens: false,
            exclude_tokens: Vec::new(),
            skip_first_tokens: 0,
            seed: 0,
        }
    }
}

impl OptimConfig {
    /// The peak learning rate for an SAE of `num_latents` latents.
    pub fn lr_for(&self, num_latents: usize) -> f64 {
        self.lr
            .unwrap_or_else(|| 2e-4 / (num_latents as f64 / 16384.0).sqrt())
    }
}

/// When checkpoints are written and how many are kept.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CheckpointConfig {
    /// Every this many steps (and at the end); 0 means only at the end.
    pub save_every: u64,
    /// The last this many checkpoints are kept.
    pub keep: usize,
    /// End the run at this step, with a checkpoint (preemptible jobs train in chunks).
    pub stop_at: Option<u64>,
}

impl Default for CheckpointConfig {
    fn default() -> Self {
        CheckpointConfig {
            save_every: 500,
            keep: 2,
            stop_at: None,
        }
    }
}

/// What is logged where.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogConfig {
    /// Write TensorBoard event files to `RUN_DIR/tensorboard`.
    pub tensorboard: bool,
    /// Show a progress bar on the console.
    pub progress: bool,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            tensorboard: true,
            progress: true,
        }
    }
}

impl TrainConfig {
    /// Parses a configuration from TOML text, then applies `overrides` (dotted keys such as
    /// `train.lr`, TOML values) in order. `source` names the text in errors.
    pub fn parse(text: &str, source: &str, overrides: &[(String, toml::Value)]) -> Result<Self> {
        let mut table: toml::Table =
            text.parse()
                .map_err(|e: toml::de::Error| TrainError::Config {
                    origin: source.to_string(),
                    message: e.message().to_string(),
                })?;
        for (key, value) in overrides {
            set_dotted(&mut table, key, value.clone()).map_err(|message| TrainError::Config {
                origin: source.to_string(),
                message,
            })?;
        }
        let config: TrainConfig = serde_path_to_error::deserialize(toml::Value::Table(table))
            .map_err(|e| {
                let key = e.path().to_string();
                let message = e.inner().message();
                TrainError::Config {
                    origin: source.to_string(),
                    message: if key == "." {
                        message.to_string()
                    } else {
                        format!("{key}: {message}")
                    },
                }
            })?;
        config.validate().map_err(|message| TrainError::Config {
            origin: source.to_string(),
            message,
        })?;
        Ok(config)
    }

    /// Reads a configuration file and applies `overrides`.
    pub fn load(path: &Path, overrides: &[(String, toml::Value)]) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(crate::error::io(path))?;
        Self::parse(&text, &path.display().to_string(), overrides)
    }

    /// Makes the run folder, the data's path and a local model's path absolute (a hub id stays
    /// as it is), so that the configuration means the same from any working directory.
    pub fn make_paths_absolute(&mut self) -> std::io::Result<()> {
        self.out = std::path::absolute(&self.out)?;
        self.data.path = std::path::absolute(&self.data.path)?;
        let model = Path::new(&self.model.name);
        if model.exists() {
            self.model.name = std::path::absolute(model)?.display().to_string();
        }
        Ok(())
    }

    /// The configuration as TOML.
    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).expect("a training config always serialises to TOML")
    }

    /// Checks values that parse but cannot work.
    fn validate(&self) -> std::result::Result<(), String> {
        let t = &self.train;
        if t.steps == 0 {
            return Err("train.steps must be at least 1".into());
        }
        if t.batch_size == 0 || t.grad_acc_steps == 0 {
            return Err("train.batch_size and train.grad_acc_steps must be at least 1".into());
        }
        if !(0.0..1.0).contains(&t.beta1) || !(0.0..1.0).contains(&t.beta2) {
            return Err("train.beta1 and train.beta2 must be in [0, 1)".into());
        }
        if t.lr.is_some_and(|lr| !(lr > 0.0 && lr.is_finite())) {
            return Err("train.lr must be a positive number".into());
        }
        if t.grad_clip.is_some_and(|c| !(c > 0.0 && c.is_finite())) {
            return Err(
                "train.grad_clip must be a positive number (leave it out to not clip)".into(),
            );
        }
        if self.data.context == 0 || self.data.max_len == 0 {
            return Err("data.context and data.max_len must be at least 1".into());
        }
        if self.checkpoint.stop_at == Some(0) {
            return Err("checkpoint.stop_at must be at least 1".into());
        }
        if self.checkpoint.keep == 0 {
            return Err("checkpoint.keep must be at least 1".into());
        }
        let p = &self.parallel;
        if p.devices == 0 {
            return Err("parallel.devices must be at least 1".into());
        }
        if !(p.timeout_s > 0.0 && p.timeout_s.is_finite()) {
            return Err("parallel.timeout_s must be a positive number of seconds".into());
        }
        Ok(())
    }
}

/// Sets `table[a][b][c] = value` for the key `a.b.c`, creating tables on the way.
fn set_dotted(
    table: &mut toml::Table,
    key: &str,
    value: toml::Value,
) -> std::result::Result<(), String> {
    let mut parts: Vec<&str> = key.split('.').collect();
    let last = parts
        .pop()
        .filter(|p| !p.is_empty())
        .ok_or_else(|| format!("empty key {key:?}"))?;
    let mut current = table;
    for part in parts {
        let entry = current
            .entry(part.to_string())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        current = entry
            .as_table_mut()
            .ok_or_else(|| format!("{key}: `{part}` is not a table"))?;
    }
    current.insert(last.to_string(), value);
    Ok(())
}

/// Parses the value of a `KEY=VALUE` override: TOML syntax (`1e-3`, `true`, `[1, 2]`,
/// `"text"`), else the bare text as a string.
pub fn parse_value(text: &str) -> toml::Value {
    format!("v = {text}")
        .parse::<toml::Table>()
        .ok()
        .and_then(|mut t| t.remove("v"))
        .unwrap_or_else(|| toml::Value::String(text.to_string()))
}
