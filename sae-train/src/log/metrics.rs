//! Per-step metrics: the record written to `RUN_DIR/metrics.jsonl` (one JSON object per line)
//! and how the file is kept consistent with the checkpoint a run resumes from.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::error::{Result, io};
use crate::trainer::HookMetrics;

/// The metrics file of a run.
pub const METRICS_FILE: &str = "metrics.jsonl";

/// One line of `metrics.jsonl`: the step's metrics averaged over the run's SAEs (learning rate
/// and tokens from the first), and each SAE's own when there are several.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StepRecord {
    /// Optimiser steps done (1 for the first step).
    pub step: u64,
    /// Loss, FVU, L0, dead %, AuxK, learning rate, gradient norm, tokens.
    #[serde(flatten)]
    pub metrics: HookMetrics,
    /// Tokens trained on per second of this step (model forward and SAE step).
    pub tokens_per_s: f64,
    /// Training seconds since the run started.
    pub elapsed_s: f64,
    /// Seconds of the step that rank 0 spent in collectives (communication and waiting for
    /// the other ranks), in a run of several devices.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub collective_s: Option<f64>,
    /// Each SAE's metrics, by hook path (only when the run trains several).
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub hooks: BTreeMap<String, HookMetrics>,
}

impl StepRecord {
    /// Combines the SAEs' metrics of step `step`.
    pub fn new(step: u64, paths: &[String], per_hook: Vec<HookMetrics>, seconds: f64) -> Self {
        let n = per_hook.len().max(1) as f64;
        let mean = |f: fn(&HookMetrics) -> f64| per_hook.iter().map(f).sum::<f64>() / n;
        let multi: Vec<f64> = per_hook.iter().filter_map(|h| h.multi_topk_fvu).collect();
        let tokens = per_hook.first().map_or(0, |h| h.tokens);
        let metrics = HookMetrics {
            loss: mean(|h| h.loss),
            fvu: mean(|h| h.fvu),
            l0: mean(|h| h.l0),
            dead_pct: mean(|h| h.dead_pct),
            auxk: mean(|h| h.auxk),
            multi_topk_fvu: (!multi.is_empty())
                .then(|| multi.iter().sum::<f64>() / multi.len() as f64),
            grad_norm: mean(|h| h.grad_norm),
            lr: per_hook.first().map_or(0.0, |h| h.lr),
            tokens,
        };
        StepRecord {
            step,
            metrics,
            tokens_per_s: tokens as f64 / seconds.max(1e-9),
            elapsed_s: 0.0,
            collective_s: None,
            hooks: if per_hook.len() > 1 {
                paths.iter().cloned().zip(per_hook).collect()
            } else {
                BTreeMap::new()
            },
        }
    }

    /// The scalars TensorBoard shows, by tag.
    pub fn scalars(&self) -> Vec<(String, f32)> {
        let m = &self.metrics;
        let mut out = vec![
            ("train/loss".to_string(), m.loss as f32),
            ("train/fvu".to_string(), m.fvu as f32),
            ("train/l0".to_string(), m.l0 as f32),
            ("train/dead_pct".to_string(), m.dead_pct as f32),
            ("train/auxk".to_string(), m.auxk as f32),
            ("train/lr".to_string(), m.lr as f32),
            ("train/grad_norm".to_string(), m.grad_norm as f32),
            ("train/tokens_per_s".to_string(), self.tokens_per_s as f32),
        ];
        for (path, h) in &self.hooks {
            out.push((format!("{path}/fvu"), h.fvu as f32));
            out.push((format!("{path}/l0"), h.l0 as f32));
            out.push((format!("{path}/dead_pct"), h.dead_pct as f32));
        }
        out
    }
}

/// Appends step records to `metrics.jsonl`, flushing each line.
pub struct MetricsLog {
    path: PathBuf,
    file: std::fs::File,
}

impl MetricsLog {
    /// Opens the run's metrics file for appending, first dropping every line after step
    /// `keep_through` (a resumed run recomputes them) and any line a crash cut short.
    pub fn open(run_dir: &Path, keep_through: u64) -> Result<Self> {
        let path = run_dir.join(METRICS_FILE);
        let kept: Vec<String> = read_lines(&path)?
            .into_iter()
            .filter(|(step, _)| *step <= keep_through)
            .map(|(_, line)| line)
            .collect();
        let mut text = kept.join("\n");
        if !text.is_empty() {
            text.push('\n');
        }
        sae_core::tensor_file::write_atomic(&path, text.as_bytes())?;
        let file = std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .map_err(io(&path))?;
        Ok(MetricsLog { path, file })
    }

    /// Appends one record.
    pub fn append(&mut self, record: &StepRecord) -> Result<()> {
        let line = serde_json::to_string(record).expect("metrics always serialise");
        writeln!(self.file, "{line}")
            .and_then(|()| self.file.flush())
            .map_err(io(&self.path))
    }
}

/// The complete records of a metrics file, parsed, with their steps and lines (none if the
/// file does not exist; a line a crash cut short is left out).
fn records(path: &Path) -> Result<Vec<(u64, String, serde_json::Value)>> {
    if !path.is_file() {
        return Ok(Vec::new());
    }
    let text = std::fs::read_to_string(path).map_err(io(path))?;
    Ok(text
        .lines()
        .filter_map(|line| {
            let value: serde_json::Value = serde_json::from_str(line).ok()?;
            Some((value["step"].as_u64()?, line.to_string(), value))
        })
        .collect())
}

/// The complete lines of a metrics file with their steps.
fn read_lines(path: &Path) -> Result<Vec<(u64, String)>> {
    Ok(records(path)?
        .into_iter()
        .map(|(step, line, _)| (step, line))
        .collect())
}

/// `(step, value)` of each of `fields` over a metrics file, for plots (one read).
pub fn series(path: &Path, fields: &[&str]) -> Result<Vec<Vec<(f64, f64)>>> {
    let records = records(path)?;
    Ok(fields
        .iter()
        .map(|field| {
            records
                .iter()
                .filter_map(|(step, _, value)| Some((*step as f64, value[*field].as_f64()?)))
                .collect()
        })
        .collect())
}
