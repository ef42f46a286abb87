//! `Sae::encode_with_overrides`: pre-activations replaced before selection, checked against
//! values derived by hand on a three-latent SAE.

mod common;

use burn::tensor::{Int, Tensor};
use common::{B, values};
use sae_core::{Architecture, Sae, SaeConfig, SaeError, SparseLatents};

/// `W_enc = W_dec = [[1, 0], [0, 1], [1, 1]]`, no biases: the pre-activations of `x = [2, 1]`
/// are `[2, 1, 3]`.
fn sae(config: SaeConfig) -> Sae<B> {
    let device = Default::default();
    let w = || Tensor::<B, 2>::from_data([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]], &device);
    let threshold = (config.architecture == Architecture::JumpRelu)
        .then(|| Tensor::from_data([2.5, 0.5, 2.5], &device));
    let b_enc = config.encoder_bias.then(|| Tensor::zeros([3], &device));
    Sae::from_tensors(
        config,
        w(),
        b_enc,
        w(),
        Tensor::zeros([2], &device),
        threshold,
    )
    .unwrap()
}

fn x() -> Tensor<B, 2> {
    Tensor::from_data([[2.0, 1.0]], &Default::default())
}

fn indices(t: Tensor<B, 2, Int>) -> Vec<i64> {
    t.into_data().convert::<i64>().into_vec().unwrap()
}

fn encoded(sae: &Sae<B>, overrides: &[(usize, f32)]) -> (Vec<i64>, Vec<f32>) {
    let SparseLatents {
        values: v,
        indices: i,
    } = sae.encode_with_overrides(x(), overrides).unwrap();
    (indices(i), values(v))
}

#[test]
fn a_clamped_latent_displaces_the_top_one() {
    let sae = sae(SaeConfig::topk(1, 3));
    assert_eq!(encoded(&sae, &[]), (vec![2], vec![3.0]));
    assert_eq!(encoded(&sae, &[(0, 5.0)]), (vec![0], vec![5.0]));
    // Pushing the top latent down lets the next one in, with its own value.
    assert_eq!(encoded(&sae, &[(2, -1.0)]), (vec![0], vec![2.0]));
    // The decode uses the clamped value: 5 * W_dec[0].
    let latents = sae.encode_with_overrides(x(), &[(0, 5.0)]).unwrap();
    assert_eq!(values(sae.decode(&latents)), vec![5.0, 0.0]);
}

#[test]
fn without_overrides_it_encodes_as_encode() {
    let sae = sae(SaeConfig::topk(2, 3));
    let plain = sae.encode(x()).unwrap();
    assert_eq!(
        encoded(&sae, &[]),
        (indices(plain.indices), values(plain.values))
    );
}

#[test]
fn thresholds_apply_to_clamped_values() {
    // Thresholds [2.5, 0.5, 2.5]: latents 1 (1 > 0.5) and 2 (3 > 2.5) fire.
    let sae = sae(SaeConfig::jumprelu(3));
    assert_eq!(encoded(&sae, &[]), (vec![2, 1], vec![3.0, 1.0]));
    // Clamping latent 2 to 2.0, under its threshold, silences it; latent 0 at 4.0 fires.
    assert_eq!(
        encoded(&sae, &[(2, 2.0), (0, 4.0)]),
        (vec![0, 1], vec![4.0, 1.0])
    );
}

#[test]
fn a_latent_beyond_the_dictionary_or_a_non_finite_value_is_refused() {
    let sae = sae(SaeConfig::topk(1, 3));
    let err = sae.encode_with_overrides(x(), &[(3, 1.0)]).unwrap_err();
    assert!(matches!(
        err,
        SaeError::NoSuchLatent {
            latent: 3,
            num_latents: 3
        }
    ));
    assert!(sae.encode_with_overrides(x(), &[(0, f32::NAN)]).is_err());
}
