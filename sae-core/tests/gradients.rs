//! Gradient checks: the sparse paths (host selection, gathered encoder rows, gathered decoder
//! rows) and the hand-derived gradients (host loops, and the same math as tensor operations)
//! against a dense reference built from Burn's own differentiable top-k and scatter.

mod common;

use burn::module::AutodiffModule;
use burn::tensor::activation::relu;
use burn::tensor::{Distribution, IndexingUpdateOp, Int, Tensor, TensorData};
use common::{AB, max_rel_diff, values};
use sae_core::sae::share::total_variance;
use sae_core::{Architecture, BatchShare, Sae, SaeConfig};

const N: usize = 16;
const D: usize = 12;
const L: usize = 48;

fn random_sae(config: SaeConfig) -> Sae<AB> {
    let device = Default::default();
    let r =
        |shape: Vec<usize>| Tensor::<AB, 2>::random(shape, Distribution::Normal(0.0, 0.5), &device);
    let v = |n: usize| Tensor::<AB, 1>::random([n], Distribution::Normal(0.0, 0.2), &device);
    let b_enc = config.encoder_bias.then(|| v(L));
    let threshold = (config.architecture == Architecture::JumpRelu).then(|| v(L).abs());
    Sae::from_tensors(config, r(vec![L, D]), b_enc, r(vec![L, D]), v(D), threshold).unwrap()
}

/// Scatters `vals` at `idx` (along dim 1) into zeros shaped like `like`.
fn scatter(like: &Tensor<AB, 2>, idx: Tensor<AB, 2, Int>, vals: Tensor<AB, 2>) -> Tensor<AB, 2> {
    like.zeros_like()
        .scatter(1, idx, vals, IndexingUpdateOp::Add)
}

/// The dense reference: every latent computed, selection by `topk_with_indices`.
fn dense_loss(sae: &Sae<AB>, x: Tensor<AB, 2>, dead: Option<&[bool]>) -> Tensor<AB, 1> {
    let c = &sae.config;
    let x_c = x.clone() - sae.b_dec.val().unsqueeze_dim(0);
    let mut pre = x_c.matmul(sae.w_enc.val().transpose());
    if let Some(b) = &sae.b_enc {
        pre = pre + b.val().unsqueeze_dim(0);
    }
    if c.relu {
        pre = relu(pre);
    }
    let decode =
        |acts: Tensor<AB, 2>| acts.matmul(sae.w_dec.val()) + sae.b_dec.val().unsqueeze_dim(0);
    let top = |k: usize, pre: Tensor<AB, 2>| {
        let (v, i) = pre.clone().topk_with_indices(k, 1);
        scatter(&pre, i, v)
    };
    let acts = match c.architecture {
        Architecture::TopK => top(c.k, pre.clone()),
        Architecture::BatchTopK => {
            let flat = pre.clone().reshape([1, N * L]);
            top(c.k * N, flat).reshape([N, L])
        }
        Architecture::JumpRelu => {
            let above = pre
                .clone()
                .greater(sae.threshold.as_ref().unwrap().val().unsqueeze_dim(0));
            pre.clone() * above.float()
        }
        Architecture::Relu => unreachable!("the ReLU SAE is dense already"),
    };
    let residual = x.clone() - decode(acts);
    let tv = (x.clone() - x.clone().mean_dim(0)).powi_scalar(2).sum();
    let mut loss = residual.clone().powi_scalar(2).sum() / tv.clone();
    if let Some(dead) = dead {
        let num_dead = dead.iter().filter(|&&m| m).count();
        let k_aux = c.aux_k.unwrap();
        let scale = (num_dead as f32 / k_aux as f32).min(1.0);
        let alive: Vec<bool> = (0..N * L).map(|i| !dead[i % L]).collect();
        let alive = Tensor::<AB, 2, burn::tensor::Bool>::from_data(
            TensorData::new(alive, [N, L]),
            &Default::default(),
        );
        let masked = pre.clone().mask_fill(alive.clone(), f32::NEG_INFINITY);
        let (v, i) = masked.topk_with_indices(k_aux.min(num_dead), 1);
        // sparsify 1.3.3: no b_dec in the dead latents' prediction, and no gradient to the
        // encoder through the pre-activations AuxK selects from.
        let e_hat = scatter(&pre, i, v.detach()).matmul(sae.w_dec.val());
        let auxk = (e_hat - residual.detach()).powi_scalar(2).sum() / tv.clone();
        loss = loss + auxk.mul_scalar(scale * c.aux_k_alpha);
    }
    if c.architecture == Architecture::JumpRelu {
        // The L0 penalty: its value only (its straight-through gradient reaches the thresholds
        // alone; tests/parity_jumprelu.rs checks that against SAELens).
        let threshold = sae.threshold.as_ref().unwrap().val().unsqueeze_dim(0);
        let l0 = pre
            .clone()
            .greater(threshold)
            .float()
            .sum()
            .div_scalar(N as f32);
        loss = loss + l0.detach().mul_scalar(c.l0_coefficient);
    }
    if c.multi_topk {
        let recon = decode(top(4 * c.k, pre));
        loss = loss + ((recon - x).powi_scalar(2).sum() / tv).div_scalar(8.0);
    }
    loss
}

/// Loss and the gradients of every parameter (encoder, encoder bias, decoder, decoder bias).
fn loss_and_grads(sae: &Sae<AB>, loss: Tensor<AB, 1>) -> (Vec<f32>, Vec<Vec<f32>>) {
    let grads = loss.backward();
    let mut g = vec![
        values(sae.w_enc.val().grad(&grads).unwrap()),
        values(sae.w_dec.val().grad(&grads).unwrap()),
        values(sae.b_dec.val().grad(&grads).unwrap()),
    ];
    if let Some(b) = &sae.b_enc {
        g.push(values(b.val().grad(&grads).unwrap()));
    }
    (values(loss), g)
}

fn check(config: SaeConfig, dead: Option<&[bool]>) {
    let sae = random_sae(config);
    let x = Tensor::<AB, 2>::random([N, D], Distribution::Normal(0.0, 1.0), &Default::default());
    let sparse = sae.forward(x.clone(), dead).unwrap().loss(&sae.config);
    let (sparse_loss, sparse_grads) = loss_and_grads(&sae, sparse);
    let (dense_loss, dense_grads) = loss_and_grads(&sae, dense_loss(&sae, x.clone(), dead));
    if sae.has_host_gradients() {
        // The hand-derived host gradients against autodiff of the same loss, with the
        // selection matmul on the backend (autodiff) and by gemm on the host (plain flex).
        let on_backend = sae.loss_and_grads(x.clone(), dead, 1.0).unwrap();
        let by_gemm = sae
            .valid()
            .loss_and_grads(x.clone().inner(), dead, 1.0)
            .unwrap();
        // The same math as tensor operations (the GPU backends' path), run here on flex.
        let valid = sae.valid();
        let mut on_device = valid.device_params().zeros_like();
        let step = valid
            .add_device_loss_grads(x.inner(), dead, 1.0, None, &mut on_device)
            .unwrap();
        let by_tensors = (step, on_device.to_host());
        for (host, g) in [on_backend, by_gemm, by_tensors] {
            assert!(max_rel_diff(&[host.loss], &dense_loss) < 1e-5);
            let mut host_grads = vec![g.w_enc, g.w_dec, g.b_dec];
            host_grads.extend(g.b_enc);
            for (i, (h, d)) in host_grads.iter().zip(&dense_grads).enumerate() {
                let err = max_rel_diff(h, d);
                assert!(err < 1e-5, "host gradient {i} differs by {err}");
            }
        }
    }
    assert!(
        max_rel_diff(&sparse_loss, &dense_loss) < 1e-5,
        "{sparse_loss:?} vs {dense_loss:?}"
    );
    for (i, (s, d)) in sparse_grads.iter().zip(&dense_grads).enumerate() {
        let err = max_rel_diff(s, d);
        assert!(err < 1e-5, "gradient {i} differs by {err}");
        assert!(
            d.iter().any(|v| *v != 0.0),
            "gradient {i} is all zero: the check would be vacuous"
        );
    }
}

fn dead_mask() -> Vec<bool> {
    (0..L).map(|i| i % 3 == 0).collect()
}

#[test]
fn sae_made_easy_topk_with_auxk_and_multi_topk() {
    let config = SaeConfig {
        multi_topk: true,
        aux_k: Some(6),
        ..SaeConfig::topk(4, L)
    };
    check(config, Some(&dead_mask()));
}

#[test]
fn sparsify_topk_with_auxk_and_multi_topk() {
    let config = SaeConfig {
        multi_topk: true,
        aux_k: Some(6),
        ..SaeConfig::sparsify_topk(4, L)
    };
    check(config, Some(&dead_mask()));
}

#[test]
fn auxk_with_fewer_dead_latents_than_aux_k_is_scaled() {
    let dead: Vec<bool> = (0..L).map(|i| i < 3).collect();
    check(
        SaeConfig {
            aux_k: Some(6),
            ..SaeConfig::sparsify_topk(4, L)
        },
        Some(&dead),
    );
}

#[test]
fn batch_topk() {
    check(SaeConfig::batch_topk(4, L), None);
}

#[test]
fn jumprelu() {
    check(SaeConfig::jumprelu(L), None);
}

/// A batch split unevenly between two ranks, each part's losses normalised by the whole
/// batch's statistics ([`BatchShare`]): the parts' losses and gradients add up to the whole
/// batch's, by every path (autodiff, the host loops, the tensor operations). Data-parallel
/// training relies on it.
fn check_split(config: SaeConfig, dead: Option<&[bool]>) {
    let sae = random_sae(config);
    let x = Tensor::<AB, 2>::random([N, D], Distribution::Normal(0.0, 1.0), &Default::default());
    let share = BatchShare {
        total_variance: total_variance(&values(x.clone()), N, D),
        tokens: N,
    };
    let parts = [x.clone().slice(0..5), x.clone().slice(5..N)];
    let close = |what: &str,
                 (loss, grads): (Vec<f32>, Vec<Vec<f32>>),
                 whole: &(Vec<f32>, Vec<Vec<f32>>)| {
        let err = max_rel_diff(&loss, &whole.0);
        assert!(
            err < 1e-5,
            "{what}: the parts' losses differ from the whole's by {err}"
        );
        for (i, (g, w)) in grads.iter().zip(&whole.1).enumerate() {
            let err = max_rel_diff(g, w);
            assert!(err < 1e-5, "{what}: gradient {i} differs by {err}");
        }
    };
    let whole = loss_and_grads(&sae, sae.forward(x, dead).unwrap().loss(&sae.config));
    let split = (parts.iter())
        .map(|p| sae.forward_share(p.clone(), dead, Some(&share)).unwrap())
        .map(|out| out.loss(&sae.config))
        .reduce(|a, b| a + b)
        .unwrap();
    close("autodiff", loss_and_grads(&sae, split), &whole);
    if !sae.has_host_gradients() {
        return;
    }
    let valid = sae.valid();
    let params = valid.host_params();
    let as_list = |g: sae_core::HostParams| {
        let mut list = vec![g.w_enc, g.w_dec, g.b_dec];
        list.extend(g.b_enc);
        list
    };
    let mut grads = params.zeros_like();
    let mut loss = 0.0;
    for part in &parts {
        let step = (valid.add_loss_grads(
            &params,
            part.clone().inner(),
            dead,
            1.0,
            Some(&share),
            &mut grads,
        ))
        .unwrap();
        loss += step.loss;
    }
    close("host", (vec![loss], as_list(grads)), &whole);
    let mut on_device = valid.device_params().zeros_like();
    let mut loss = 0.0;
    for part in &parts {
        let step = (valid.add_device_loss_grads(
            part.clone().inner(),
            dead,
            1.0,
            Some(&share),
            &mut on_device,
        ))
        .unwrap();
        loss += step.loss;
    }
    close(
        "tensors",
        (vec![loss], as_list(on_device.to_host())),
        &whole,
    );
}

#[test]
fn a_batch_split_over_ranks_adds_up_to_the_whole_batch() {
    let topk = SaeConfig {
        multi_topk: true,
        aux_k: Some(6),
        ..SaeConfig::topk(4, L)
    };
    check_split(topk, Some(&dead_mask()));
    check_split(SaeConfig::sparsify_topk(4, L), None);
    check_split(SaeConfig::jumprelu(L), None);
    check_split(SaeConfig::relu_l1(L, 0.5), None);
}
