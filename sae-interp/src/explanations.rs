//! Latent explanations on disk: `explanations.json` in a folder, mapping each hook path to its
//! latents' explanations (`{"model.layers.6": {"123": "the word 'not'", ...}}`). `sae dashboard`
//! shows them; any tool (or hand) may write the file.

use std::collections::BTreeMap;
use std::path::Path;

use sae_core::tensor_file::read_json;

use crate::error::{InterpError, Result};

/// The file in an explanations folder.
pub const EXPLANATIONS_FILE: &str = "explanations.json";

/// Hook path -> latent -> explanation.
pub type Explanations = BTreeMap<String, BTreeMap<usize, String>>;

/// Reads `dir/explanations.json`.
pub fn read_explanations(dir: &Path) -> Result<Explanations> {
    let file = dir.join(EXPLANATIONS_FILE);
    if !file.is_file() {
        return Err(InterpError::Invalid(format!(
            "{} holds no {EXPLANATIONS_FILE}",
            dir.display()
        )));
    }
    Ok(read_json(&file)?)
}
