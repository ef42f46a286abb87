//! The hand-written cache the example, dashboard and chat tests share: two sequences of ten
//! tokens (ids 100..120, text `<tID>`), latent 3 firing at (0, 2) = 1.0, (0, 3) = 0.5 and
//! (1, 5) = 2.0, latent 7 at (0, 9) = 0.25, of 8 latents at model.layers.0; positions 4 to 7
//! of sequence 1 are a 2 x 2 image (a 4 x 4 gray PNG).
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::Path;

use sae_core::tensor_file::{write_json, write_tensors};
use sae_core::{HostTensor, StorageDtype};
use sae_interp::{Cache, CacheInfo, HookCache, ImagePlacement};

/// The hook point of the hand cache.
pub const HOOK: &str = "model.layers.0";

/// Writes the cache with these records.
pub fn write_cache(dir: &Path, locations: Vec<i64>, activations: Vec<f32>) {
    let ids: Vec<i64> = (100..120).collect();
    let tokens = [
        (
            "input_ids".to_string(),
            HostTensor::i64(vec![20], ids.clone()),
        ),
        (
            "sequence_starts".to_string(),
            HostTensor::i64(vec![3], vec![0, 10, 20]),
        ),
        (
            "first_rows".to_string(),
            HostTensor::i64(vec![2, 2], vec![0, 0, 0, 1]),
        ),
    ];
    write_tensors(
        &dir.join("tokens.safetensors"),
        &tokens,
        StorageDtype::F32,
        None,
    )
    .unwrap();
    let n = activations.len();
    let shard = [
        (
            "locations".to_string(),
            HostTensor::i64(vec![n, 3], locations),
        ),
        (
            "activations".to_string(),
            HostTensor::f32(vec![n], activations),
        ),
    ];
    let file = dir.join("latents").join(HOOK).join("00000.safetensors");
    write_tensors(&file, &shard, StorageDtype::F32, None).unwrap();
    let hook = HookCache {
        num_latents: 8,
        tokens: 20,
        records: n as u64,
        shards: 1,
    };
    let info = CacheInfo {
        sae: "sae".into(),
        data: "data".into(),
        sequences: 2,
        tokens: 20,
        image_token: None,
        hooks: BTreeMap::from([(HOOK.to_string(), hook)]),
        vocab: ids.iter().map(|&id| (id, format!("<t{id}>"))).collect(),
        images: vec![ImagePlacement {
            file: "images/000000.png".into(),
            sequence: 1,
            start: 4,
            rows: 2,
            cols: 2,
            stride: 2,
        }],
    };
    std::fs::create_dir_all(dir.join("images")).unwrap();
    let gray = image::RgbImage::from_pixel(4, 4, image::Rgb([100, 100, 100]));
    gray.save(dir.join("images/000000.png")).unwrap();
    write_json(&dir.join("cache.json"), &info).unwrap();
}

/// Writes the hand cache to `dir` and opens it.
pub fn hand_cache(dir: &Path) -> Cache {
    let locations = vec![0, 2, 3, 0, 3, 3, 1, 5, 3, 0, 9, 7];
    write_cache(dir, locations, vec![1.0, 0.5, 2.0, 0.25]);
    Cache::open(dir).unwrap()
}
