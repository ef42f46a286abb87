//! The CubeCL path against the CPU path: on wgpu (in CI a software Vulkan device, Mesa's
//! lavapipe) or cuda, TopK and BatchTopK select on the device (`sae_core::device_select`), the
//! CubeCL kernels of `sae_core::kernels` must equal their reference implementations, and
//! encoding, the training loss and its gradients (by autodiff, by the host-gradient path, and by
//! the same math as tensor operations, which the trainer runs on these backends) must equal
//! flex's. Run with `cargo test -p sae-core --features wgpu --test cubecl_backend` (or
//! `--features cuda`: `tools/gpu_bench.sh` runs it on a lent NVIDIA machine).
#![cfg(any(feature = "wgpu", feature = "cuda"))]

mod common;

use burn::backend::Autodiff;
use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorData};
use common::{AB, B as Cpu, max_rel_diff, values};
use sae_core::host::int_to_host;
use sae_core::kernels::{
    LatentGroups, SaeBackend, check_kernels, sparse_decode, sparse_dot, sparse_transpose_matmul,
    top_k_rows,
};
use sae_core::sae::device_select::top_k_on_device;
use sae_core::select::top_k_among;
use sae_core::{Sae, SaeConfig, SaeError};

/// The GPU backend under test: cuda where enabled, else wgpu.
#[cfg(feature = "cuda")]
type Gpu = burn::backend::Cuda;
#[cfg(not(feature = "cuda"))]
type Gpu = burn::backend::Wgpu;

const N: usize = 64;
const D: usize = 32;
const L: usize = 256;

/// Deterministic pseudo-normal values (sum of uniforms from an LCG), scaled by `scale`.
fn host_values(seed: u64, len: usize, scale: f32) -> Vec<f32> {
    let mut state = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
    let mut uniform = move || {
        state = state
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        (state >> 40) as f32 / (1u64 << 24) as f32
    };
    (0..len)
        .map(|_| (uniform() + uniform() + uniform() - 1.5) * scale)
        .collect()
}

fn tensor<Bk: Backend, const R: usize>(v: &[f32], shape: [usize; R]) -> Tensor<Bk, R> {
    Tensor::from_data(TensorData::new(v.to_vec(), shape), &Default::default())
}

/// The same SAE (random parameters, encoder bias) on backend `Bk`.
fn sae<Bk: SaeBackend>(config: &SaeConfig) -> Sae<Bk> {
    Sae::from_tensors(
        config.clone(),
        tensor(&host_values(1, L * D, 0.5), [L, D]),
        Some(tensor(&host_values(2, L, 0.2), [L])),
        tensor(&host_values(3, L * D, 0.5), [L, D]),
        tensor(&host_values(4, D, 0.2), [D]),
        None,
    )
    .unwrap()
}

fn input() -> Vec<f32> {
    host_values(5, N * D, 1.0)
}

#[test]
fn selection_runs_on_the_device_only_on_cubecl() {
    assert!(<Gpu as SaeBackend>::DEVICE_SELECT);
    assert!(<Autodiff<Gpu> as SaeBackend>::DEVICE_SELECT);
    assert!(!<Cpu as SaeBackend>::DEVICE_SELECT);
    assert!(!<AB as SaeBackend>::DEVICE_SELECT);
}

#[test]
fn encode_picks_the_cpu_latents() {
    let config = SaeConfig::sparsify_topk(8, L);
    let x = input();
    let cpu = sae::<Cpu>(&config).encode(tensor(&x, [N, D])).unwrap();
    let gpu_sae = sae::<Gpu>(&config);
    let gpu = gpu_sae.encode(tensor(&x, [N, D])).unwrap();
    let decoded = values(gpu_sae.decode(&gpu));
    assert_eq!(int_to_host(gpu.indices), int_to_host(cpu.indices.clone()));
    let (gv, cv) = (values(gpu.values), values(cpu.values.clone()));
    assert!(max_rel_diff(&gv, &cv) < 1e-5, "values: {gv:?} vs {cv:?}");
    let cpu_decoded = values(sae::<Cpu>(&config).decode(&cpu));
    assert!(max_rel_diff(&decoded, &cpu_decoded) < 1e-5);
}

#[test]
fn training_loss_and_gradients_match_the_cpu_path() {
    let config = SaeConfig {
        multi_topk: true,
        aux_k: Some(12),
        ..SaeConfig::sparsify_topk(8, L)
    };
    training_matches_the_cpu_path(&config, &input());
}

// BatchTopK selects from each token's 4k largest pre-activations read back; where one token
// takes all of them (its input scaled up), from the whole matrix.
#[test]
fn batch_top_k_training_matches_the_cpu_path() {
    let config = SaeConfig {
        aux_k: Some(12),
        ..SaeConfig::batch_topk(8, L)
    };
    let x = input();
    training_matches_the_cpu_path(&config, &x);
    let mut loud = x;
    loud[..D].iter_mut().for_each(|v| *v *= 40.0);
    training_matches_the_cpu_path(&config, &loud);
}

#[test]
fn batch_top_k_encode_picks_the_cpu_latents() {
    let config = SaeConfig::batch_topk(8, L);
    let x = input();
    let cpu = sae::<Cpu>(&config).encode(tensor(&x, [N, D])).unwrap();
    let gpu = sae::<Gpu>(&config).encode(tensor(&x, [N, D])).unwrap();
    assert_eq!(int_to_host(gpu.indices), int_to_host(cpu.indices));
    let (gv, cv) = (values(gpu.values), values(cpu.values));
    assert!(max_rel_diff(&gv, &cv) < 1e-5, "values: {gv:?} vs {cv:?}");
    assert!(cv.contains(&0.0), "no token has fewer latents than another");
}

/// The loss and gradients of `config` on `x` on the GPU (host gradients with the selection on
/// the device, device gradients, Burn's autodiff) against the CPU path, at 1e-5.
fn training_matches_the_cpu_path(config: &SaeConfig, x: &[f32]) {
    let dead: Vec<bool> = (0..L).map(|i| i % 3 == 0).collect();
    let (cpu_step, cpu_grads) = sae::<Cpu>(config)
        .loss_and_grads(tensor(x, [N, D]), Some(&dead), 1.0)
        .unwrap();
    let cpu_b_enc = cpu_grads.b_enc.clone().unwrap();
    let cpu_grads = [&cpu_grads.w_enc, &cpu_grads.w_dec, &cpu_grads.b_dec];

    // The host-gradient path with the selection on the device, as the trainer runs it.
    let (step, grads) = sae::<Gpu>(config)
        .loss_and_grads(tensor(x, [N, D]), Some(&dead), 1.0)
        .unwrap();
    assert_eq!(step.indices, cpu_step.indices);
    assert!(max_rel_diff(&[step.loss], &[cpu_step.loss]) < 1e-5);
    for (g, c) in [&grads.w_enc, &grads.w_dec, &grads.b_dec]
        .into_iter()
        .zip(cpu_grads)
    {
        assert!(max_rel_diff(g, c) < 1e-5, "host-path gradient differs");
    }

    // The same math as tensor operations, the parameters and gradients staying on the device.
    let gpu_sae = sae::<Gpu>(config);
    let mut on_device = gpu_sae.device_params().zeros_like();
    let step = gpu_sae
        .add_device_loss_grads(tensor(x, [N, D]), Some(&dead), 1.0, None, &mut on_device)
        .unwrap();
    let grads = on_device.to_host();
    assert_eq!(step.indices, cpu_step.indices);
    assert!(max_rel_diff(&[step.loss], &[cpu_step.loss]) < 1e-5);
    for (i, (g, c)) in [&grads.w_enc, &grads.w_dec, &grads.b_dec]
        .into_iter()
        .zip(cpu_grads)
        .enumerate()
    {
        let err = max_rel_diff(g, c);
        assert!(err < 1e-5, "device gradient {i} differs by {err}");
    }
    let err = max_rel_diff(grads.b_enc.as_ref().unwrap(), &cpu_b_enc);
    assert!(err < 1e-5, "device b_enc gradient differs by {err}");

    // Burn's autodiff through the device selection.
    let gpu = sae::<Autodiff<Gpu>>(config);
    let out = gpu.forward(tensor(x, [N, D]), Some(&dead)).unwrap();
    let loss = out.loss(&gpu.config);
    let backward = loss.clone().backward();
    assert!(max_rel_diff(&values(loss), &[cpu_step.loss]) < 1e-5);
    let auto = [
        values(gpu.w_enc.val().grad(&backward).unwrap()),
        values(gpu.w_dec.val().grad(&backward).unwrap()),
        values(gpu.b_dec.val().grad(&backward).unwrap()),
    ];
    for (i, (g, c)) in auto.iter().zip(cpu_grads).enumerate() {
        let err = max_rel_diff(g, c);
        assert!(err < 1e-5, "autodiff gradient {i} differs by {err}");
        assert!(c.iter().any(|v| *v != 0.0), "gradient {i} is all zero");
    }
}

// The top-k kernel must pick exactly the host's latents in the host's order: k = 11 and k = 100
// (AuxK's and Multi-TopK's widths are of that order), among all latents and among a subset, on
// values with many ties (ReLU'd zeros), and all 8 columns of an 8-column matrix.
#[test]
fn top_k_kernel_picks_the_host_latents() {
    let values: Vec<f32> = host_values(6, N * L, 1.0)
        .into_iter()
        .map(|v| v.max(0.0))
        .collect();
    let allowed: Vec<bool> = (0..L).map(|i| i % 3 != 1).collect();
    for k in [11, 100] {
        for allowed in [None, Some(allowed.as_slice())] {
            let device = top_k_on_device(tensor::<Gpu, 2>(&values, [N, L]), k, allowed);
            let host = top_k_among(&values, L, k, allowed);
            assert_eq!(int_to_host(device), host.indices, "k = {k}");
        }
    }
    let narrow = &values[..N * 8];
    let device = top_k_rows(tensor::<Gpu, 2>(narrow, [N, 8]), 8);
    assert_eq!(int_to_host(device), top_k_among(narrow, 8, 8, None).indices);

    let none = top_k_rows(tensor::<Gpu, 2>(narrow, [N, 8]), 0);
    assert_eq!(none.dims(), [N, 0]);

    // More rows than one launch's 64 MiB of lists holds at k = 100 (2,621): two launches.
    let (rows, cols) = (2_700, 128);
    let many = host_values(11, rows * cols, 1.0);
    let device = top_k_rows(tensor::<Gpu, 2>(&many, [rows, cols]), 100);
    assert_eq!(
        int_to_host(device),
        top_k_among(&many, cols, 100, None).indices
    );
}

// The sparse kernels against the reference (dense) implementations on flex, on a selection with
// latents picked by many tokens and by none, and a zero (padding-like) coefficient.
#[test]
fn sparse_kernels_match_the_dense_reference() {
    const K: usize = 8;
    const M: usize = 24;
    let pre = host_values(7, N * L, 1.0);
    let host_indices = top_k_among(&pre, L, K, None).indices;
    let mut coefs = host_values(8, N * K, 1.0);
    coefs[5] = 0.0;
    let weights = host_values(9, L * M, 0.5);
    let dense = host_values(10, N * M, 1.0);

    fn run<Bk: SaeBackend>(
        indices: &[i64],
        coefs: &[f32],
        weights: &[f32],
        dense: &[f32],
    ) -> [Vec<f32>; 3] {
        let device = Default::default();
        let groups = LatentGroups::<Bk>::of_host(indices, K, L, &device);
        let coefs = tensor::<Bk, 2>(coefs, [N, K]);
        let (weights, dense) = (tensor(weights, [L, M]), tensor(dense, [N, M]));
        let indices = groups.indices.clone();
        [
            values(sparse_decode(
                coefs.clone(),
                indices.clone(),
                weights.clone(),
            )),
            values(sparse_dot(dense.clone(), indices, weights)),
            values(sparse_transpose_matmul(coefs, &groups, dense)),
        ]
    }
    let cpu = run::<Cpu>(&host_indices, &coefs, &weights, &dense);
    let gpu = run::<Gpu>(&host_indices, &coefs, &weights, &dense);
    for (name, (g, c)) in ["decode", "dot", "transpose matmul"]
        .iter()
        .zip(gpu.iter().zip(&cpu))
    {
        assert_eq!(g.len(), c.len(), "{name}: lengths");
        let err = max_rel_diff(g, c);
        assert!(err < 1e-5, "{name} differs by {err}");
        assert!(c.iter().any(|v| *v != 0.0), "{name}: all zero");
    }
}

#[test]
fn non_finite_input_is_an_error_on_the_device() {
    let mut x = input();
    x[7] = f32::NAN;
    let err = sae::<Gpu>(&SaeConfig::sparsify_topk(8, L))
        .encode(tensor(&x, [N, D]))
        .unwrap_err();
    assert!(matches!(err, SaeError::NonFinite(_)), "{err}");
}

// The self-check a `sae` built for a GPU runs at start passes where the kernels are right (the
// tests above); a kernel whose shader failed to compile made it fail (tried by hand).
#[test]
fn kernel_self_check_passes_on_the_gpu() {
    check_kernels::<Gpu>(&Default::default()).unwrap();
    check_kernels::<Autodiff<Gpu>>(&Default::default()).unwrap();
}
