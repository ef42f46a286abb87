//! Steering through an SAE, checked against values derived by hand on a three-latent SAE at
//! the first of two hook points of a model that returns what its hooks give.

use std::collections::BTreeMap;

use burn::backend::Flex as B;
use burn::tensor::Tensor;
use sae_core::{
    Adapter, AdapterConfig, HookKind, HookPoint, HookedModule, Hooks, Sae, SaeConfig, SaeModel,
    TargetModules,
};
use sae_interp::{InterpError, LatentValue, Steering, SteeringHooks, steered_sae};

/// Passes its input through two hook points.
struct TwoHooks;

impl HookedModule<B> for TwoHooks {
    type Input = Tensor<B, 3>;
    type Output = Tensor<B, 3>;

    fn hook_points(&self) -> Vec<HookPoint> {
        ["model.layers.0", "model.layers.1"]
            .map(|p| HookPoint::new(p, 2, HookKind::Residual))
            .to_vec()
    }

    fn forward_hooked(&self, x: Tensor<B, 3>, hooks: &mut dyn Hooks<B>) -> Tensor<B, 3> {
        let x = hooks.call("model.layers.0", x);
        hooks.call("model.layers.1", x)
    }
}

/// TopK k=1, `W_enc = W_dec = [[1, 0], [0, 1], [1, 1]]`, no biases: `x = [2, 1]` has
/// pre-activations `[2, 1, 3]` and reconstruction `3 * [1, 1] = [3, 3]`.
fn sae() -> Sae<B> {
    let device = Default::default();
    let w = || Tensor::<B, 2>::from_data([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]], &device);
    let b_dec = Tensor::zeros([2], &device);
    Sae::from_tensors(SaeConfig::topk(1, 3), w(), None, w(), b_dec, None).unwrap()
}

fn model(paths: &[&str]) -> SaeModel<B, TwoHooks> {
    let mut model = SaeModel::wrap(TwoHooks);
    let saes: BTreeMap<String, Sae<B>> = paths.iter().map(|p| (p.to_string(), sae())).collect();
    let config = AdapterConfig {
        sae: SaeConfig::topk(1, 3),
        target_modules: TargetModules::Names(saes.keys().cloned().collect()),
    };
    model
        .insert_adapter("default", Adapter { config, saes })
        .unwrap();
    model
}

fn lv(s: &str) -> LatentValue {
    s.parse().unwrap()
}

/// The model's output for `x = [2, 1]` over `passes` forward passes, steered at layer 0.
fn run(steering: Steering, passes: usize) -> Vec<Vec<f32>> {
    let model = model(&["model.layers.0"]);
    let (path, sae) = steered_sae(&model, None).unwrap();
    let mut hooks = SteeringHooks::new(path, sae, steering).unwrap();
    let outputs = (0..passes)
        .map(|_| {
            let x = Tensor::<B, 3>::from_data([[[2.0, 1.0]]], &Default::default());
            let y = model.model().forward_hooked(x, &mut hooks);
            y.into_data().convert::<f32>().into_vec().unwrap()
        })
        .collect();
    hooks.finish().unwrap();
    outputs
}

fn clamp(pairs: &[&str]) -> Steering {
    Steering {
        clamps: pairs.iter().map(|p| lv(p)).collect(),
        ..Steering::default()
    }
}

fn add(pairs: &[&str]) -> Steering {
    Steering {
        adds: pairs.iter().map(|p| lv(p)).collect(),
        ..Steering::default()
    }
}

#[test]
fn no_steering_gives_the_reconstruction() {
    assert_eq!(run(Steering::default(), 1), [[3.0, 3.0]]);
}

#[test]
fn a_clamped_latent_replaces_the_top_one() {
    // Latent 0 at 5 displaces latent 2: 5 * [1, 0].
    assert_eq!(run(clamp(&["0=5"]), 1), [[5.0, 0.0]]);
    // Keeping the error: x + (x_steer - x_hat) = [2, 1] + ([5, 0] - [3, 3]).
    let steering = Steering {
        keep_error: true,
        ..clamp(&["0=5"])
    };
    assert_eq!(run(steering, 1), [[4.0, -2.0]]);
}

#[test]
fn added_directions_are_scaled_decoder_rows() {
    // [3, 3] + 2 * W_dec[1] - 0.5 * W_dec[2] = [3, 3] + [0, 2] - [0.5, 0.5].
    assert_eq!(run(add(&["1=2", "2=-0.5"]), 1), [[2.5, 4.5]]);
    let steering = Steering {
        keep_error: true,
        ..add(&["1=2"])
    };
    assert_eq!(run(steering, 1), [[2.0, 3.0]]);
}

#[test]
fn a_steering_that_changes_nothing_keeps_the_input_exactly() {
    let steering = Steering {
        keep_error: true,
        ..add(&["1=0"])
    };
    assert_eq!(run(steering, 1), [[2.0, 1.0]]);
}

#[test]
fn prompt_only_steers_the_first_pass() {
    let steering = Steering {
        prompt_only: true,
        ..clamp(&["0=5"])
    };
    assert_eq!(run(steering.clone(), 2), [[5.0, 0.0], [3.0, 3.0]]);
    let steering = Steering {
        keep_error: true,
        ..steering
    };
    assert_eq!(run(steering, 2), [[4.0, -2.0], [2.0, 1.0]]);
}

#[test]
fn the_steered_sae_is_named_when_there_are_several() {
    let model = model(&["model.layers.0", "model.layers.1"]);
    let err = steered_sae(&model, None).unwrap_err().to_string();
    assert!(err.contains("model.layers.0, model.layers.1"), "{err}");
    assert_eq!(
        steered_sae(&model, Some("layers.1")).unwrap().0,
        "model.layers.1"
    );
    let err = steered_sae(&model, Some("layers.2"))
        .unwrap_err()
        .to_string();
    assert!(err.contains("no SAE at \"layers.2\""), "{err}");
}

#[test]
fn bad_pairs_and_latents_are_refused() {
    for bad in ["3", "x=1", "1=inf", "-1=2", "1=two"] {
        let err = bad.parse::<LatentValue>().unwrap_err();
        assert!(matches!(err, InterpError::BadLatentValue(_)), "{bad}");
    }
    let model = model(&["model.layers.0"]);
    let (path, sae) = steered_sae(&model, None).unwrap();
    // A coefficient that overflows f32 in the output is an error once the pass is over.
    let mut hooks = SteeringHooks::new(path, sae, add(&["1=3e38", "2=3e38"])).unwrap();
    let x = Tensor::<B, 3>::from_data([[[2.0, 1.0]]], &Default::default());
    model.model().forward_hooked(x, &mut hooks);
    let err = hooks.finish().err().unwrap().to_string();
    assert_eq!(err, "the steered output contains NaN or infinite values");
    let err = SteeringHooks::new(path, sae, clamp(&["3=1"]))
        .err()
        .unwrap();
    assert_eq!(
        err.to_string(),
        "latent 3 does not exist: the SAE has 3 latents"
    );
}
