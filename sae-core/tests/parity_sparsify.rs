//! Parity with EleutherAI sparsify's `SparseCoder` on the `sparsify_topk` fixture.

mod common;

use burn::tensor::Tensor;
use common::{B, fixture, max_rel_diff, reference, values};
use sae_core::formats;
use sae_core::tensor_file::StorageDtype;
use sae_core::{HookKind, HookPoint, HookedModule, Hooks, Layout, SaeModel};

#[test]
fn sparsify_topk_matches_the_reference() {
    let checkpoint = formats::load(&fixture("sparsify_topk")).unwrap();
    assert_eq!(checkpoint.layout, sae_core::Layout::Sparsify);
    let host = &checkpoint.saes["layers.1"];
    assert!(host.config.relu && host.config.encoder_bias && host.config.k == 8);
    let device = Default::default();
    let sae = host.to_sae::<B>(&device).unwrap();

    let x: Tensor<B, 2> = reference("sparsify_topk/reference.safetensors", "x").to_float(&device);
    let out = sae.forward(x, None).unwrap();

    let ref_idx = match reference("sparsify_topk/reference.safetensors", "latent_indices").data {
        sae_core::HostData::I64(v) => v,
        other => panic!("indices should be int64, got {other:?}"),
    };
    let ref_acts = reference("sparsify_topk/reference.safetensors", "latent_acts").to_f32();
    let ours_idx: Vec<i64> = out
        .latents
        .indices
        .clone()
        .into_data()
        .convert::<i64>()
        .into_vec()
        .unwrap();
    let ours_acts = values(out.latents.values.clone());
    // sparsify's top-k is unsorted: compare each token's (index, value) pairs sorted by index.
    let by_index = |idx: &[i64], acts: &[f32]| {
        let mut rows: Vec<Vec<(i64, f32)>> = idx
            .chunks(8)
            .zip(acts.chunks(8))
            .map(|(i, a)| i.iter().copied().zip(a.iter().copied()).collect())
            .collect();
        rows.iter_mut().for_each(|r| r.sort_by_key(|p| p.0));
        rows
    };
    let (ours, theirs) = (
        by_index(&ours_idx, &ours_acts),
        by_index(&ref_idx, &ref_acts),
    );
    for (token, (o, t)) in ours.iter().zip(&theirs).enumerate() {
        let oi: Vec<i64> = o.iter().map(|p| p.0).collect();
        let ti: Vec<i64> = t.iter().map(|p| p.0).collect();
        assert_eq!(oi, ti, "latent index sets differ at token {token}");
    }
    let flat = |rows: &[Vec<(i64, f32)>]| rows.iter().flatten().map(|p| p.1).collect::<Vec<f32>>();
    assert!(max_rel_diff(&flat(&ours), &flat(&theirs)) < 1e-5);

    let sae_out = reference("sparsify_topk/reference.safetensors", "sae_out").to_f32();
    assert!(max_rel_diff(&values(out.reconstruction), &sae_out) < 1e-5);
    let fvu = reference("sparsify_topk/reference.safetensors", "fvu").to_f32();
    assert!(max_rel_diff(&values(out.fvu), &fvu) < 1e-5);
}

/// Hook points named as transformers names them, passing activations through unchanged.
#[derive(Debug, Clone)]
struct Passthrough;

const POINTS: [&str; 3] = ["model.layers.0.mlp", "model.layers.1.mlp", "model.layers.1"];

impl HookedModule<B> for Passthrough {
    type Input = Tensor<B, 3>;
    type Output = Tensor<B, 3>;

    fn hook_points(&self) -> Vec<HookPoint> {
        POINTS
            .map(|p| HookPoint::new(p, 64, HookKind::Residual))
            .to_vec()
    }

    fn forward_hooked(&self, x: Tensor<B, 3>, hooks: &mut dyn Hooks<B>) -> Tensor<B, 3> {
        POINTS.iter().fold(x, |x, p| hooks.call(p, x))
    }
}

#[test]
fn a_sparsify_checkpoint_named_from_the_base_model_attaches_to_the_full_path() {
    // sparsify saves the SAE of `model.layers.1` as `layers.1/` (relative to the base model).
    let device = Default::default();
    let model =
        SaeModel::<B, _>::from_pretrained(Passthrough, &fixture("sparsify_topk"), &device).unwrap();
    let saes = &model.adapters()[sae_core::DEFAULT_ADAPTER].saes;
    assert_eq!(saes.keys().collect::<Vec<_>>(), ["model.layers.1"]);

    // Eval mode: the SAE's reconstruction replaces the module's output.
    let x: Tensor<B, 2> = reference("sparsify_topk/reference.safetensors", "x").to_float(&device);
    let [n, d] = x.dims();
    let out = model.forward(x.reshape([1, n, d])).unwrap().output;
    let sae_out = reference("sparsify_topk/reference.safetensors", "sae_out").to_f32();
    assert!(max_rel_diff(&values(out), &sae_out) < 1e-5);
}

#[test]
fn a_saved_path_must_name_one_hook_point() {
    let renamed = |name: &str| {
        let dir = tempfile::tempdir().unwrap();
        let mut checkpoint = formats::load(&fixture("sparsify_topk")).unwrap();
        let sae = checkpoint.saes.remove("layers.1").unwrap();
        checkpoint.saes.insert(name.into(), sae);
        formats::save(&checkpoint, Layout::Sparsify, dir.path(), StorageDtype::F32).unwrap();
        match SaeModel::<B, _>::from_pretrained(Passthrough, dir.path(), &Default::default()) {
            Ok(_) => panic!("an SAE saved as {name:?} was attached"),
            Err(error) => error.to_string(),
        }
    };
    let ambiguous = renamed("mlp");
    assert!(
        ambiguous.contains("could attach to any of model.layers.0.mlp, model.layers.1.mlp"),
        "{ambiguous}"
    );
    let unknown = renamed("layers.7");
    assert!(unknown.contains("matched no hook point"), "{unknown}");
}
