//! Example sampling and the dashboard on a cache written by hand: two sequences of ten tokens,
//! latent 3 firing at (0, 2) = 1.0, (0, 3) = 0.5 and (1, 5) = 2.0, latent 7 at (0, 9) = 0.25.

use std::collections::BTreeMap;
use std::path::Path;

use sae_core::HostTensor;
use sae_core::StorageDtype;
use sae_core::tensor_file::{write_json, write_tensors};
use sae_interp::{Cache, CacheInfo, HookCache, SamplingConfig, latent_examples, write_dashboard};

const HOOK: &str = "model.layers.0";

fn write_cache(dir: &Path, locations: Vec<i64>, activations: Vec<f32>) {
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
    };
    write_json(&dir.join("cache.json"), &info).unwrap();
}

fn hand_cache(dir: &Path) -> Cache {
    let locations = vec![0, 2, 3, 0, 3, 3, 1, 5, 3, 0, 9, 7];
    write_cache(dir, locations, vec![1.0, 0.5, 2.0, 0.25]);
    Cache::open(dir).unwrap()
}

#[test]
fn top_contexts_are_the_most_activating_windows_without_overlap() {
    let dir = tempfile::tempdir().unwrap();
    let cache = hand_cache(dir.path());
    let examples = latent_examples(&cache, HOOK, &SamplingConfig { top: 2, window: 1 }).unwrap();
    assert_eq!(
        examples.iter().map(|e| e.latent).collect::<Vec<_>>(),
        [3, 7]
    );
    let three = &examples[0];
    assert_eq!(three.firings, 3);
    assert_eq!(three.frequency, 3.0 / 20.0);
    assert_eq!(
        (three.max_activation, three.mean_activation),
        (2.0, 3.5 / 3.0)
    );
    // (1, 5) first; then (0, 2); (0, 3) lies within one token of (0, 2) and is left out.
    let places: Vec<(usize, usize)> = three.top.iter().map(|c| (c.sequence, c.position)).collect();
    assert_eq!(places, [(1, 5), (0, 2)]);
    assert_eq!(
        (three.top[1].start, &three.top[1].tokens[..]),
        (1, &[101, 102, 103][..])
    );
    assert_eq!(three.top[1].activations, [0.0, 1.0, 0.5]);
    assert_eq!(three.top[0].tokens, [114, 115, 116]);
    // At the end of a sequence the window is cut.
    assert_eq!(examples[1].top[0].tokens, [108, 109]);
}

#[test]
fn the_dashboard_links_every_latent_and_escapes_explanations() {
    let dir = tempfile::tempdir().unwrap();
    let cache = hand_cache(dir.path());
    let out = dir.path().join("dash");
    let explanations = BTreeMap::from([(
        HOOK.to_string(),
        BTreeMap::from([(3, "<b>fish</b> & chips".to_string())]),
    )]);
    let summary = write_dashboard(
        &cache,
        Some(&explanations),
        &out,
        &SamplingConfig::default(),
    )
    .unwrap();
    assert_eq!(summary.latent_pages, 2);
    let index = std::fs::read_to_string(out.join("index.html")).unwrap();
    assert!(
        index.contains("<a href=\"0/3.html\">3</a>")
            && index.contains("<a href=\"0/7.html\">7</a>")
    );
    assert!(
        index.contains("&lt;b&gt;fish&lt;/b&gt; &amp; chips"),
        "{index}"
    );
    assert!(
        index.contains("2 of 8 latents fired over 20 tokens"),
        "{index}"
    );
    let page = std::fs::read_to_string(out.join("0/3.html")).unwrap();
    assert!(
        page.contains("Fires on 3 tokens (15.000%); max activation 2.0000, mean 1.1667"),
        "{page}"
    );
    // The activating token, fully shaded, with its activation on hover.
    assert!(page.contains("<span class=\"at\" style=\"background:rgba(255,140,0,1.000)\" title=\"2.0000\">&lt;t115&gt;</span>"), "{page}");
}

#[test]
fn records_outside_the_sequences_or_the_dictionary_are_corrupt() {
    for location in [vec![2, 0, 0], vec![0, 10, 0], vec![0, 0, 8]] {
        let dir = tempfile::tempdir().unwrap();
        write_cache(dir.path(), location.clone(), vec![1.0]);
        let err = Cache::open(dir.path()).unwrap().records(HOOK).unwrap_err();
        assert!(
            err.to_string()
                .contains("is outside the cached sequences or the dictionary"),
            "{location:?}: {err}"
        );
    }
}
