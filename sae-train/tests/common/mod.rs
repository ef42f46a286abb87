//! Shared by the evaluation and latent-caching tests: the tiny Qwen2 fixture, a small text
//! dataset, and an SAE whose latents follow from its input by hand.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

use burn::backend::Flex;
use burn::tensor::{Tensor, TensorData};
use sae_core::formats::{self, Checkpoint, HostSae, Layout};
use sae_core::{Sae, SaeConfig, StorageDtype, TargetModules};
use sae_data::{Format, PreprocessOptions};

/// The hook point of the exact SAE.
pub const HOOK: &str = "model.layers.1";
/// Its width.
pub const D: usize = 64;

/// The tiny Qwen2 fixture.
pub fn model_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../sae-models/tests/fixtures/qwen2_tiny")
}

/// Six pseudo-texts of 200 words in the dataset `root/data`.
pub fn dataset(root: &Path) -> PathBuf {
    let texts = root.join("texts");
    std::fs::create_dir_all(&texts).unwrap();
    let words = [
        "one", "two", "red", "blue", "fish", "cat", "sat", "on", "the", "mat",
    ];
    for doc in 0..6usize {
        let text: Vec<&str> = (0..200)
            .map(|i| words[(i * 7 + doc * 3 + i / 5) % 10])
            .collect();
        std::fs::write(texts.join(format!("{doc}.txt")), text.join(" ")).unwrap();
    }
    let out = root.join("data");
    sae_data::preprocess(
        &PreprocessOptions::new(Format::Text, &texts, &out),
        &mut |_| {},
    )
    .unwrap();
    out
}

/// The SAE Made Easy TopK SAE with `W_enc = W_dec = [I; -I]`, `k = d`: for each feature exactly
/// one of its two latents is positive and among the top `d`, so the decoder returns `x` exactly.
pub fn exact_sae(dir: &Path) {
    let mut eye = vec![0f32; 2 * D * D];
    for i in 0..D {
        eye[i * D + i] = 1.0;
        eye[(D + i) * D + i] = -1.0;
    }
    let device = Default::default();
    let w = || Tensor::<Flex, 2>::from_data(TensorData::new(eye.clone(), [2 * D, D]), &device);
    let sae = Sae::from_tensors(
        SaeConfig::topk(D, 2 * D),
        w(),
        None,
        w(),
        Tensor::zeros([D], &device),
        None,
    )
    .unwrap();
    let checkpoint = Checkpoint {
        layout: Layout::Peft,
        saes: [(HOOK.to_string(), HostSae::from_sae(&sae))].into(),
        target_modules: Some(TargetModules::Names(vec![HOOK.into()])),
        base_model: None,
        module_paths: true,
    };
    formats::save(&checkpoint, Layout::Peft, dir, StorageDtype::F32).unwrap();
}
