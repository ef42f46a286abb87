//! PEFT-style injection: [`inject`] attaches one SAE per targeted hook point of a
//! [`HookedModule`] and returns an [`SaeModel`] that owns the model and its adapters.
//!
//! As in SAE Made Easy, in eval mode each SAE's reconstruction replaces its module's output
//! (several active adapters average their reconstructions). In train mode the original output
//! flows on and each SAE's input and [`SaeOutput`] are recorded for the loss.

use crate::kernels::SaeBackend;
use std::collections::BTreeMap;
use std::path::Path;

use burn::tensor::Tensor;
use burn::tensor::backend::Backend;
use serde::{Deserialize, Serialize};

use crate::config::SaeConfig;
use crate::error::{Result, SaeError};
use crate::formats::{self, Checkpoint, HostSae, Layout};
use crate::hooks::{FirstError, HookPoint, HookedModule, Hooks, hook_point_for};
use crate::sae::{Sae, SaeOutput};
use crate::targets::TargetModules;
use crate::tensor_file::StorageDtype;

/// The adapter name PEFT uses when none is given.
pub const DEFAULT_ADAPTER: &str = "default";

/// What to inject: an SAE configuration and the modules it targets
/// (SAE Made Easy's `TopKSaeConfig(k, num_latents, target_modules)`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AdapterConfig {
    /// The SAE attached at every targeted module.
    pub sae: SaeConfig,
    /// Which modules get one.
    pub target_modules: TargetModules,
}

/// One named adapter: its configuration and an SAE per hook path.
#[derive(Debug, Clone)]
pub struct Adapter<B: Backend> {
    /// How it was configured.
    pub config: AdapterConfig,
    /// Hook path -> SAE.
    pub saes: BTreeMap<String, Sae<B>>,
}

/// Whether SAEs replace module outputs (eval) or observe them for training (train).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Reconstructions replace module outputs.
    Eval,
    /// Original outputs flow on; (activation, SAE output) pairs are recorded.
    Train,
}

/// What one SAE saw and produced during a train-mode forward pass.
#[derive(Debug, Clone)]
pub struct Record<B: Backend> {
    /// The adapter the SAE belongs to.
    pub adapter: String,
    /// The hook path.
    pub path: String,
    /// The module output, flattened to `[tokens, width]`.
    pub input: Tensor<B, 2>,
    /// The SAE's output and losses on it.
    pub output: SaeOutput<B>,
}

/// The model's output and, in train mode, what every active SAE recorded.
#[derive(Debug)]
pub struct Forward<B: Backend, O> {
    /// What the model returned.
    pub output: O,
    /// One record per active SAE (train mode only).
    pub records: Vec<Record<B>>,
}

/// A model with SAEs injected at some of its hook points.
#[derive(Debug)]
pub struct SaeModel<B: Backend, M> {
    model: M,
    hook_points: Vec<HookPoint>,
    adapters: BTreeMap<String, Adapter<B>>,
    active: Vec<String>,
    mode: Mode,
}

/// Injects a fresh SAE at every hook point that `config.target_modules` matches, as adapter
/// `"default"`, in eval mode.
pub fn inject<B: SaeBackend, M: HookedModule<B>>(
    model: M,
    config: AdapterConfig,
    device: &B::Device,
) -> Result<SaeModel<B, M>> {
    let mut sae_model = SaeModel::wrap(model);
    sae_model.add_adapter(DEFAULT_ADAPTER, config, device)?;
    Ok(sae_model)
}

impl<B: SaeBackend, M: HookedModule<B>> SaeModel<B, M> {
    /// The model with no adapter yet.
    pub fn wrap(model: M) -> Self {
        let hook_points = model.hook_points();
        SaeModel {
            model,
            hook_points,
            adapters: BTreeMap::new(),
            active: Vec::new(),
            mode: Mode::Eval,
        }
    }

    /// Adds a freshly initialised adapter and makes it the only active one.
    pub fn add_adapter(
        &mut self,
        name: &str,
        config: AdapterConfig,
        device: &B::Device,
    ) -> Result<()> {
        let mut saes = BTreeMap::new();
        for point in config.target_modules.resolve(&self.hook_points)? {
            let sae_config = config.sae.sized_for(&point);
            saes.insert(
                point.path.clone(),
                Sae::new(point.width, sae_config, device)?,
            );
        }
        self.insert_adapter(name, Adapter { config, saes })
    }

    /// Adds an adapter whose SAEs already exist, checking them against the hook points, and
    /// makes it the only active one. An SAE's path may be a `.`-separated suffix of one hook
    /// point's path (as sparsify saves them); the adapter then holds it under the full path.
    pub fn insert_adapter(&mut self, name: &str, adapter: Adapter<B>) -> Result<()> {
        let mut saes = BTreeMap::new();
        for (path, sae) in adapter.saes {
            let point = hook_point_for(&self.hook_points, &path, sae.d_in())?;
            saes.insert(point.path.clone(), sae);
        }
        let adapter = Adapter {
            config: adapter.config,
            saes,
        };
        self.adapters.insert(name.to_string(), adapter);
        self.active = vec![name.to_string()];
        Ok(())
    }

    /// Makes exactly these adapters active.
    pub fn set_adapter(&mut self, names: &[&str]) -> Result<()> {
        if let Some(missing) = names.iter().find(|n| !self.adapters.contains_key(**n)) {
            return Err(SaeError::UnknownAdapter(missing.to_string()));
        }
        self.active = names.iter().map(|n| n.to_string()).collect();
        Ok(())
    }

    /// The active adapters' names.
    pub fn active_adapters(&self) -> &[String] {
        &self.active
    }

    /// Every adapter, by name.
    pub fn adapters(&self) -> &BTreeMap<String, Adapter<B>> {
        &self.adapters
    }

    /// One adapter, mutably (e.g. to apply an optimiser step to its SAEs).
    pub fn adapter_mut(&mut self, name: &str) -> Result<&mut Adapter<B>> {
        self.adapters
            .get_mut(name)
            .ok_or_else(|| SaeError::UnknownAdapter(name.to_string()))
    }

    /// Switches to train mode.
    pub fn train(&mut self) {
        self.mode = Mode::Train;
    }

    /// Switches to eval mode.
    pub fn eval(&mut self) {
        self.mode = Mode::Eval;
    }

    /// The current mode.
    pub fn mode(&self) -> Mode {
        self.mode
    }

    /// The wrapped model.
    pub fn model(&self) -> &M {
        &self.model
    }

    /// The model's hook points.
    pub fn hook_points(&self) -> &[HookPoint] {
        &self.hook_points
    }

    /// Runs the model with the active SAEs.
    pub fn forward(&self, input: M::Input) -> Result<Forward<B, M::Output>> {
        self.forward_with_dead_masks(input, &BTreeMap::new())
    }

    /// Like [`forward`](Self::forward); in train mode, `dead_masks[path]` (one flag per latent)
    /// turns on the AuxK loss of the SAEs at `path`.
    pub fn forward_with_dead_masks(
        &self,
        input: M::Input,
        dead_masks: &BTreeMap<String, Vec<bool>>,
    ) -> Result<Forward<B, M::Output>> {
        let mut hooks = self.hooks(dead_masks);
        let output = self.model.forward_hooked(input, &mut hooks);
        Ok(Forward {
            output,
            records: hooks.finish()?,
        })
    }

    /// The hooks that run the active SAEs in the current mode, for a forward pass driven from
    /// outside (generation with a KV cache, recording other hook points alongside).
    pub fn hooks<'a>(&'a self, dead_masks: &'a BTreeMap<String, Vec<bool>>) -> SaeHooks<'a, B> {
        let mut by_path: BTreeMap<&str, Vec<(&str, &Sae<B>)>> = BTreeMap::new();
        for name in &self.active {
            for (path, sae) in &self.adapters[name].saes {
                by_path.entry(path).or_default().push((name, sae));
            }
        }
        // In train mode nothing after the deepest SAE is needed.
        let stop = match self.mode {
            Mode::Train => self
                .hook_points
                .iter()
                .rev()
                .find(|p| by_path.contains_key(p.path.as_str()))
                .map(|p| p.path.as_str()),
            Mode::Eval => None,
        };
        SaeHooks {
            by_path,
            mode: self.mode,
            dead_masks,
            stop,
            records: Vec::new(),
            error: FirstError::default(),
        }
    }

    /// Saves every adapter in SAE Made Easy's PEFT layout: `"default"` in `dir`, any other
    /// adapter in `dir/<name>/`.
    pub fn save_pretrained(&self, dir: &Path) -> Result<()> {
        for (name, adapter) in &self.adapters {
            let out = if name == DEFAULT_ADAPTER {
                dir.to_path_buf()
            } else {
                dir.join(name)
            };
            let checkpoint = Checkpoint {
                layout: Layout::Peft,
                saes: adapter
                    .saes
                    .iter()
                    .map(|(p, s)| (p.clone(), HostSae::from_sae(s)))
                    .collect(),
                target_modules: Some(adapter.config.target_modules.clone()),
                base_model: None,
                module_paths: true,
            };
            formats::save(&checkpoint, Layout::Peft, &out, StorageDtype::F32)?;
        }
        Ok(())
    }

    /// Wraps `model` with the SAEs saved in `dir` (any layout) as adapter `"default"`, plus any
    /// named PEFT adapters in sub-folders; `"default"` is active.
    pub fn from_pretrained(model: M, dir: &Path, device: &B::Device) -> Result<Self> {
        let mut sae_model = Self::wrap(model);
        sae_model.load_adapter(dir, DEFAULT_ADAPTER, device)?;
        if formats::detect(dir)? == Layout::Peft {
            let entries = std::fs::read_dir(dir).map_err(SaeError::io(dir))?;
            for sub in entries.filter_map(|e| e.ok().map(|e| e.path())) {
                if sub.join("adapter_config.json").is_file() {
                    let name = sub
                        .file_name()
                        .unwrap_or_default()
                        .to_string_lossy()
                        .into_owned();
                    sae_model.load_adapter(&sub, &name, device)?;
                }
            }
        }
        sae_model.active = vec![DEFAULT_ADAPTER.to_string()];
        Ok(sae_model)
    }

    /// Loads the checkpoint in `dir` (any layout) as adapter `name` and makes it active.
    pub fn load_adapter(&mut self, dir: &Path, name: &str, device: &B::Device) -> Result<()> {
        let checkpoint = formats::load(dir)?;
        let saes = checkpoint
            .saes
            .iter()
            .map(|(p, s)| Ok((p.clone(), s.to_sae(device)?)))
            .collect::<Result<BTreeMap<_, _>>>()?;
        let first = checkpoint
            .saes
            .values()
            .next()
            .expect("a loaded checkpoint has an SAE");
        let config = AdapterConfig {
            sae: first.config.clone(),
            target_modules: checkpoint
                .target_modules
                .unwrap_or_else(|| TargetModules::Names(saes.keys().cloned().collect())),
        };
        self.insert_adapter(name, Adapter { config, saes })
    }
}

/// The hooks an [`SaeModel`] runs its model with (see [`SaeModel::hooks`]).
pub struct SaeHooks<'a, B: Backend> {
    by_path: BTreeMap<&'a str, Vec<(&'a str, &'a Sae<B>)>>,
    mode: Mode,
    dead_masks: &'a BTreeMap<String, Vec<bool>>,
    stop: Option<&'a str>,
    records: Vec<Record<B>>,
    error: FirstError<SaeError>,
}

impl<B: SaeBackend> SaeHooks<'_, B> {
    /// What the SAEs recorded (train mode), or the first error any of them met.
    pub fn finish(self) -> Result<Vec<Record<B>>> {
        self.error.finish(self.records)
    }

    fn run(&mut self, path: &str, x: Tensor<B, 3>) -> Result<Tensor<B, 3>> {
        let Some(saes) = self.by_path.get(path) else {
            return Ok(x);
        };
        let [b, t, d] = x.dims();
        // SAEs keep their own dtype (f32); a model computing in f16/bf16 is cast, as SAE Made
        // Easy casts to the encoder's dtype and back.
        let model_dtype = x.dtype();
        let sae_dtype = saes[0].1.w_enc.val().dtype();
        let flat = x.clone().reshape([b * t, d]).cast(sae_dtype);
        match self.mode {
            Mode::Eval => {
                let mut sum: Option<Tensor<B, 2>> = None;
                for (_, sae) in saes {
                    let recon = sae.decode(&sae.encode(flat.clone())?);
                    sum = Some(match sum {
                        Some(s) => s + recon,
                        None => recon,
                    });
                }
                let mean = sum
                    .expect("a hooked path has an SAE")
                    .div_scalar(saes.len() as f32);
                Ok(mean.reshape([b, t, d]).cast(model_dtype))
            }
            Mode::Train => {
                for (adapter, sae) in saes {
                    let dead = self.dead_masks.get(path).map(Vec::as_slice);
                    let output = sae.forward(flat.clone(), dead)?;
                    self.records.push(Record {
                        adapter: adapter.to_string(),
                        path: path.to_string(),
                        input: flat.clone(),
                        output,
                    });
                }
                Ok(x)
            }
        }
    }
}

impl<B: SaeBackend> Hooks<B> for SaeHooks<'_, B> {
    fn call(&mut self, path: &str, x: Tensor<B, 3>) -> Tensor<B, 3> {
        if self.error.failed() {
            return x;
        }
        let result = self.run(path, x.clone());
        self.error.keep(result, x)
    }

    fn stop_after(&self) -> Option<&str> {
        self.stop
    }
}
