//! JumpReLU training against SAELens' straight-through estimator: the loss (FVU plus the L0
//! penalty) and every parameter's gradient, thresholds included, on the fixture written by
//! tools/make_jumprelu_fixture.py with SAELens' own `JumpReLU` and `Step` autograd functions.

mod common;

use burn::tensor::Tensor;
use common::{AB, max_rel_diff, reference, values};
use sae_core::{Sae, SaeConfig};

const FILE: &str = "jumprelu/reference.safetensors";

#[test]
fn loss_and_gradients_match_saelens_straight_through_estimator() {
    let device = Default::default();
    let two = |name: &str| reference(FILE, name).to_float::<AB, 2>(&device);
    let one = |name: &str| reference(FILE, name).to_float::<AB, 1>(&device);
    let settings = reference(FILE, "settings").to_f32();
    let config = SaeConfig {
        jumprelu_bandwidth: settings[0],
        l0_coefficient: settings[1],
        ..SaeConfig::jumprelu(16)
    };
    let sae = Sae::from_tensors(
        config.clone(),
        two("w_enc").require_grad(),
        Some(one("b_enc").require_grad()),
        two("w_dec").require_grad(),
        one("b_dec").require_grad(),
        Some(one("threshold").require_grad()),
    )
    .unwrap();
    let x: Tensor<AB, 2> = two("x");
    let out = sae.forward(x, None).unwrap();
    for (name, got) in [("fvu", &out.fvu), ("l0", out.l0_loss.as_ref().unwrap())] {
        let err = max_rel_diff(&values(got.clone()), &reference(FILE, name).to_f32());
        assert!(err < 1e-5, "{name}: {err}");
    }
    let loss = out.loss(&config);
    assert!(max_rel_diff(&values(loss.clone()), &reference(FILE, "loss").to_f32()) < 1e-5);

    let grads = loss.backward();
    let grad_of = |name: &str, got: Vec<f32>| {
        let err = max_rel_diff(&got, &reference(FILE, &format!("{name}.grad")).to_f32());
        assert!(err < 1e-5, "{name}: {err}");
    };
    grad_of("w_enc", values(sae.w_enc.val().grad(&grads).unwrap()));
    grad_of("w_dec", values(sae.w_dec.val().grad(&grads).unwrap()));
    grad_of("b_dec", values(sae.b_dec.val().grad(&grads).unwrap()));
    let b_enc = sae.b_enc.as_ref().unwrap().val();
    grad_of("b_enc", values(b_enc.grad(&grads).unwrap()));
    let threshold = sae.threshold.as_ref().unwrap().val();
    grad_of("threshold", values(threshold.grad(&grads).unwrap()));
}
