//! The run configuration: the recipes of `examples/train/` parse, overrides win over the file,
//! and what the seed scripts fix (hook points, k, latents, devices) is what they say.

use std::path::PathBuf;

use sae_core::TargetModules;
use sae_train::config::{Strategy, parse_value};
use sae_train::{Schedule, TrainConfig};

fn recipe(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(format!("../examples/train/{name}.toml"))
}

#[test]
fn every_recipe_parses() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../examples/train");
    let mut count = 0;
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "toml") {
            TrainConfig::load(&path, &[]).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            count += 1;
        }
    }
    assert_eq!(count, 4);
}

#[test]
fn qwen_recipes_mirror_the_seed_scripts() {
    for (name, layer, devices, strategy) in [
        ("qwen25vl_7b_ddp", 24, 8, Strategy::Ddp),
        ("qwen25vl_7b_zero2", 24, 8, Strategy::Zero2),
        ("qwen25vl_72b_zero3", 32, 8, Strategy::Zero3),
    ] {
        let c = TrainConfig::load(&recipe(name), &[]).unwrap();
        assert_eq!(
            c.target_modules,
            TargetModules::Names(vec![format!(
                "model.language_model.layers.{layer}.mlp.down_proj"
            )])
        );
        assert_eq!((c.sae.k, c.sae.num_latents), (32, 4096));
        assert!(c.sae.is_sae_made_easy());
        assert_eq!(
            (c.parallel.devices, c.parallel.strategy),
            (devices, strategy)
        );
    }
}

#[test]
fn overrides_win_and_create_sections() {
    let overrides = vec![
        ("train.lr".to_string(), parse_value("3e-4")),
        ("train.schedule".to_string(), parse_value("cosine")),
        ("sae.k".to_string(), parse_value("16")),
        ("log.tensorboard".to_string(), parse_value("false")),
    ];
    let c = TrainConfig::load(&recipe("smollm2_shakespeare"), &overrides).unwrap();
    assert_eq!(c.train.lr, Some(3e-4));
    assert_eq!(c.train.schedule, Schedule::Cosine);
    assert_eq!(c.sae.k, 16);
    assert!(!c.log.tensorboard);
    // Unchanged keys keep the file's values; the saved form parses back to the same config.
    assert_eq!(c.sae.num_latents, 4608);
    assert_eq!(TrainConfig::parse(&c.to_toml(), "saved", &[]).unwrap(), c);
}
