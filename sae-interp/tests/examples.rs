//! Example sampling and the dashboard on the hand-written cache of `common`.

mod common;

use std::collections::BTreeMap;

use common::{HOOK, hand_cache, write_cache};
use sae_interp::{Cache, SamplingConfig, latent_examples, write_dashboard};

#[test]
fn top_contexts_are_the_most_activating_windows_without_overlap() {
    let dir = tempfile::tempdir().unwrap();
    let cache = hand_cache(dir.path());
    let examples = latent_examples(
        &cache,
        HOOK,
        &SamplingConfig {
            top: 2,
            window: 1,
            ..SamplingConfig::default()
        },
    )
    .unwrap();
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
    // (1, 5) first; then (0, 2); (0, 3)'s window would share tokens with (0, 2)'s: left out.
    let places: Vec<(usize, usize)> = three.top.iter().map(|c| (c.sequence, c.position)).collect();
    assert_eq!(places, [(1, 5), (0, 2)]);
    assert_eq!(
        (three.top[1].start, &three.top[1].tokens[..]),
        (1, &[101, 102, 103][..])
    );
    assert_eq!(three.top[1].activations, [0.0, 1.0, 0.5]);
    assert_eq!(three.top[0].tokens, [114, 115, 116]);
    // (1, 5) is the second token of the 2 x 2 image: the top row's right cell.
    assert_eq!(three.images.len(), 1);
    assert_eq!((three.images[0].image, three.images[0].max), (0, 2.0));
    assert_eq!(three.images[0].activations, [0.0, 2.0, 0.0, 0.0]);
    assert!(examples[1].images.is_empty());
    // At the end of a sequence the window is cut.
    assert_eq!(examples[1].top[0].tokens, [108, 109]);
}

#[test]
fn the_dashboard_links_every_latent_and_escapes_explanations() {
    let dir = tempfile::tempdir().unwrap();
    let cache = hand_cache(&dir.path().join("cache"));
    // Not into the cache: copying its images onto themselves would empty them.
    let sampling = SamplingConfig::default();
    let err = write_dashboard(&cache, None, &dir.path().join("cache/dash"), &sampling).unwrap_err();
    assert!(
        err.to_string().contains("is the cache folder or inside it"),
        "{err}"
    );
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
    // The image latent 3 fires on, copied, its top right region fully shaded.
    assert!(page.contains("<img src=\"../images/000000.png\""), "{page}");
    assert!(page.contains("repeat(2,1fr)\"><div style=\"background:rgba(255,0,0,0.000)\" title=\"0.0000\"></div><div style=\"background:rgba(255,0,0,1.000)\" title=\"2.0000\">"), "{page}");
    assert!(out.join("images/000000.png").is_file());
    // The activating token, fully shaded, with its activation on hover.
    assert!(page.contains("<span class=\"at\" style=\"background:rgba(255,140,0,1.000)\" title=\"2.0000\">&lt;t115&gt;</span>"), "{page}");
}

#[test]
fn records_or_images_outside_the_sequences_or_the_dictionary_are_corrupt() {
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
    let dir = tempfile::tempdir().unwrap();
    hand_cache(dir.path());
    std::fs::remove_file(dir.path().join("images/000000.png")).unwrap();
    let err = Cache::open(dir.path()).unwrap_err();
    assert!(
        err.to_string()
            .contains("image images/000000.png does not exist or lies outside its sequence"),
        "{err}"
    );
}

#[cfg(unix)]
#[test]
fn a_cache_image_that_is_a_symbolic_link_is_refused_and_nothing_is_copied() {
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("secret.png");
    std::fs::write(&secret, "not for the dashboard").unwrap();
    let image = dir.path().join("cache/images/000000.png");
    let cache = hand_cache(&dir.path().join("cache"));
    std::fs::remove_file(&image).unwrap();
    std::os::unix::fs::symlink(&secret, &image).unwrap();
    // Linked after the cache was opened: the dashboard checks again before it copies.
    let out = dir.path().join("dash");
    let err = write_dashboard(&cache, None, &out, &SamplingConfig::default()).unwrap_err();
    let refusal = format!(
        "corrupt cache: {}: image \"images/000000.png\" passes through the symbolic link {}; a cache reads only files inside its folder",
        dir.path().join("cache/cache.json").display(),
        image.display()
    );
    assert_eq!(err.to_string(), refusal);
    assert!(!out.join("images/000000.png").exists());
    // Linked before: the cache does not open.
    let err = Cache::open(&dir.path().join("cache")).unwrap_err();
    assert_eq!(err.to_string(), refusal);
}

#[test]
fn a_hook_point_that_leaves_the_latents_folder_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    hand_cache(dir.path());
    let info = dir.path().join("cache.json");
    let text = std::fs::read_to_string(&info).unwrap();
    std::fs::write(&info, text.replace(&format!("\"{HOOK}\""), "\"../x\"")).unwrap();
    let err = Cache::open(dir.path()).unwrap_err();
    assert_eq!(
        err.to_string(),
        format!(
            "corrupt cache: {}: hook point \"../x\" leaves the folder through `..`; a cache reads only files inside its folder",
            info.display()
        )
    );
}

#[test]
fn random_and_quiet_contexts_stay_apart_from_the_top_ones_and_from_firings() {
    let dir = tempfile::tempdir().unwrap();
    let cache = hand_cache(dir.path());
    let config = SamplingConfig {
        top: 1,
        window: 1,
        random: 5,
        non_activating: 4,
        seed: 7,
        images: 0,
    };
    let examples = latent_examples(&cache, HOOK, &config).unwrap();
    let three = &examples[0];
    assert_eq!((three.top[0].sequence, three.top[0].position), (1, 5));
    // (0, 2) and (0, 3) are within two windows of each other: one of them, not both.
    assert_eq!(three.random.len(), 1);
    let r = &three.random[0];
    assert!(r.sequence == 0 && [2, 3].contains(&r.position), "{r:?}");
    assert_eq!(r.max_activation(), if r.position == 2 { 1.0 } else { 0.5 });
    assert_eq!(three.non_activating.len(), 4);
    for q in &three.non_activating {
        let fired: &[usize] = if q.sequence == 0 { &[2, 3] } else { &[5] };
        let window = q.start..q.start + q.tokens.len();
        assert!(fired.iter().all(|p| !window.contains(p)), "{q:?}");
        assert!(q.activations.iter().all(|&a| a == 0.0));
    }
    // Seeded: the same contexts again.
    assert_eq!(latent_examples(&cache, HOOK, &config).unwrap(), examples);
}
