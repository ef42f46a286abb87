//! Checkpoint layouts, read and written, detected automatically:
//!
//! | layout | files |
//! | --- | --- |
//! | PEFT adapter (SAE Made Easy) | `adapter_config.json` + `adapter_model.safetensors` |
//! | sparsify | `<hookpoint>/cfg.json` + `<hookpoint>/sae.safetensors` |
//! | SAELens | `cfg.json` + `sae_weights.safetensors` (or one folder per hook point) |
//!
//! Each layout converts to and from [`HostSae`], so the layouts never touch Burn.
//! What a layout cannot express (SAE Made Easy has no ReLU, sparsify always applies one) is
//! kept in an extra `sae_config` entry that the Python readers ignore.

mod peft;
mod saelens;
mod sparsify;

use crate::kernels::SaeBackend;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::config::{Architecture, SaeConfig};
use crate::error::{Result, SaeError};
use crate::folder;
use crate::hooks::{HookPoint, hook_point_for};
use crate::sae::Sae;
use crate::targets::TargetModules;
use crate::tensor_file::{HostTensor, StorageDtype};

/// A checkpoint layout.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Layout {
    /// SAE Made Easy's PEFT adapter (`TOPK_SAE`).
    Peft,
    /// EleutherAI sparsify.
    Sparsify,
    /// SAELens.
    SaeLens,
}

impl std::fmt::Display for Layout {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Layout::Peft => "peft",
            Layout::Sparsify => "sparsify",
            Layout::SaeLens => "saelens",
        })
    }
}

impl std::str::FromStr for Layout {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "peft" => Ok(Layout::Peft),
            "sparsify" => Ok(Layout::Sparsify),
            "saelens" => Ok(Layout::SaeLens),
            other => Err(format!(
                "unknown layout {other:?} (expected peft, sparsify or saelens)"
            )),
        }
    }
}

/// One SAE's tensors on the host, in our orientation (`W_enc` and `W_dec` both `[L, d]`).
#[derive(Debug, Clone, PartialEq)]
pub struct HostSae {
    /// Its configuration (`num_latents` filled in).
    pub config: SaeConfig,
    /// Encoder `[L, d]`.
    pub w_enc: Vec<f32>,
    /// Encoder bias `[L]`, when the SAE has one.
    pub b_enc: Option<Vec<f32>>,
    /// Decoder `[L, d]`.
    pub w_dec: Vec<f32>,
    /// Decoder bias `[d]`.
    pub b_dec: Vec<f32>,
    /// JumpReLU thresholds `[L]`.
    pub threshold: Option<Vec<f32>>,
    /// Input width.
    pub d_in: usize,
}

impl HostSae {
    /// Its parameters, borrowed, by the names training checkpoints use.
    pub fn params(&self) -> crate::Params<&[f32]> {
        crate::Params {
            w_enc: &self.w_enc,
            b_enc: self.b_enc.as_deref(),
            w_dec: &self.w_dec,
            b_dec: &self.b_dec,
            threshold: self.threshold.as_deref(),
        }
    }

    /// Number of latents.
    pub fn num_latents(&self) -> usize {
        self.w_enc.len() / self.d_in
    }

    /// Copies a Burn SAE's tensors to the host.
    pub fn from_sae<B: SaeBackend>(sae: &Sae<B>) -> Self {
        use crate::host::to_host as host;
        HostSae {
            config: sae.config.clone(),
            w_enc: host(sae.w_enc.val()),
            b_enc: sae.b_enc.as_ref().map(|b| host(b.val())),
            w_dec: host(sae.w_dec.val()),
            b_dec: host(sae.b_dec.val()),
            threshold: sae.threshold.as_ref().map(|t| host(t.val())),
            d_in: sae.d_in(),
        }
    }

    /// Builds the Burn SAE on `device`.
    pub fn to_sae<B: SaeBackend>(&self, device: &B::Device) -> Result<Sae<B>> {
        let (l, d) = (self.num_latents(), self.d_in);
        let mat = |v: &Vec<f32>| HostTensor::f32(vec![l, d], v.clone()).to_float::<B, 2>(device);
        let vec = |v: &Vec<f32>| HostTensor::f32(vec![v.len()], v.clone()).to_float::<B, 1>(device);
        Sae::from_tensors(
            self.config.clone(),
            mat(&self.w_enc),
            self.b_enc.as_ref().map(vec),
            mat(&self.w_dec),
            vec(&self.b_dec),
            self.threshold.as_ref().map(vec),
        )
    }
}

/// The SAEs of a checkpoint, by hook point path.
#[derive(Debug, Clone)]
pub struct Checkpoint {
    /// The layout it was read from.
    pub layout: Layout,
    /// Hook path -> SAE.
    pub saes: BTreeMap<String, HostSae>,
    /// `target_modules` as the checkpoint recorded it (PEFT), if any.
    pub target_modules: Option<TargetModules>,
    /// The model the SAEs were trained on, a hub id or a path (PEFT's
    /// `base_model_name_or_path`), if recorded.
    pub base_model: Option<String>,
    /// True when the SAEs are named by full module paths (`model.layers.1.mlp.down_proj`), as
    /// PEFT adapters and our training name them; false for sparsify's names, relative to the
    /// model's base module (`layers.1.mlp.down_proj`), and for another tool's SAELens
    /// `hook_name`. [`Checkpoint::on_model`] resolves such names against a model.
    pub module_paths: bool,
}

/// Where transformers keeps a model's base module (`base_model_prefix` of every model we load):
/// sparsify names hook points from there down.
const BASE_MODULE: &str = "model.";

impl Checkpoint {
    /// The same SAEs named by the full module paths of the model whose hook points are
    /// `points`: each name is a path or a `.`-separated suffix of one ([`hook_point_for`]). An
    /// error names an SAE no hook point (or several) fits, or one whose `d_in` is not its hook
    /// point's width.
    pub fn on_model(self, points: &[HookPoint]) -> Result<Self> {
        let mut saes = BTreeMap::new();
        for (name, sae) in self.saes {
            let point = hook_point_for(points, &name, sae.d_in)?;
            saes.insert(point.path.clone(), sae);
        }
        Ok(Checkpoint {
            saes,
            module_paths: true,
            ..self
        })
    }

    /// Sentences of warning for writing these SAEs in `layout`: its library computes something
    /// else than ours (sparsify and SAELens apply a ReLU that SAE Made Easy's TopK has not), or,
    /// given the model's hook points, SAE Made Easy cannot attach an SAE (it wraps only linear
    /// layers).
    pub fn warnings(&self, layout: Layout, points: Option<&[HookPoint]>) -> Vec<String> {
        let mut warnings = Vec::new();
        for (hook, sae) in &self.saes {
            let config = &sae.config;
            let topk = matches!(
                config.architecture,
                Architecture::TopK | Architecture::BatchTopK
            );
            if layout != Layout::Peft && topk && !config.relu {
                warnings.push(format!(
                    "the SAE for {hook} has no ReLU (SAE Made Easy's TopK) but {layout}'s library applies one: its outputs there will differ from ours (our own reader keeps the exact math)"
                ));
            }
            if layout == Layout::Peft {
                let point = points.and_then(|p| hook_point_for(p, hook, sae.d_in).ok());
                warnings.extend(point.and_then(not_linear));
            }
        }
        warnings
    }
}

/// A warning when `point` is not a linear layer: SAE Made Easy injects SAEs only into
/// `nn.Linear` modules, so its `PeftSaeModel` cannot load an adapter targeting it (ours can).
pub fn not_linear(point: &HookPoint) -> Option<String> {
    point.in_features.is_none().then(|| {
        format!(
            "{} is not a linear layer: SAE Made Easy wraps only nn.Linear modules, so it cannot load an SAE for it (this tool can)",
            point.path
        )
    })
}

/// Which layout the checkpoint in `dir` has.
pub fn detect(dir: &Path) -> Result<Layout> {
    if dir.join("adapter_config.json").is_file() {
        return Ok(Layout::Peft);
    }
    if let Some(layout) = single_layout(dir) {
        return Ok(layout);
    }
    let subs = subdirs(dir)?;
    if let Some(layout) = subs.iter().find_map(|sub| single_layout(sub)) {
        return Ok(layout);
    }
    match subs
        .into_iter()
        .find(|sub| sub.join("adapter_config.json").is_file())
    {
        Some(inner) => Err(SaeError::NestedCheckpoint {
            dir: dir.to_path_buf(),
            inner,
        }),
        None => Err(SaeError::UnknownLayout(dir.to_path_buf())),
    }
}

/// The layout of a folder that holds exactly one sparsify or SAELens SAE.
fn single_layout(dir: &Path) -> Option<Layout> {
    if !dir.join("cfg.json").is_file() {
        return None;
    }
    if dir.join("sae.safetensors").is_file() {
        Some(Layout::Sparsify)
    } else if dir.join("sae_weights.safetensors").is_file() {
        Some(Layout::SaeLens)
    } else {
        None
    }
}

/// The folders directly inside `dir`, sorted.
fn subdirs(dir: &Path) -> Result<Vec<PathBuf>> {
    let entries = std::fs::read_dir(dir).map_err(SaeError::io(dir))?;
    let mut dirs: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_dir())
        .collect();
    dirs.sort();
    Ok(dirs)
}

/// An SAE read from its own folder: its hook point, the SAE, and whether the hook point is a
/// full module path.
type Named = (String, HostSae, bool);

/// The SAEs of a one-SAE-per-folder layout: `dir` itself, or each sub-folder of that layout;
/// and whether all are named by full module paths.
fn per_folder(
    dir: &Path,
    layout: Layout,
    read: impl Fn(&Path) -> Result<Named>,
) -> Result<(BTreeMap<String, HostSae>, bool)> {
    let folders = if single_layout(dir) == Some(layout) {
        vec![dir.to_path_buf()]
    } else {
        subdirs(dir)?
            .into_iter()
            .filter(|d| single_layout(d) == Some(layout))
            .collect()
    };
    let mut saes = BTreeMap::new();
    let mut module_paths = true;
    for folder in &folders {
        let (hook, sae, full) = read(folder)?;
        module_paths &= full;
        saes.insert(hook, sae);
    }
    Ok((saes, module_paths))
}

/// The name of a folder (a hook point when the layout keeps one SAE per folder).
fn folder_name(dir: &Path) -> String {
    dir.canonicalize()
        .ok()
        .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
        .unwrap_or_default()
}

/// Reads the checkpoint in `dir`, whatever its layout.
pub fn load(dir: &Path) -> Result<Checkpoint> {
    let layout = detect(dir)?;
    let per_folder = |read: fn(&Path) -> Result<Named>| -> Result<Checkpoint> {
        let (saes, module_paths) = per_folder(dir, layout, read)?;
        Ok(Checkpoint {
            layout,
            saes,
            target_modules: None,
            base_model: None,
            module_paths,
        })
    };
    let checkpoint = match layout {
        Layout::Peft => peft::read(dir)?,
        Layout::Sparsify => per_folder(sparsify::read)?,
        Layout::SaeLens => per_folder(saelens::read)?,
    };
    for (hook, sae) in &checkpoint.saes {
        sae.config.validate(sae.d_in)?;
        if let Some(name) = sae.params().first_non_finite() {
            return Err(SaeError::NonFinite(format!(
                "{} (the {name} of the SAE for {hook})",
                dir.display()
            )));
        }
    }
    Ok(checkpoint)
}

/// A sentence of warning when the SAE checkpoint in `dir` records that it was trained on
/// another model than `model` (a hub id or a path); `None` when it is the same model or the
/// checkpoint does not say. Names are the same model when they resolve to the same folder or
/// end in the same name (`Qwen/Qwen2-VL-2B-Instruct` and a local `./Qwen2-VL-2B-Instruct`).
pub fn trained_on_other_model(dir: &Path, model: &str) -> Option<String> {
    let cfg: serde_json::Value =
        crate::tensor_file::read_json(&dir.join("adapter_config.json")).ok()?;
    let recorded = cfg.get("base_model_name_or_path")?.as_str()?;
    let resolve = |name: &str| {
        Path::new(name)
            .canonicalize()
            .map_or_else(|_| name.to_string(), |p| p.display().to_string())
    };
    let last = |name: &str| {
        let name = name.trim_end_matches('/');
        name.rsplit('/').next().unwrap_or(name).to_string()
    };
    let same = resolve(recorded) == resolve(model) || last(recorded) == last(model);
    (!same).then(|| {
        format!(
            "the SAEs in {} were trained on {recorded}, not on {model}: their latents may mean nothing on this model",
            dir.display()
        )
    })
}

/// Writes `checkpoint`'s SAEs to `dir` in `layout`, floats stored as `dtype`.
pub fn save(
    checkpoint: &Checkpoint,
    layout: Layout,
    dir: &Path,
    dtype: StorageDtype,
) -> Result<()> {
    match layout {
        Layout::Peft => peft::write(checkpoint, dir, dtype),
        Layout::Sparsify => {
            for (hook, sae) in &checkpoint.saes {
                // sparsify names a hook point from the model's base module down.
                let folder = match checkpoint.module_paths {
                    true => hook.strip_prefix(BASE_MODULE).unwrap_or(hook),
                    false => hook,
                };
                sparsify::write(hook, sae, &dir.join(folder), dtype)?;
            }
            Ok(())
        }
        Layout::SaeLens => {
            let single = checkpoint.saes.len() == 1;
            for (hook, sae) in &checkpoint.saes {
                let out = if single {
                    dir.to_path_buf()
                } else {
                    dir.join(hook)
                };
                saelens::write(hook, sae, checkpoint, &out, dtype)?;
            }
            Ok(())
        }
    }
}

/// Writes `checkpoint` to `dir` as [`save`] does, replacing the SAE checkpoint `dir` already
/// holds, of any layout (other files stay). The new folder is put together beside `dir` (the
/// new checkpoint, and the other files hard-linked) and swapped in whole: an error or a kill at
/// any moment leaves `dir` holding the old checkpoint or the new one, complete. Refuses a `dir`
/// that another process writes.
pub fn save_replacing(
    checkpoint: &Checkpoint,
    layout: Layout,
    dir: &Path,
    dtype: StorageDtype,
) -> Result<()> {
    save_replacing_with(
        checkpoint,
        layout,
        dir,
        dtype,
        folder::exchange,
        &mut |_| Ok(()),
    )
}

/// [`save_replacing`] with [`folder::replace`]'s `exchange` and `fault`.
fn save_replacing_with(
    checkpoint: &Checkpoint,
    layout: Layout,
    dir: &Path,
    dtype: StorageDtype,
    exchange: folder::Exchange,
    fault: &mut dyn FnMut(folder::ReplaceStep) -> std::io::Result<()>,
) -> Result<()> {
    let _lock = folder::FolderLock::acquire(dir)?;
    folder::remove_leftovers(dir)?;
    let write = |tmp: &Path| {
        if dir.is_dir() {
            link_all_but_checkpoint(dir, tmp)?;
        }
        save(checkpoint, layout, tmp, dtype)
    };
    folder::write_dir_with(dir, write, exchange, fault)
}

/// The files an SAE checkpoint of any layout consists of.
const CHECKPOINT_FILES: [&str; 5] = [
    "adapter_config.json",
    "adapter_model.safetensors",
    "cfg.json",
    "sae.safetensors",
    "sae_weights.safetensors",
];

/// Hard-links (or copies, where links cannot be made) everything in `from` into `to` but the
/// SAE checkpoint: its files in `from` and in the sub-folders that hold an SAE, and those
/// sub-folders when nothing else is in them.
fn link_all_but_checkpoint(from: &Path, to: &Path) -> Result<()> {
    let holds_sae =
        |d: &Path| d.join("adapter_config.json").is_file() || single_layout(d).is_some();
    let top = holds_sae(from);
    for entry in std::fs::read_dir(from).map_err(SaeError::io(from))? {
        let source = entry.map_err(SaeError::io(from))?.path();
        let name = source.file_name().unwrap_or_default();
        let target = to.join(name);
        let meta = std::fs::symlink_metadata(&source).map_err(SaeError::io(&source))?;
        if meta.is_dir() && holds_sae(&source) {
            let kept = std::fs::read_dir(&source)
                .map_err(SaeError::io(&source))?
                .filter_map(|e| e.ok())
                .any(|e| !CHECKPOINT_FILES.iter().any(|f| e.file_name() == *f));
            if kept {
                std::fs::create_dir_all(&target).map_err(SaeError::io(&target))?;
                link_all_but_checkpoint(&source, &target)?;
            }
        } else if meta.is_dir() {
            link_tree(&source, &target)?;
        } else if !(top && CHECKPOINT_FILES.iter().any(|f| name == *f)) {
            link_file(&source, &target)?;
        }
    }
    Ok(())
}

/// Hard-links (or copies) the whole tree `from` to `to`.
fn link_tree(from: &Path, to: &Path) -> Result<()> {
    std::fs::create_dir_all(to).map_err(SaeError::io(to))?;
    for entry in std::fs::read_dir(from).map_err(SaeError::io(from))? {
        let source = entry.map_err(SaeError::io(from))?.path();
        let target = to.join(source.file_name().unwrap_or_default());
        let meta = std::fs::symlink_metadata(&source).map_err(SaeError::io(&source))?;
        if meta.is_dir() {
            link_tree(&source, &target)?;
        } else {
            link_file(&source, &target)?;
        }
    }
    Ok(())
}

/// Hard-links `from` as `to` (a symlink is linked itself, not followed), or copies it where the
/// file system cannot link.
fn link_file(from: &Path, to: &Path) -> Result<()> {
    std::fs::hard_link(from, to)
        .or_else(|_| std::fs::copy(from, to).map(|_| ()))
        .map_err(SaeError::io(to))
}

/// Our full configuration, stored beside a layout's own keys where that layout cannot express it.
const SAE_CONFIG_KEY: &str = "sae_config";

/// Reads `[L, d]` / `[L]` / `[d]` float tensors with their shapes checked.
fn float(file: &crate::tensor_file::TensorFile, name: &str, shape: &[usize]) -> Result<Vec<f32>> {
    Ok(file.get_shaped(name, shape)?.to_f32())
}

/// The `sae_config` entry of a JSON config, if present.
fn embedded_config(cfg: &serde_json::Value, file: &Path) -> Result<Option<SaeConfig>> {
    cfg.get(SAE_CONFIG_KEY)
        .map(|v| {
            serde_json::from_value(v.clone()).map_err(|source| SaeError::BadJson {
                file: file.to_path_buf(),
                source,
            })
        })
        .transpose()
}

/// A required key of a JSON config.
fn json_key<T: serde::de::DeserializeOwned>(
    cfg: &serde_json::Value,
    key: &str,
    file: &Path,
) -> Result<T> {
    let value = cfg.get(key).cloned().unwrap_or(serde_json::Value::Null);
    serde_json::from_value(value).map_err(|e| SaeError::BadJson {
        file: file.to_path_buf(),
        source: serde::de::Error::custom(format!("key {key:?}: {e}")),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::folder::ReplaceStep;

    /// A one-SAE PEFT checkpoint whose weights are all `value`.
    fn checkpoint(value: f32) -> Checkpoint {
        let (d, latents) = (3, 4);
        let sae = HostSae {
            config: SaeConfig::topk(2, latents),
            w_enc: vec![value; latents * d],
            b_enc: Some(vec![value; latents]),
            w_dec: vec![value; latents * d],
            b_dec: vec![value; d],
            threshold: None,
            d_in: d,
        };
        Checkpoint {
            layout: Layout::Peft,
            saes: BTreeMap::from([("model.layers.0".to_string(), sae)]),
            target_modules: None,
            base_model: None,
            module_paths: true,
        }
    }

    fn weight(dir: &Path) -> f32 {
        load(dir).unwrap().saes["model.layers.0"].w_dec[0]
    }

    // sparsify names a hook point from the base module down (`layers.0` for
    // `model.layers.0`); such names write no PEFT adapter until they are resolved against the
    // model's hook points, which then gives SAE Made Easy's keys. SAELens keeps the full path.
    #[test]
    fn names_are_full_module_paths_in_peft_and_relative_in_sparsify() {
        let root = tempfile::tempdir().unwrap();
        let (sparsify, peft) = (root.path().join("sparsify"), root.path().join("peft"));
        save(
            &checkpoint(1.0),
            Layout::Sparsify,
            &sparsify,
            StorageDtype::F32,
        )
        .unwrap();
        assert!(sparsify.join("layers.0/cfg.json").is_file());
        let relative = load(&sparsify).unwrap();
        assert!(!relative.module_paths);
        assert_eq!(relative.saes.keys().collect::<Vec<_>>(), ["layers.0"]);
        let refused = save(&relative, Layout::Peft, &peft, StorageDtype::F32).unwrap_err();
        assert!(refused.to_string().contains("--model"), "{refused}");

        let points = [
            HookPoint::new("model.layers.0", 3, crate::HookKind::Residual),
            HookPoint::new("model.layers.10", 3, crate::HookKind::Residual),
        ];
        let resolved = relative.clone().on_model(&points).unwrap();
        assert!(resolved.module_paths);
        save(&resolved, Layout::Peft, &peft, StorageDtype::F32).unwrap();
        let file = crate::TensorFile::open(peft.join("adapter_model.safetensors")).unwrap();
        assert!(file.contains("base_model.model.model.layers.0.sae_encoder.weight"));
        assert_eq!(load(&peft).unwrap().saes, resolved.saes);

        let narrow = [HookPoint::new(
            "model.layers.0",
            2,
            crate::HookKind::Residual,
        )];
        assert!(relative.clone().on_model(&narrow).is_err());
        assert!(relative.on_model(&points[1..]).is_err());

        let saelens = root.path().join("saelens");
        save(
            &checkpoint(1.0),
            Layout::SaeLens,
            &saelens,
            StorageDtype::F32,
        )
        .unwrap();
        let full = load(&saelens).unwrap();
        assert!(full.module_paths);
        assert_eq!(full.saes.keys().collect::<Vec<_>>(), ["model.layers.0"]);
    }

    // `--overwrite` is failure-safe: an error (or a kill) between the steps of the replacement
    // leaves a complete checkpoint at OUT, the old one or the new one, and the files that are
    // not part of the checkpoint stay; with the atomic exchange and without it.
    #[test]
    fn a_failed_overwrite_leaves_a_complete_checkpoint() {
        let cannot_exchange = |_: &Path, _: &Path| Ok(false);
        let cases: [(folder::Exchange, ReplaceStep, f32); 3] = [
            (folder::exchange, ReplaceStep::Swapped, 2.0),
            (cannot_exchange, ReplaceStep::Swapped, 2.0),
            (cannot_exchange, ReplaceStep::MovedAside, 1.0),
        ];
        for (exchange, at, expected) in cases {
            let root = tempfile::tempdir().unwrap();
            let out = root.path().join("out");
            save(&checkpoint(1.0), Layout::Peft, &out, StorageDtype::F32).unwrap();
            std::fs::write(out.join("notes.txt"), "mine").unwrap();
            let mut fault = |step| {
                if step == at {
                    Err(std::io::Error::other("killed"))
                } else {
                    Ok(())
                }
            };
            let new = checkpoint(2.0);
            let result = save_replacing_with(
                &new,
                Layout::Peft,
                &out,
                StorageDtype::F32,
                exchange,
                &mut fault,
            );
            assert!(result.is_err());
            assert_eq!(weight(&out), expected, "{at:?}");
            assert_eq!(
                std::fs::read_to_string(out.join("notes.txt")).unwrap(),
                "mine"
            );
            // The next writer clears what was left and replaces the checkpoint.
            save_replacing(&new, Layout::Sparsify, &out, StorageDtype::F32).unwrap();
            let saved = load(&out).unwrap();
            assert_eq!(saved.layout, Layout::Sparsify);
            assert_eq!(saved.saes["layers.0"].w_dec[0], 2.0);
            assert!(!out.join("adapter_config.json").exists());
            assert_eq!(
                std::fs::read_to_string(out.join("notes.txt")).unwrap(),
                "mine"
            );
            let mut names: Vec<String> = std::fs::read_dir(root.path())
                .unwrap()
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect();
            names.sort();
            assert_eq!(names, [".out.lock", "out"]);
        }
    }
}
