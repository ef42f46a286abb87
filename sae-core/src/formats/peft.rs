//! SAE Made Easy's PEFT adapter: `adapter_config.json` (`peft_type: "TOPK_SAE"`) and
//! `adapter_model.safetensors` with `base_model.model.<path>.sae_encoder.weight`, `.sae_W_dec`,
//! `.sae_b_dec` per hooked module (our extensions: `.sae_encoder.bias`, `.sae_threshold`).

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use serde_json::json;

use super::{Checkpoint, HostSae, Layout, SAE_CONFIG_KEY, embedded_config, float, json_key};
use crate::config::SaeConfig;
use crate::error::{Result, SaeError};
use crate::targets::TargetModules;
use crate::tensor_file::{
    HostTensor, StorageDtype, TensorFile, read_json, write_json, write_tensors,
};

const CONFIG_FILE: &str = "adapter_config.json";
const WEIGHTS_FILE: &str = "adapter_model.safetensors";
const PREFIX: &str = "base_model.model.";
const ENCODER: &str = ".sae_encoder.weight";
const ENCODER_BIAS: &str = ".sae_encoder.bias";
const DECODER: &str = ".sae_W_dec";
const DECODER_BIAS: &str = ".sae_b_dec";
const THRESHOLD: &str = ".sae_threshold";

/// Reads the adapter in `dir`.
pub(super) fn read(dir: &Path) -> Result<Checkpoint> {
    let cfg_path = dir.join(CONFIG_FILE);
    let cfg: serde_json::Value = read_json(&cfg_path)?;
    let peft_type: String = json_key(&cfg, "peft_type", &cfg_path)?;
    if peft_type != "TOPK_SAE" {
        return Err(SaeError::UnknownPeftType {
            file: cfg_path,
            found: peft_type,
        });
    }
    let target_modules: Option<TargetModules> = json_key(&cfg, "target_modules", &cfg_path)?;
    let base_model: Option<String> = json_key(&cfg, "base_model_name_or_path", &cfg_path)?;
    let config = match embedded_config(&cfg, &cfg_path)? {
        Some(config) => config,
        None => SaeConfig {
            k: json_key(&cfg, "k", &cfg_path)?,
            num_latents: json_key::<Option<usize>>(&cfg, "num_latents", &cfg_path)?.unwrap_or(0),
            expansion_factor: json_key::<Option<usize>>(&cfg, "expansion_factor", &cfg_path)?
                .unwrap_or(32),
            dead_tokens_threshold: json_key::<Option<u64>>(
                &cfg,
                "dead_tokens_threshold",
                &cfg_path,
            )?
            .unwrap_or(10_000_000),
            ..SaeConfig::default()
        },
    };

    let file = TensorFile::open(dir.join(WEIGHTS_FILE))?;
    let mut paths = BTreeSet::new();
    for name in file.names() {
        let Some(rest) = name.strip_prefix(PREFIX) else {
            continue;
        };
        for suffix in [ENCODER, DECODER, DECODER_BIAS] {
            if let Some(path) = rest.strip_suffix(suffix) {
                paths.insert(path.to_string());
            }
        }
    }
    if paths.is_empty() {
        return Err(SaeError::MissingTensor {
            file: file.path().to_path_buf(),
            name: format!("{PREFIX}<module path>{ENCODER}"),
        });
    }
    let mut saes = BTreeMap::new();
    for path in paths {
        let name = |suffix: &str| format!("{PREFIX}{path}{suffix}");
        let enc_shape = file.shape(&name(ENCODER))?;
        let [latents, d_in] = enc_shape[..] else {
            return Err(SaeError::ShapeMismatch {
                file: file.path().to_path_buf(),
                name: name(ENCODER),
                expected: vec![config.num_latents, 0],
                got: enc_shape,
            });
        };
        let latents = if config.num_latents == 0 {
            latents
        } else {
            config.num_latents
        };
        let (ld, l) = ([latents, d_in], [latents]);
        let optional = |suffix: &str| {
            file.contains(&name(suffix))
                .then(|| float(&file, &name(suffix), &l))
                .transpose()
        };
        let sae = HostSae {
            config: SaeConfig {
                num_latents: latents,
                encoder_bias: config.encoder_bias || file.contains(&name(ENCODER_BIAS)),
                ..config.clone()
            },
            w_enc: float(&file, &name(ENCODER), &ld)?,
            b_enc: optional(ENCODER_BIAS)?,
            w_dec: float(&file, &name(DECODER), &ld)?,
            b_dec: float(&file, &name(DECODER_BIAS), &[d_in])?,
            threshold: optional(THRESHOLD)?,
            d_in,
        };
        saes.insert(path, sae);
    }
    Ok(Checkpoint {
        layout: Layout::Peft,
        saes,
        target_modules,
        base_model,
        module_paths: true,
    })
}

/// Writes the SAEs as one adapter in `dir` (what SAE Made Easy's `from_pretrained` loads).
pub(super) fn write(checkpoint: &super::Checkpoint, dir: &Path, dtype: StorageDtype) -> Result<()> {
    let cannot = |reason: String| SaeError::CannotSave {
        layout: "peft".into(),
        reason,
    };
    if !checkpoint.module_paths {
        let names: Vec<&String> = checkpoint.saes.keys().collect();
        return Err(cannot(format!(
            "the SAEs are named {names:?}, relative to the model's base module as sparsify names them (or by another tool), but SAE Made Easy loads them by full module path (base_model.model.<path>); name the model they belong to (sae convert --model M) to find the paths"
        )));
    }
    let mut configs = checkpoint.saes.values().map(|s| &s.config);
    let config = configs
        .next()
        .ok_or_else(|| cannot("the checkpoint holds no SAE".into()))?;
    if configs.any(|c| c != config) {
        return Err(cannot(
            "one PEFT adapter has one config, but these SAEs differ; save each separately".into(),
        ));
    }
    let mut tensors = Vec::new();
    for (path, sae) in &checkpoint.saes {
        let name = |suffix: &str| format!("{PREFIX}{path}{suffix}");
        let (l, d) = (sae.num_latents(), sae.d_in);
        tensors.push((
            name(ENCODER),
            HostTensor::f32(vec![l, d], sae.w_enc.clone()),
        ));
        tensors.push((
            name(DECODER),
            HostTensor::f32(vec![l, d], sae.w_dec.clone()),
        ));
        tensors.push((
            name(DECODER_BIAS),
            HostTensor::f32(vec![d], sae.b_dec.clone()),
        ));
        if let Some(b) = &sae.b_enc {
            tensors.push((name(ENCODER_BIAS), HostTensor::f32(vec![l], b.clone())));
        }
        if let Some(t) = &sae.threshold {
            tensors.push((name(THRESHOLD), HostTensor::f32(vec![l], t.clone())));
        }
    }
    let targets = checkpoint
        .target_modules
        .clone()
        .unwrap_or_else(|| TargetModules::Names(checkpoint.saes.keys().cloned().collect()));
    let mut cfg = json!({
        "auto_mapping": null,
        "base_model_name_or_path": checkpoint.base_model,
        "dead_tokens_threshold": config.dead_tokens_threshold,
        "expansion_factor": config.expansion_factor,
        "inference_mode": true,
        "k": config.k,
        "num_latents": config.num_latents,
        "peft_type": "TOPK_SAE",
        "revision": null,
        "target_modules": targets,
        "task_type": null,
    });
    if !config.is_sae_made_easy() {
        cfg[SAE_CONFIG_KEY] = serde_json::to_value(config).expect("configs serialise");
    }
    let mut metadata = std::collections::HashMap::new();
    metadata.insert("format".to_string(), "pt".to_string());
    write_tensors(&dir.join(WEIGHTS_FILE), &tensors, dtype, Some(metadata))?;
    write_json(&dir.join(CONFIG_FILE), &cfg)
}
