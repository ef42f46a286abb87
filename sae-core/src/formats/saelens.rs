//! SAELens: `cfg.json` (`architecture`, `d_in`, `d_sae`, `apply_b_dec_to_input`, `k`,
//! `metadata.hook_name`, ...) and `sae_weights.safetensors` with `W_enc [d, L]`, `W_dec [L, d]`,
//! `b_enc [L]`, `b_dec [d]` and, for JumpReLU, `threshold [L]`.

use std::path::Path;

use serde_json::json;

use super::{
    Checkpoint, HostSae, Named, SAE_CONFIG_KEY, embedded_config, float, folder_name, json_key,
};
use crate::config::{Architecture, SaeConfig};
use crate::error::{Result, SaeError};
use crate::tensor_file::{
    HostTensor, StorageDtype, TensorFile, read_json, transpose, write_json, write_tensors,
};

/// The version of SAELens whose `cfg.json` [`write`] writes (checked with its `load_from_disk`).
const SAELENS_VERSION: &str = "6.54.12";
/// Our key in `metadata`: true when `hook_name` is a full module path (SAELens keeps unknown
/// metadata keys).
const MODULE_PATH_KEY: &str = "hook_name_is_module_path";

/// Reads the SAE in `dir`; its hook point is `metadata.hook_name` (or `hook_name`), else the
/// folder's name.
pub(super) fn read(dir: &Path) -> Result<Named> {
    let cfg_path = dir.join("cfg.json");
    let cfg: serde_json::Value = read_json(&cfg_path)?;
    let d_in: usize = json_key(&cfg, "d_in", &cfg_path)?;
    let latents: usize = json_key(&cfg, "d_sae", &cfg_path)?;
    let unsupported = |what: String| {
        SaeError::InvalidConfig(format!("{}: {what} is not supported", cfg_path.display()))
    };
    let normalize: Option<String> = json_key(&cfg, "normalize_activations", &cfg_path)?;
    if let Some(n) = normalize.filter(|n| n != "none") {
        return Err(unsupported(format!("normalize_activations {n:?}")));
    }
    let architecture: String = json_key::<Option<String>>(&cfg, "architecture", &cfg_path)?
        .unwrap_or_else(|| "standard".into());
    let config = match embedded_config(&cfg, &cfg_path)? {
        Some(c) => c,
        None => match architecture.as_str() {
            "standard" => SaeConfig::relu_l1(latents, 0.0),
            "topk" => SaeConfig {
                normalize_decoder: false,
                ..SaeConfig::sparsify_topk(json_key(&cfg, "k", &cfg_path)?, latents)
            },
            "batchtopk" => SaeConfig {
                normalize_decoder: false,
                ..SaeConfig::batch_topk(json_key(&cfg, "k", &cfg_path)?, latents)
            },
            "jumprelu" => SaeConfig::jumprelu(latents),
            other => return Err(unsupported(format!("architecture {other:?}"))),
        },
    };
    let file = TensorFile::open(dir.join("sae_weights.safetensors"))?;
    let w_enc = transpose(&float(&file, "W_enc", &[d_in, latents])?, d_in, latents);
    let b_dec = float(&file, "b_dec", &[d_in])?;
    let mut b_enc = float(&file, "b_enc", &[latents])?;
    let centred: Option<bool> = json_key(&cfg, "apply_b_dec_to_input", &cfg_path)?;
    if centred == Some(false) {
        // W_enc x + b_enc = W_enc (x - b_dec) + (b_enc + W_enc b_dec): fold into our bias.
        for (i, b) in b_enc.iter_mut().enumerate() {
            *b += (0..d_in)
                .map(|j| w_enc[i * d_in + j] * b_dec[j])
                .sum::<f32>();
        }
    }
    let threshold = (config.architecture == Architecture::JumpRelu)
        .then(|| float(&file, "threshold", &[latents]))
        .transpose()?;
    let hook = cfg
        .pointer("/metadata/hook_name")
        .or_else(|| cfg.get("hook_name"))
        .and_then(|v| v.as_str())
        .map(String::from)
        .unwrap_or_else(|| folder_name(dir));
    let sae = HostSae {
        b_enc: config.encoder_bias.then_some(b_enc),
        config: SaeConfig {
            num_latents: latents,
            ..config
        },
        w_enc,
        w_dec: float(&file, "W_dec", &[latents, d_in])?,
        b_dec,
        threshold,
        d_in,
    };
    let module_path = cfg
        .pointer(&format!("/metadata/{MODULE_PATH_KEY}"))
        .and_then(|v| v.as_bool())
        .unwrap_or(false);
    Ok((hook, sae, module_path))
}

/// Writes one SAE of `checkpoint` into `dir` (`cfg.json` + `sae_weights.safetensors`), with
/// the `cfg.json` SAELens 6 writes.
pub(super) fn write(
    hook: &str,
    sae: &HostSae,
    checkpoint: &Checkpoint,
    dir: &Path,
    dtype: StorageDtype,
) -> Result<()> {
    let config = &sae.config;
    let (l, d) = (sae.num_latents(), sae.d_in);
    let w_enc_t = transpose(&sae.w_enc, l, d);
    let mut tensors = vec![
        ("W_enc".to_string(), HostTensor::f32(vec![d, l], w_enc_t)),
        (
            "W_dec".to_string(),
            HostTensor::f32(vec![l, d], sae.w_dec.clone()),
        ),
        (
            "b_enc".to_string(),
            HostTensor::f32(vec![l], sae.b_enc.clone().unwrap_or_else(|| vec![0.0; l])),
        ),
        (
            "b_dec".to_string(),
            HostTensor::f32(vec![d], sae.b_dec.clone()),
        ),
    ];
    if let Some(t) = &sae.threshold {
        tensors.push(("threshold".to_string(), HostTensor::f32(vec![l], t.clone())));
    }
    let architecture = match config.architecture {
        Architecture::TopK => "topk",
        Architecture::BatchTopK => "batchtopk",
        Architecture::JumpRelu => "jumprelu",
        Architecture::Relu => "standard",
    };
    let mut metadata = json!({
        "sae_lens_version": SAELENS_VERSION,
        "hook_name": hook,
        MODULE_PATH_KEY: checkpoint.module_paths,
    });
    if let Some(model) = &checkpoint.base_model {
        metadata["model_name"] = json!(model);
    }
    let mut cfg = json!({
        "architecture": architecture,
        "d_in": d,
        "d_sae": l,
        "dtype": match dtype {
            StorageDtype::F32 => "float32",
            StorageDtype::F16 => "float16",
            StorageDtype::BF16 => "bfloat16",
        },
        "device": "cpu",
        "apply_b_dec_to_input": true,
        "normalize_activations": "none",
        "reshape_activations": "none",
        "metadata": metadata,
    });
    if matches!(
        config.architecture,
        Architecture::TopK | Architecture::BatchTopK
    ) {
        cfg["k"] = json!(config.k);
        cfg["rescale_acts_by_decoder_norm"] = json!(false);
    }
    // SAELens applies a ReLU to TopK values and always has an encoder bias; keep our exact math.
    cfg[SAE_CONFIG_KEY] = serde_json::to_value(config).expect("configs serialise");
    write_tensors(&dir.join("sae_weights.safetensors"), &tensors, dtype, None)?;
    write_json(&dir.join("cfg.json"), &cfg)
}
