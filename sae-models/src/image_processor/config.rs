//! Finding and reading an image processor's settings: the `image_processor` object of
//! `processor_config.json` (transformers 5) or the top level of `preprocessor_config.json` (older
//! hub layout).

use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;

use crate::error::{ModelError, Result, bad_config};

/// The settings file of the model folder `dir`: `processor_config.json`, else
/// `preprocessor_config.json`.
fn settings_file(dir: &Path) -> Result<PathBuf> {
    ["processor_config.json", "preprocessor_config.json"]
        .iter()
        .map(|name| dir.join(name))
        .find(|path| path.is_file())
        .ok_or_else(|| ModelError::BadConfig {
            file: dir.to_path_buf(),
            message: "no processor_config.json or preprocessor_config.json".into(),
        })
}

/// An image processor read from its settings (either layout).
pub trait ProcessorSettings: Sized {
    /// The settings as the file holds them.
    type Raw: DeserializeOwned;
    /// The `image_processor_type`s the settings may name.
    const TYPES: &'static [&'static str];

    /// The processor from the file's settings; the message names what is wrong.
    fn from_raw(raw: Self::Raw) -> std::result::Result<Self, String>;

    /// Reads the settings of a model folder (`processor_config.json`, else
    /// `preprocessor_config.json`).
    fn from_model_dir(dir: &Path) -> Result<Self> {
        Self::from_file(&settings_file(dir)?)
    }

    /// Reads the settings from `processor_config.json` (its `image_processor` object) or from
    /// `preprocessor_config.json` (top-level keys).
    fn from_file(path: &Path) -> Result<Self> {
        Self::from_raw(read(path, Self::TYPES)?).map_err(|message| ModelError::BadConfig {
            file: path.to_path_buf(),
            message,
        })
    }
}

/// Reads the image processor settings in `path` (either layout), after checking that its
/// `image_processor_type`, when given, is one of `types`.
fn read<T: DeserializeOwned>(path: &Path, types: &[&str]) -> Result<T> {
    let mut json: serde_json::Value = sae_core::tensor_file::read_json(path)?;
    if let Some(nested) = json.get_mut("image_processor") {
        json = nested.take();
    }
    let bad = bad_config(path);
    if let Some(found) = json.get("image_processor_type").and_then(|t| t.as_str())
        && !types.contains(&found)
    {
        return Err(bad(format!(
            "image_processor_type is {found:?}, expected one of {types:?}"
        )));
    }
    serde_json::from_value(json).map_err(|e| bad(e.to_string()))
}

/// PIL's code for bicubic resampling, the only `resample` these processors implement.
pub(crate) const BICUBIC: u32 = 3;

/// Fails unless `resample` is bicubic.
pub(crate) fn check_bicubic(resample: u32) -> Result<(), String> {
    if resample == BICUBIC {
        Ok(())
    } else {
        Err(format!(
            "resample {resample} is not supported (only 3, bicubic)"
        ))
    }
}
