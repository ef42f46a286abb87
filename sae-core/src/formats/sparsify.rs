//! EleutherAI sparsify: `<hookpoint>/cfg.json` (`d_in`, `num_latents`, `k`, `activation`,
//! `normalize_decoder`, `multi_topk`, ...) and `<hookpoint>/sae.safetensors` with
//! `encoder.weight [L,d]`, `encoder.bias [L]`, `W_dec [L,d]`, `b_dec [d]`.

use std::path::Path;

use serde_json::json;

use super::{HostSae, Named, SAE_CONFIG_KEY, embedded_config, float, folder_name, json_key};
use crate::config::SaeConfig;
use crate::error::{Result, SaeError};
use crate::tensor_file::{
    HostTensor, StorageDtype, TensorFile, read_json, write_json, write_tensors,
};

/// Reads the SAE in one hook point folder; the folder's name is the hook point, relative to
/// the model's base module.
pub(super) fn read(dir: &Path) -> Result<Named> {
    let cfg_path = dir.join("cfg.json");
    let cfg: serde_json::Value = read_json(&cfg_path)?;
    let d_in: usize = json_key(&cfg, "d_in", &cfg_path)?;
    let unsupported = |what: &str| {
        SaeError::InvalidConfig(format!("{}: {what} is not supported", cfg_path.display()))
    };
    for flag in ["skip_connection", "transcode"] {
        if json_key::<Option<bool>>(&cfg, flag, &cfg_path)?.unwrap_or(false) {
            return Err(unsupported(flag));
        }
    }
    let activation: Option<String> = json_key(&cfg, "activation", &cfg_path)?;
    if let Some(a) = activation.filter(|a| a != "topk") {
        return Err(unsupported(&format!("activation {a:?}")));
    }
    let config = match embedded_config(&cfg, &cfg_path)? {
        Some(c) => c,
        None => SaeConfig {
            expansion_factor: json_key::<Option<usize>>(&cfg, "expansion_factor", &cfg_path)?
                .unwrap_or(32),
            normalize_decoder: json_key::<Option<bool>>(&cfg, "normalize_decoder", &cfg_path)?
                .unwrap_or(true),
            multi_topk: json_key::<Option<bool>>(&cfg, "multi_topk", &cfg_path)?.unwrap_or(false),
            ..SaeConfig::sparsify_topk(
                json_key(&cfg, "k", &cfg_path)?,
                json_key::<Option<usize>>(&cfg, "num_latents", &cfg_path)?.unwrap_or(0),
            )
        },
    };
    let latents = config.latents_for(d_in);
    let file = TensorFile::open(dir.join("sae.safetensors"))?;
    let (ld, l) = ([latents, d_in], [latents]);
    let b_enc = float(&file, "encoder.bias", &l)?;
    let sae = HostSae {
        config: SaeConfig {
            num_latents: latents,
            ..config.clone()
        },
        w_enc: float(&file, "encoder.weight", &ld)?,
        // sparsify always stores a bias; an SAE without one was written with zeros.
        b_enc: config.encoder_bias.then_some(b_enc),
        w_dec: float(&file, "W_dec", &ld)?,
        b_dec: float(&file, "b_dec", &[d_in])?,
        threshold: None,
        d_in,
    };
    Ok((folder_name(dir), sae, false))
}

/// Writes one SAE into `dir` (`cfg.json` + `sae.safetensors`).
pub(super) fn write(hook: &str, sae: &HostSae, dir: &Path, dtype: StorageDtype) -> Result<()> {
    let config = &sae.config;
    if config.architecture != crate::config::Architecture::TopK {
        return Err(SaeError::CannotSave {
            layout: "sparsify".into(),
            reason: format!(
                "{hook}: sparsify stores TopK SAEs only, this one is {:?}",
                config.architecture
            ),
        });
    }
    let (l, d) = (sae.num_latents(), sae.d_in);
    let tensors = [
        (
            "encoder.weight",
            HostTensor::f32(vec![l, d], sae.w_enc.clone()),
        ),
        (
            "encoder.bias",
            HostTensor::f32(vec![l], sae.b_enc.clone().unwrap_or_else(|| vec![0.0; l])),
        ),
        ("W_dec", HostTensor::f32(vec![l, d], sae.w_dec.clone())),
        ("b_dec", HostTensor::f32(vec![d], sae.b_dec.clone())),
    ]
    .map(|(n, t)| (n.to_string(), t));
    let mut cfg = json!({
        "activation": "topk",
        "expansion_factor": config.expansion_factor,
        "normalize_decoder": config.normalize_decoder,
        "num_latents": l,
        "k": config.k,
        "multi_topk": config.multi_topk,
        "skip_connection": false,
        "transcode": false,
        "d_in": d,
    });
    if !config.relu {
        // sparsify itself would apply a ReLU; keep our exact math for our own reader.
        cfg[SAE_CONFIG_KEY] = serde_json::to_value(config).expect("configs serialise");
    }
    write_tensors(&dir.join("sae.safetensors"), &tensors, dtype, None)?;
    write_json(&dir.join("cfg.json"), &cfg)
}
