//! The trainer's options against hand-derived expectations: gradient accumulation, gradient
//! clipping (seen through Adam's first moment), activation scaling folded into the saved SAE,
//! non-finite activations, and the state kept on the device following the host path.

use burn::backend::{Autodiff, Flex};

use burn::tensor::{Distribution, Tensor, TensorData};
use sae_core::parity::{max_abs_diff, max_rel_diff};
use sae_core::{HookKind, HookPoint, SaeAutodiffBackend, SaeConfig};
use sae_train::config::{BiasInit, OptimConfig};
use sae_train::{HookTrainer, TrainError, Trainer};

type AB = Autodiff<Flex>;
const D: usize = 12;

fn trainer(sae: SaeConfig, optim: OptimConfig) -> Trainer<AB> {
    let point = HookPoint::new("h", D, HookKind::Residual);
    Trainer::new(&[point], &sae, &optim, &Default::default()).unwrap()
}

fn acts(seed: u64, n: usize, scale: f32) -> Tensor<Flex, 2> {
    let device = Default::default();
    <Flex as burn::tensor::backend::Backend>::seed(&device, seed);
    Tensor::<Flex, 2>::random([n, D], Distribution::Normal(0.0, 1.0), &device).mul_scalar(scale)
}

fn host_values(t: Tensor<Flex, 2>) -> Vec<f32> {
    t.into_data().to_vec::<f32>().unwrap()
}

fn weights<A: SaeAutodiffBackend>(t: &Trainer<A>) -> Vec<f32> {
    let params = t.hooks[0].params();
    params.iter().flat_map(|(_, v)| v.to_vec()).collect()
}

// The same micro-batch accumulated twice with grad_acc_steps = 2 gives the gradient
// (g + g) / 2 = g: the same step as that batch alone.
#[test]
fn accumulating_one_batch_twice_equals_one_step() {
    let sae = SaeConfig::sparsify_topk(3, 48);
    let once = OptimConfig {
        lr: Some(1e-2),
        ..OptimConfig::default()
    };
    let twice = OptimConfig {
        grad_acc_steps: 2,
        ..once.clone()
    };
    let mut a = trainer(sae, once);
    // The same initial SAE (Burn's random seed is global, and tests run in parallel).
    let copy = HookTrainer::new("h".into(), a.hooks[0].sae().clone());
    let mut b = Trainer::from_parts(vec![copy], 0, false, &twice);
    assert_eq!(weights(&a), weights(&b));
    let x = acts(1, 40, 1.0);
    a.accumulate(vec![x.clone()]).unwrap();
    let ma = a.finish_step().unwrap();
    b.accumulate(vec![x.clone()]).unwrap();
    b.accumulate(vec![x]).unwrap();
    let mb = b.finish_step().unwrap();
    assert!((ma[0].loss - mb[0].loss).abs() < 1e-7);
    assert!((ma[0].grad_norm - mb[0].grad_norm).abs() < 1e-6 * ma[0].grad_norm);
    assert!(max_abs_diff(&weights(&a), &weights(&b)) < 1e-6);
}

// After one step Adam's first moment is (1 - beta1) times the (clipped) gradient, so its global
// norm is 0.1 x the clip norm when the gradient was larger.
#[test]
fn clipping_bounds_the_gradient_adam_sees() {
    let clip = 1e-3;
    let optim = OptimConfig {
        grad_clip: Some(clip),
        ..OptimConfig::default()
    };
    let mut t = trainer(SaeConfig::sparsify_topk(3, 48), optim);
    t.accumulate(vec![acts(2, 40, 1.0)]).unwrap();
    let m = t.finish_step().unwrap();
    assert!(
        m[0].grad_norm > 100.0 * clip,
        "the test needs a large gradient"
    );
    let moments = t.hooks[0].moments().unwrap();
    let norm_sq: f32 = moments
        .exp_avg
        .iter()
        .map(|(_, m)| m.iter().map(|v| v * v).sum::<f32>())
        .sum();
    let expected = 0.1 * clip / (1.0 + 1e-6 / m[0].grad_norm);
    assert!((f64::from(norm_sq.sqrt()) - expected).abs() < 1e-6 * expected);
}

// With normalize_activations the SAE trains on s x; the exported SAE takes raw x and must give
// exactly the scaled SAE's reconstruction divided by s (W_enc s, W_dec / s, b_dec / s).
#[test]
fn the_activation_scale_is_folded_into_the_saved_sae() {
    let optim = OptimConfig {
        normalize_activations: true,
        b_dec_init: BiasInit::GeometricMedian,
        ..OptimConfig::default()
    };
    let mut t = trainer(SaeConfig::sparsify_topk(3, 48), optim);
    let x = acts(3, 40, 50.0);
    for _ in 0..3 {
        t.accumulate(vec![x.clone()]).unwrap();
        t.finish_step().unwrap();
    }
    let hook = &mut t.hooks[0];
    // Mean norm of x is about 50 sqrt(12); the scale brings it to sqrt(12).
    assert!((hook.scale - 0.02).abs() < 0.002, "scale {}", hook.scale);
    let exported = hook.export().unwrap();
    let raw = exported.forward(x.clone(), None).unwrap();
    let scaled_x = Tensor::<AB, 2>::from_inner(x.clone().mul_scalar(hook.scale));
    let scaled = hook.sae().forward(scaled_x, None).unwrap();
    let expected = host_values(scaled.reconstruction.inner().div_scalar(hook.scale));
    let got = host_values(raw.reconstruction);
    assert!(max_rel_diff(&got, &expected) < 1e-5);
    let fvu = |t: Tensor<Flex, 1>| t.into_data().to_vec::<f32>().unwrap()[0];
    assert!((fvu(raw.fvu) - fvu(scaled.fvu.inner())).abs() < 1e-5);
}

#[test]
fn non_finite_activations_are_an_error_naming_the_hook() {
    let mut t = trainer(SaeConfig::sparsify_topk(3, 48), OptimConfig::default());
    t.accumulate(vec![acts(4, 8, 1.0)]).unwrap();
    t.finish_step().unwrap();
    let mut bad = vec![1.0f32; 8 * D];
    bad[5] = f32::NAN;
    let x = Tensor::<Flex, 2>::from_data(TensorData::new(bad, [8, D]), &Default::default());
    match t.accumulate(vec![x]) {
        Err(TrainError::NonFinite { step, what }) => {
            assert_eq!(step, 2);
            assert_eq!(what, "the activations at h");
        }
        other => panic!("expected a non-finite error, got {other:?}"),
    }
}

/// The SAE and optimiser settings of the device-against-host comparisons: AuxK (dead latents
/// after 50 tokens), Multi-TopK, weight decay, clipping, the decoder constraint.
fn device_check_configs() -> (SaeConfig, OptimConfig) {
    let sae = SaeConfig {
        multi_topk: true,
        dead_tokens_threshold: 50,
        ..SaeConfig::sparsify_topk(3, 48)
    };
    let optim = OptimConfig {
        lr: Some(1e-2),
        weight_decay: 0.01,
        grad_clip: Some(1.0),
        b_dec_init: BiasInit::GeometricMedian,
        ..OptimConfig::default()
    };
    (sae, optim)
}

/// Five steps of `host` (state on the host) and `device` (state on the device, same initial
/// SAE) on the same activations: metrics, parameters and moments agree to f32 rounding.
fn device_follows_host<A: SaeAutodiffBackend, G: SaeAutodiffBackend>(
    host: &mut Trainer<A>,
    device: &mut Trainer<G>,
) {
    assert!(device.hooks[0].is_on_device() && !host.hooks[0].is_on_device());
    let mut auxk_seen = false;
    for step in 0..5 {
        let x = host_values(acts(10 + step, 40, 1.0));
        let data = || TensorData::new(x.clone(), [40, D]);
        let device_x = Tensor::from_data(data(), &Default::default());
        host.accumulate(vec![Tensor::from_data(data(), &Default::default())])
            .unwrap();
        device.accumulate(vec![device_x]).unwrap();
        let (h, d) = (host.finish_step().unwrap(), device.finish_step().unwrap());
        auxk_seen |= h[0].auxk > 0.0;
        for (what, a, b) in [
            ("loss", h[0].loss, d[0].loss),
            ("auxk", h[0].auxk, d[0].auxk),
            ("grad norm", h[0].grad_norm, d[0].grad_norm),
        ] {
            assert!(
                (a - b).abs() <= 1e-5 * a.abs(),
                "step {step} {what}: {a} vs {b}"
            );
        }
        assert_eq!(h[0].l0, d[0].l0);
        assert_eq!(h[0].dead_pct, d[0].dead_pct);
        let (wh, wd) = (weights(host), weights(device));
        let err = max_rel_diff(&wd, &wh);
        assert!(err < 1e-5, "step {step}: parameters differ by {err}");
    }
    assert!(auxk_seen, "the test needs dead latents for AuxK");
    let (mh, md) = (
        host.hooks[0].moments().unwrap(),
        device.hooks[0].moments().unwrap(),
    );
    let flat = |m: &sae_train::adamw::Moments| -> Vec<f32> {
        m.exp_avg_sq.iter().flat_map(|(_, v)| v.to_vec()).collect()
    };
    let (vh, vd) = (flat(&mh), flat(&md));
    assert!(max_rel_diff(&vd, &vh) < 1e-5);
}

// The GPU backends keep the state on the device and run the same math as tensor operations;
// forced on here, on flex.
#[test]
fn the_state_on_the_device_trains_as_on_the_host() {
    let (sae, optim) = device_check_configs();
    let mut host = trainer(sae, optim.clone());
    let copy = HookTrainer::new("h".into(), host.hooks[0].sae().clone());
    let copy = copy.on_device(true).unwrap();
    let mut device = Trainer::from_parts(vec![copy], 0, false, &optim);
    device_follows_host(&mut host, &mut device);
}

// On wgpu (in CI Mesa's software Vulkan device) the state is on the device by default: the
// CubeCL kernels (top-k, scatter, matmul, AdamW's element-wise ops) against flex's host path.
// `cargo test -p sae-train --features wgpu --test trainer`.
#[cfg(feature = "wgpu")]
#[test]
fn on_wgpu_the_state_stays_on_the_device_and_follows_the_host_path() {
    use burn::backend::Wgpu;
    use sae_core::Sae;
    let (sae, optim) = device_check_configs();
    let mut host = trainer(sae.clone(), optim.clone());
    let params = host.hooks[0].sae().host_params();
    let on_gpu = Sae::<Autodiff<Wgpu>>::from_host_params(sae, &params, &Default::default());
    let gpu = HookTrainer::new("h".into(), on_gpu.unwrap());
    let mut device = Trainer::from_parts(vec![gpu], 0, false, &optim);
    device_follows_host(&mut host, &mut device);
}

#[test]
fn jumprelu_thresholds_learn_and_the_l0_penalty_sparsifies() {
    let sae = SaeConfig {
        jumprelu_init_threshold: 0.3,
        jumprelu_bandwidth: 0.5,
        l0_coefficient: 0.05,
        ..SaeConfig::jumprelu(4 * D)
    };
    let optim = OptimConfig {
        lr: Some(1e-2),
        b_dec_init: BiasInit::Zeros,
        ..OptimConfig::default()
    };
    let mut t = trainer(sae, optim);
    let x = acts(3, 64, 1.0);
    let mut l0 = Vec::new();
    for _ in 0..40 {
        t.accumulate(vec![x.clone()]).unwrap();
        l0.push(t.finish_step().unwrap()[0].l0);
    }
    let thresholds = t.hooks[0].params().threshold.clone().unwrap();
    // The straight-through gradient reaches the thresholds: they move, and stay >= 0.
    assert!(
        thresholds.iter().any(|&v| (v - 0.3).abs() > 0.05),
        "{thresholds:?}"
    );
    assert!(thresholds.iter().all(|&v| v >= 0.0));
    // The L0 penalty outweighs reconstruction at this weight: fewer latents fire.
    assert!(l0[39] < 0.8 * l0[0], "L0 {} -> {}", l0[0], l0[39]);
}
