//! Checkpoints. `RUN_DIR/checkpoints/step-00000100/` holds `adapter/` (the SAEs in SAE Made
//! Easy's PEFT layout, activation scale folded in: what anyone loads), `state.safetensors` (the
//! raw parameters, AdamW moments and dead-latent counters, bit for bit) and `state.json` (step,
//! data cursor, scales). Each is written into a hidden temporary folder, synced, then renamed
//! into place, so a crash or a full disk never leaves a half checkpoint where a good one was;
//! the last `keep` checkpoints are kept.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use sae_core::formats::{self, Checkpoint, HostSae, Layout};
use sae_core::tensor_file::{HostData, HostTensor, StorageDtype, TensorFile, read_json};
use sae_core::{Sae, SaeAutodiffBackend, SaeConfig};
use sae_data::LoaderCursor;
use serde::{Deserialize, Serialize};

use crate::adamw::Moments;
use crate::config::{OptimConfig, TrainConfig};
use crate::error::{Result, TrainError, io};
use crate::trainer::{HookTrainer, Trainer};

/// The folder of a run's checkpoints.
pub const CHECKPOINTS: &str = "checkpoints";
const STATE_JSON: &str = "state.json";
const STATE_TENSORS: &str = "state.safetensors";
/// The PEFT adapter inside a checkpoint.
pub const ADAPTER: &str = "adapter";

/// What a checkpoint records besides tensors.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct State {
    /// Optimiser steps done.
    pub step: u64,
    /// The first batch has initialised `b_dec` and the scales.
    pub initialised: bool,
    /// Tokens trained on so far.
    pub tokens: u64,
    /// Training seconds so far.
    pub elapsed_s: f64,
    /// Where the data loader is.
    pub cursor: LoaderCursor,
    /// Each SAE: hook path, configuration and activation scale.
    pub hooks: Vec<HookState>,
}

/// One SAE's entry in [`State`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HookState {
    /// The hook path.
    pub path: String,
    /// Its configuration (`num_latents` resolved).
    pub config: SaeConfig,
    /// The activation scale.
    pub scale: f32,
}

/// The name of the checkpoint after `step` steps.
fn step_dir(run_dir: &Path, step: u64) -> PathBuf {
    run_dir.join(CHECKPOINTS).join(format!("step-{step:08}"))
}

/// Completed checkpoints of a run, oldest first.
pub fn list(run_dir: &Path) -> Result<Vec<(u64, PathBuf)>> {
    let dir = run_dir.join(CHECKPOINTS);
    if !dir.is_dir() {
        return Ok(Vec::new());
    }
    let mut found = Vec::new();
    for entry in std::fs::read_dir(&dir).map_err(io(&dir))? {
        let path = entry.map_err(io(&dir))?.path();
        let name = path.file_name().unwrap_or_default().to_string_lossy();
        if let Some(step) = name.strip_prefix("step-").and_then(|s| s.parse().ok())
            && path.join(STATE_JSON).is_file()
        {
            found.push((step, path));
        }
    }
    found.sort();
    Ok(found)
}

/// Removes the temporary folders of checkpoints (and of the trained SAEs) a killed run left
/// half-written.
pub fn remove_partial(run_dir: &Path) -> Result<()> {
    sae_core::folder::remove_leftovers(&run_dir.join(crate::run::SAE_DIR))?;
    let dir = run_dir.join(CHECKPOINTS);
    if !dir.is_dir() {
        return Ok(());
    }
    for entry in std::fs::read_dir(&dir).map_err(io(&dir))? {
        let path = entry.map_err(io(&dir))?.path();
        let name = path.file_name().unwrap_or_default().to_string_lossy();
        if name.starts_with('.') && name.contains(".tmp-") {
            std::fs::remove_dir_all(&path).map_err(io(&path))?;
        }
    }
    Ok(())
}

/// The newest completed checkpoint, if any.
pub fn latest(run_dir: &Path) -> Result<Option<PathBuf>> {
    Ok(list(run_dir)?.pop().map(|(_, p)| p))
}

/// Writes the trainer's checkpoint and prunes older ones beyond the run's `checkpoint.keep`.
pub fn save<B: SaeAutodiffBackend>(
    run_dir: &Path,
    trainer: &Trainer<B>,
    moments: Vec<Option<Moments>>,
    state: &State,
    config: &TrainConfig,
) -> Result<PathBuf> {
    let dir = step_dir(run_dir, state.step);
    let keep = config.checkpoint.keep;
    sae_core::folder::write_dir_atomically(&dir, |tmp| {
        // The state first: its tensors (and the moments gathered for them) are dropped before
        // the adapter takes its own copies of the parameters.
        let tensors = trainer
            .hooks
            .iter()
            .zip(moments)
            .flat_map(|(hook, moments)| hook_tensors(hook, moments))
            .collect::<Vec<_>>();
        sae_core::tensor_file::write_tensors(
            &tmp.join(STATE_TENSORS),
            &tensors,
            StorageDtype::F32,
            None,
        )?;
        drop(tensors);
        save_adapter(trainer, config, &tmp.join(ADAPTER))?;
        sae_core::tensor_file::write_json(&tmp.join(STATE_JSON), state)?;
        Ok::<_, TrainError>(())
    })?;
    let all = list(run_dir)?;
    for (_, old) in all.iter().take(all.len().saturating_sub(keep)) {
        std::fs::remove_dir_all(old).map_err(io(old))?;
    }
    Ok(dir)
}

/// Writes the SAEs, for raw activations, to `dir` in the PEFT adapter layout, with the model
/// they were trained on.
pub fn save_adapter<B: SaeAutodiffBackend>(
    trainer: &Trainer<B>,
    config: &TrainConfig,
    dir: &Path,
) -> Result<()> {
    let saes = trainer
        .hooks
        .iter()
        .map(|h| Ok((h.path.clone(), HostSae::from_sae(&h.export()?))))
        .collect::<Result<BTreeMap<_, _>>>()?;
    let checkpoint = Checkpoint {
        layout: Layout::Peft,
        saes,
        target_modules: Some(config.target_modules.clone()),
        base_model: Some(config.model.name.clone()),
        module_paths: true,
    };
    formats::save(&checkpoint, Layout::Peft, dir, StorageDtype::F32)?;
    Ok(())
}

/// One SAE's raw parameters, moments and counters, named `<path>.<param>[.exp_avg|.exp_avg_sq]`
/// and `<path>.tokens_since_fired`.
fn hook_tensors<B: SaeAutodiffBackend>(
    hook: &HookTrainer<B>,
    mut moments: Option<Moments>,
) -> Vec<(String, HostTensor)> {
    let params = hook.params();
    let d = params.b_dec.len();
    // The matrices as `[latents, d]`, vectors as `[1, n]`.
    let tensor = |name: &str, v: Vec<f32>| {
        let shape = if name.starts_with("w_") {
            vec![v.len() / d, d]
        } else {
            vec![1, v.len()]
        };
        HostTensor::f32(shape, v)
    };
    let mut out = Vec::new();
    for (name, value) in params.iter() {
        let key = format!("{}.{name}", hook.path);
        out.push((key.clone(), tensor(name, value.clone())));
        if let Some(m) = &mut moments {
            for (suffix, moment) in [
                ("exp_avg", &mut m.exp_avg),
                ("exp_avg_sq", &mut m.exp_avg_sq),
            ] {
                // Moved, not copied: the moments were gathered for this checkpoint.
                let values = moment.get_mut(name).expect("moments mirror the params");
                out.push((
                    format!("{key}.{suffix}"),
                    tensor(name, std::mem::take(values)),
                ));
            }
        }
    }
    let counts = hook.tokens_since_fired.iter().map(|&c| c as i64).collect();
    out.push((
        format!("{}.tokens_since_fired", hook.path),
        HostTensor::i64(vec![hook.tokens_since_fired.len()], counts),
    ));
    out
}

/// Restores the trainer and state of the checkpoint in `dir`.
pub fn load<B: SaeAutodiffBackend>(
    dir: &Path,
    optim: &OptimConfig,
    device: &B::Device,
) -> Result<(Trainer<B>, State)> {
    let state: State = read_json(&dir.join(STATE_JSON))?;
    let file = TensorFile::open(dir.join(STATE_TENSORS))?;
    let bad = |message: String| TrainError::BadCheckpoint {
        path: dir.to_path_buf(),
        message,
    };
    let hooks = state
        .hooks
        .iter()
        .map(|h| {
            let get = |name: &str| -> Result<Option<HostTensor>> {
                let key = format!("{}.{name}", h.path);
                Ok(if file.contains(&key) {
                    Some(file.get(&key)?)
                } else {
                    None
                })
            };
            let two = |name: &str| -> Result<Option<burn::tensor::Tensor<B, 2>>> {
                match get(name)? {
                    Some(t) if t.shape.len() != 2 => Err(bad(format!(
                        "{}.{name} has shape {:?}, expected two dimensions",
                        h.path, t.shape
                    ))),
                    t => Ok(t.map(|t| t.to_float::<B, 2>(device))),
                }
            };
            let one = |name: &str| -> Result<Option<burn::tensor::Tensor<B, 1>>> {
                Ok(two(name)?.map(|t| t.flatten(0, 1)))
            };
            let need = |t: Option<burn::tensor::Tensor<B, 2>>, name: &str| {
                t.ok_or_else(|| bad(format!("{}.{name} is missing", h.path)))
            };
            let w_enc = need(two("w_enc")?, "w_enc")?;
            let w_dec = need(two("w_dec")?, "w_dec")?;
            let b_dec = one("b_dec")?.ok_or_else(|| bad(format!("{}.b_dec is missing", h.path)))?;
            let sae = Sae::from_tensors(
                h.config.clone(),
                w_enc,
                one("b_enc")?,
                w_dec,
                b_dec,
                one("threshold")?,
            )?;
            if let Some(name) = sae.host_params().first_non_finite() {
                return Err(bad(format!(
                    "{}.{name} holds NaN or infinite values: the checkpoint is corrupt or its SAE had diverged",
                    h.path
                )));
            }
            // Moments are saved for every parameter once the first step is taken.
            let moments = if file.contains(&format!("{}.w_enc.exp_avg", h.path)) {
                let params = sae.host_params();
                let mut m = Moments::zeros_like(&params);
                for (name, _) in params.iter() {
                    for (suffix, moment) in [
                        ("exp_avg", &mut m.exp_avg),
                        ("exp_avg_sq", &mut m.exp_avg_sq),
                    ] {
                        let key = format!("{name}.{suffix}");
                        let values = get(&key)?
                            .ok_or_else(|| bad(format!("{}.{key} is missing", h.path)))?
                            .to_f32();
                        let slot = moment.get_mut(name).expect("shaped like the params");
                        if values.len() != slot.len() {
                            return Err(bad(format!("{}.{key} has the wrong size", h.path)));
                        }
                        *slot = values;
                    }
                }
                Some(m)
            } else {
                None
            };
            let counts: Vec<u64> = match get("tokens_since_fired")?.map(|t| t.data) {
                Some(HostData::I64(v)) => v.into_iter().map(|c| c as u64).collect(),
                _ => return Err(bad(format!("{}.tokens_since_fired is missing", h.path))),
            };
            if counts.len() != sae.num_latents() {
                return Err(bad(format!(
                    "{}.tokens_since_fired has {} entries for {} latents",
                    h.path,
                    counts.len(),
                    sae.num_latents()
                )));
            }
            Ok(HookTrainer::restore(
                h.path.clone(),
                sae,
                h.scale,
                counts,
                moments,
            ))
        })
        .collect::<Result<Vec<_>>>()?;
    let trainer = Trainer::from_parts(hooks, state.step, state.initialised, optim);
    Ok((trainer, state))
}

/// The state entries of a trainer's SAEs.
pub fn hook_states<B: SaeAutodiffBackend>(trainer: &Trainer<B>) -> Vec<HookState> {
    trainer
        .hooks
        .iter()
        .map(|h| HookState {
            path: h.path.clone(),
            config: h.config().clone(),
            scale: h.scale,
        })
        .collect()
}
