//! Parity with EleutherAI sparsify's `SparseCoder` on the `sparsify_topk` fixture.

mod common;

use burn::tensor::Tensor;
use common::{B, fixture, max_rel_diff, reference, values};
use sae_core::formats;

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
