//! `cache_latents` against the model's own hook outputs: an SAE with `W_enc = W_dec = [I; -I]`
//! and `k = d` keeps, for each feature `i`, latent `i` with activation `x_i` where `x_i > 0` and
//! latent `d + i` with activation `-x_i` where `x_i < 0`, so every record follows from the
//! activations a plain forward pass records.

#[path = "../../sae-train/tests/common/mod.rs"]
mod exact;

use std::collections::HashMap;
use std::path::Path;

use burn::backend::Flex;
use burn::tensor::DType;
use sae_activations::ReadConfig;
use sae_core::{HookedModule, Recorder};
use sae_data::{Batching, Dataset, Loader, StreamConfig};
use sae_interp::{Cache, CacheConfig, InterpError, SamplingConfig, cache_latents, latent_examples};
use sae_models::{AnyModel, LanguageModel};

use exact::{D, HOOK, dataset, exact_sae, model_dir};

/// The first `batches` packed batches and the hook's activations on them, by a plain pass.
fn reference(data: &Path, batches: usize) -> Vec<(Vec<i64>, Vec<f32>)> {
    let lm =
        LanguageModel::<Flex>::load(model_dir().to_str().unwrap(), &Default::default()).unwrap();
    let dataset = Dataset::open(data).unwrap();
    let stream = StreamConfig {
        shuffle: false,
        ..StreamConfig::default()
    };
    let batching = Batching::Pack { context: 32 };
    let mut loader = Loader::new(&dataset, &lm.tokenizer, stream, batching, 2, None).unwrap();
    (0..batches)
        .map(|_| {
            let batch = loader.next_batch().unwrap().unwrap();
            let mut recorder = Recorder::new(&[HOOK.to_string()]).unwrap();
            let input = sae_activations::lm_input::<Flex>(&batch, &Default::default());
            lm.model.forward_hooked(input, &mut recorder);
            let x = recorder.records.remove(0).1;
            (batch.input_ids, x.into_data().to_vec::<f32>().unwrap())
        })
        .collect()
}

#[test]
fn the_records_are_the_active_latents_of_every_token() {
    let dir = tempfile::tempdir().unwrap();
    let data = dataset(dir.path());
    let sae_dir = dir.path().join("sae");
    exact_sae(&sae_dir);
    let out = dir.path().join("cache");
    let config = CacheConfig {
        batches: Some(3),
        read: ReadConfig {
            batch_size: 2,
            context: 32,
            ..ReadConfig::default()
        },
        shard_records: 1000,
    };
    let device = Default::default();
    let model =
        AnyModel::<Flex>::load_as(model_dir().to_str().unwrap(), DType::F32, &device).unwrap();
    let info = cache_latents(model, &sae_dir, &data, &out, &config, &device).unwrap();
    assert_eq!((info.sequences, info.tokens), (6, 6 * 32));
    let hook = &info.hooks[HOOK];
    assert_eq!((hook.tokens, hook.num_latents), (6 * 32, 2 * D));
    // 64 records a token, 1000 a shard.
    assert_eq!((hook.records, hook.shards), (6 * 32 * 64, 13));

    let cache = Cache::open(&out).unwrap();
    let records = cache.records(HOOK).unwrap();
    let got: HashMap<[usize; 3], f32> = records
        .locations
        .iter()
        .copied()
        .zip(records.activations.iter().copied())
        .collect();
    assert_eq!(got.len(), records.activations.len(), "no location twice");
    let mut checked = 0;
    for (b, (ids, x)) in reference(&data, 3).into_iter().enumerate() {
        for s in 0..2 {
            let sequence = 2 * b + s;
            assert_eq!(cache.sequence(sequence), &ids[s * 32..(s + 1) * 32]);
            for p in 0..32 {
                for i in 0..D {
                    let v = x[(s * 32 + p) * D + i];
                    let latent = if v > 0.0 { i } else { D + i };
                    let a = got[&[sequence, p, latent]];
                    assert!(
                        (a - v.abs()).abs() <= 1e-6 * v.abs(),
                        "{sequence} {p} {i}: {a} vs {v}"
                    );
                    checked += 1;
                }
            }
        }
    }
    assert_eq!(checked, records.activations.len());
    let lm = LanguageModel::<Flex>::load(model_dir().to_str().unwrap(), &device).unwrap();
    let id = cache.sequence(0)[1];
    assert_eq!(cache.text(id), lm.tokenizer.decode(&[id]).unwrap());

    // Each latent's statistics and top context follow from the same activations.
    let examples = latent_examples(
        &cache,
        HOOK,
        &SamplingConfig {
            top: 3,
            window: 2,
            ..SamplingConfig::default()
        },
    )
    .unwrap();
    let first = examples.iter().find(|e| e.latent == 5).unwrap();
    let fired: Vec<f32> = records
        .locations
        .iter()
        .zip(&records.activations)
        .filter(|(l, _)| l[2] == 5)
        .map(|(_, &a)| a)
        .collect();
    assert_eq!(first.firings, fired.len() as u64);
    assert_eq!(
        first.max_activation,
        fired.iter().fold(f32::MIN, |m, &a| m.max(a))
    );
    assert_eq!(first.top[0].max_activation(), first.max_activation);
    assert!(
        first
            .top
            .windows(2)
            .all(|w| w[0].max_activation() >= w[1].max_activation())
    );
}

#[test]
fn a_used_output_folder_and_a_folder_without_a_cache_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let data = dataset(dir.path());
    let sae_dir = dir.path().join("sae");
    exact_sae(&sae_dir);
    let device = Default::default();
    let model =
        AnyModel::<Flex>::load_as(model_dir().to_str().unwrap(), DType::F32, &device).unwrap();
    let err = cache_latents(
        model,
        &sae_dir,
        &data,
        dir.path(),
        &CacheConfig::default(),
        &device,
    )
    .unwrap_err();
    assert!(matches!(err, InterpError::OutputExists(_)), "{err}");
    assert!(!dir.path().join("cache.json").exists());
    // Skipping more positions than a context holds leaves no token to record, not an error.
    let config = CacheConfig {
        batches: Some(1),
        read: ReadConfig {
            batch_size: 2,
            context: 32,
            skip_first_tokens: 32,
            ..ReadConfig::default()
        },
        ..CacheConfig::default()
    };
    let model =
        AnyModel::<Flex>::load_as(model_dir().to_str().unwrap(), DType::F32, &device).unwrap();
    let out = dir.path().join("empty");
    let info = cache_latents(model, &sae_dir, &data, &out, &config, &device).unwrap();
    assert_eq!(
        (
            info.sequences,
            info.hooks[HOOK].tokens,
            info.hooks[HOOK].records
        ),
        (2, 0, 0)
    );
    assert!(
        Cache::open(&out)
            .unwrap()
            .records(HOOK)
            .unwrap()
            .activations
            .is_empty()
    );
    let err = Cache::open(&sae_dir).unwrap_err();
    assert!(err.to_string().contains("holds no latent cache"), "{err}");
}
