//! Where a model comes from (`--model M`): a local Hugging Face folder, a hub id resolved through
//! `hf-hub` (cache first; `HF_HOME` / `HF_HUB_CACHE` and `HF_HUB_OFFLINE` honoured), or a GGUF
//! file.

use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::error::{ModelError, Result};

/// A model specification as users write it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ModelSource {
    /// A folder with `config.json`, safetensors and tokenizer files.
    Dir(PathBuf),
    /// A `.gguf` file.
    Gguf(PathBuf),
    /// A hub id such as `HuggingFaceTB/SmolLM2-135M-Instruct`.
    Hub(String),
}

impl ModelSource {
    /// Reads a `--model` argument: an existing folder, a `.gguf` path, else a hub id.
    pub fn parse(spec: &str) -> Self {
        let path = Path::new(spec);
        if path
            .extension()
            .is_some_and(|e| e.eq_ignore_ascii_case("gguf"))
        {
            ModelSource::Gguf(path.to_path_buf())
        } else if path.is_dir()
            || spec.starts_with('.')
            || spec.starts_with('/')
            || spec.matches('/').count() != 1
        {
            ModelSource::Dir(path.to_path_buf())
        } else {
            ModelSource::Hub(spec.to_string())
        }
    }

    /// The local folder with the model's files, fetching hub files that are not cached yet
    /// (a GGUF file has no folder: load it with [`crate::gguf_model::load`]).
    pub fn local_dir(&self) -> Result<PathBuf> {
        match self {
            ModelSource::Dir(dir) if dir.join("config.json").is_file() => Ok(dir.clone()),
            ModelSource::Dir(dir) if !dir.exists() => Err(ModelError::NoSuchModel(dir.clone())),
            ModelSource::Dir(dir) => Err(ModelError::NotAModel(dir.clone())),
            ModelSource::Gguf(path) => Err(ModelError::NotAModel(path.clone())),
            ModelSource::Hub(id) => hub_snapshot(id),
        }
    }
}

/// Files a model folder may have besides its weights.
const MODEL_FILES: &[(&str, bool)] = &[
    ("config.json", true),
    ("tokenizer.json", true),
    ("tokenizer_config.json", false),
    ("generation_config.json", false),
    ("chat_template.jinja", false),
    ("processor_config.json", false),
    ("preprocessor_config.json", false),
];

/// The snapshot folder of hub model `id` with every file the model needs.
fn hub_snapshot(id: &str) -> Result<PathBuf> {
    let offline = std::env::var("HF_HUB_OFFLINE").is_ok_and(|v| !v.is_empty() && v != "0");
    let cache = match std::env::var_os("HF_HUB_CACHE") {
        Some(dir) => hf_hub::Cache::new(dir.into()),
        None => hf_hub::Cache::from_env(),
    };
    let cached = cache.model(id.to_string());
    let api = if offline {
        None
    } else {
        Some(
            hf_hub::api::sync::ApiBuilder::from_env()
                .build()
                .map_err(|e| ModelError::Hub {
                    id: id.to_string(),
                    message: e.to_string(),
                })?,
        )
    };
    let fetch = |file: &str| -> Result<Option<PathBuf>> {
        if let Some(path) = cached.get(file) {
            return Ok(Some(path));
        }
        let Some(api) = &api else { return Ok(None) };
        match api.model(id.to_string()).get(file) {
            Ok(path) => Ok(Some(path)),
            Err(hf_hub::api::sync::ApiError::RequestError(e)) if e.to_string().contains("404") => {
                Ok(None)
            }
            Err(e) => Err(ModelError::Hub {
                id: id.to_string(),
                message: format!("{file}: {e}"),
            }),
        }
    };
    let missing = |file: &str| ModelError::Hub {
        id: id.to_string(),
        message: if offline {
            format!("{file} is not in the Hugging Face cache and HF_HUB_OFFLINE is set")
        } else {
            format!("the repository has no {file}")
        },
    };
    let config = fetch("config.json")?.ok_or_else(|| missing("config.json"))?;
    for (file, required) in MODEL_FILES {
        if fetch(file)?.is_none() && *required {
            return Err(missing(file));
        }
    }
    if fetch("model.safetensors")?.is_none() {
        let index =
            fetch("model.safetensors.index.json")?.ok_or_else(|| missing("model.safetensors"))?;
        let index: Value = sae_core::tensor_file::read_json(&index)?;
        let mut shards: Vec<&str> = index["weight_map"]
            .as_object()
            .map(|m| m.values().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        shards.sort();
        shards.dedup();
        for shard in shards {
            fetch(shard)?.ok_or_else(|| missing(shard))?;
        }
    }
    Ok(config
        .parent()
        .expect("a cached file is in a snapshot folder")
        .to_path_buf())
}
