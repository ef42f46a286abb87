//! `evaluate` against hand-derived values: an SAE that reconstructs its input exactly must give
//! FVU 0, L0 = d_in and 100 % CE / KL loss recovered, and the clean and zero-ablated
//! cross-entropies must equal a plain log-sum-exp over the model's own logits.

mod common;

use std::path::Path;

use burn::backend::Flex;
use burn::tensor::Tensor;
use common::{D, HOOK, dataset, exact_sae, model_dir};
use sae_activations::ReadConfig;
use sae_core::{HookedModule, Hooks, NoHooks};
use sae_data::{Batching, Dataset, Loader, StreamConfig};
use sae_models::{AnyModel, LanguageModel};
use sae_train::{EvalConfig, evaluate};

struct Zero;
impl Hooks<Flex> for Zero {
    fn call(&mut self, path: &str, x: Tensor<Flex, 3>) -> Tensor<Flex, 3> {
        if path == HOOK { x.zeros_like() } else { x }
    }
}

/// Mean next-token cross-entropy over the first `batches` packed batches, by log-sum-exp on
/// the host.
fn plain_ce(data: &Path, hooks: &mut dyn Hooks<Flex>, batches: usize) -> f64 {
    let lm =
        LanguageModel::<Flex>::load(model_dir().to_str().unwrap(), &Default::default()).unwrap();
    let dataset = Dataset::open(data).unwrap();
    let stream = StreamConfig {
        shuffle: false,
        ..StreamConfig::default()
    };
    let mut loader = Loader::new(
        &dataset,
        &lm.tokenizer,
        stream,
        Batching::Pack { context: 32 },
        2,
        None,
    )
    .unwrap();
    let (mut total, mut count) = (0f64, 0usize);
    for _ in 0..batches {
        let batch = loader.next_batch().unwrap().unwrap();
        let input = sae_activations::lm_input::<Flex>(&batch, &Default::default());
        let logits = lm.model.forward_hooked(input, hooks).logits.unwrap();
        let vocab = logits.dims()[2];
        let values = logits.into_data().to_vec::<f32>().unwrap();
        for (pos, row) in values.chunks_exact(vocab).enumerate() {
            if pos % 32 == 31 {
                continue;
            }
            let max = row.iter().fold(f32::MIN, |m, &v| m.max(v)) as f64;
            let lse = max
                + row
                    .iter()
                    .map(|&v| (v as f64 - max).exp())
                    .sum::<f64>()
                    .ln();
            total += lse - row[batch.input_ids[pos + 1] as usize] as f64;
            count += 1;
        }
    }
    total / count as f64
}

#[test]
fn an_exact_sae_recovers_everything_and_ce_matches_log_sum_exp() {
    let dir = tempfile::tempdir().unwrap();
    let data = dataset(dir.path());
    let sae_dir = dir.path().join("sae");
    exact_sae(&sae_dir);
    let config = EvalConfig {
        batches: 3,
        read: ReadConfig {
            batch_size: 2,
            context: 32,
            ..ReadConfig::default()
        },
        ..EvalConfig::default()
    };
    let device = Default::default();
    let model = LanguageModel::<Flex>::load(model_dir().to_str().unwrap(), &device).unwrap();
    let report = evaluate(
        AnyModel::Text(Box::new(model)),
        &sae_dir,
        &data,
        &config,
        &device,
    )
    .unwrap();

    assert_eq!(report.tokens, 3 * 2 * 32);
    assert_eq!(report.predictions, 3 * 2 * 31);
    let hook = &report.hooks[HOOK];
    assert!(hook.fvu < 1e-10, "fvu {}", hook.fvu);
    assert_eq!(hook.l0, D as f64);
    assert_eq!(hook.num_latents, 2 * D);
    let rel = |a: f64, b: f64| (a - b).abs() / b.abs();
    assert!(rel(report.ce_sae, report.ce_clean) < 1e-6, "{report:?}");
    assert!(report.kl_sae.abs() < 1e-6, "{report:?}");
    assert!((report.ce_loss_recovered - 1.0).abs() < 1e-4, "{report:?}");
    assert!((report.kl_loss_recovered - 1.0).abs() < 1e-4, "{report:?}");

    let clean = plain_ce(&data, &mut NoHooks, 3);
    let zero = plain_ce(&data, &mut Zero, 3);
    assert!(
        rel(report.ce_clean, clean) < 1e-5,
        "{} vs {clean}",
        report.ce_clean
    );
    assert!(
        rel(report.ce_zero, zero) < 1e-5,
        "{} vs {zero}",
        report.ce_zero
    );
    // (The tiny model is random: zero ablation need not raise its CE, but it moves the
    // distribution.)
    assert!(report.kl_zero > 1e-3, "{report:?}");
}
