//! `cargo xtask bench sae-kernels`: each of `sae_core::kernels::SaeBackend`'s operations on a
//! backend against its reference implementation (`sae_core::kernels::reference`: the host's
//! selection, dense products) on the same backend and inputs, at the SAE step's shapes. On
//! flex and ndarray the two are the same code (a ratio of 1 up to noise); on wgpu and cuda the
//! first are the CubeCL kernels.

use std::time::Instant;

use anyhow::Result;
use burn::tensor::{Distribution, Tensor};
use sae_core::SaeBackend;
use sae_core::kernels::{
    LatentGroups, reference, sparse_decode, sparse_dot, sparse_transpose_matmul, top_k_rows,
};

use crate::bench::{D, K, LATENTS, Plain, ROUNDS, TOKENS, describe, median, on_backend};

/// Times the kernels and their references on `backend` and prints one line per operation:
/// `sae-kernels <op> kernel=<ms> reference=<ms> speedup=<reference / kernel>`.
pub fn sae_kernels(backend: &str) -> Result<()> {
    describe(backend);
    on_backend!(backend, kernel_timings, Plain)
}

/// A timed operation: its result is awaited (the backend synced) inside the timing.
type Op<'a> = Box<dyn Fn() + 'a>;

fn kernel_timings<B: SaeBackend>() -> Result<()> {
    let device = Default::default();
    B::seed(&device, 0);
    let normal =
        |shape: [usize; 2]| Tensor::<B, 2>::random(shape, Distribution::Normal(0.0, 1.0), &device);
    let (pre, weights, dense) = (
        normal([TOKENS, LATENTS]),
        normal([LATENTS, D]),
        normal([TOKENS, D]),
    );
    let indices = top_k_rows(pre.clone(), K);
    let coefs = pre.clone().gather(1, indices.clone());
    let groups = LatentGroups::of_device(indices.clone(), LATENTS);
    let float = |t: &Tensor<B, 2>| t.clone().into_primitive().tensor();
    let int = |t: &Tensor<B, 2, burn::tensor::Int>| t.clone().into_primitive();
    let int1 = |t: &Tensor<B, 1, burn::tensor::Int>| t.clone().into_primitive();
    let cases: [(&str, Op, Op); 4] = [
        (
            "top_k_rows",
            Box::new(|| drop(top_k_rows(pre.clone(), K))),
            Box::new(|| drop(reference::top_k_rows::<B>(float(&pre), K))),
        ),
        (
            "sparse_decode",
            Box::new(|| {
                drop(sparse_decode(
                    coefs.clone(),
                    indices.clone(),
                    weights.clone(),
                ))
            }),
            Box::new(|| {
                drop(reference::sparse_decode::<B>(
                    float(&coefs),
                    int(&indices),
                    float(&weights),
                ))
            }),
        ),
        (
            "sparse_dot",
            Box::new(|| drop(sparse_dot(dense.clone(), indices.clone(), weights.clone()))),
            Box::new(|| {
                drop(reference::sparse_dot::<B>(
                    float(&dense),
                    int(&indices),
                    float(&weights),
                ))
            }),
        ),
        (
            "sparse_transpose_matmul",
            Box::new(|| {
                drop(sparse_transpose_matmul(
                    coefs.clone(),
                    &groups,
                    dense.clone(),
                ))
            }),
            Box::new(|| {
                drop(reference::sparse_transpose_matmul::<B>(
                    float(&coefs),
                    int(&groups.indices),
                    int1(&groups.order),
                    int1(&groups.offsets),
                    float(&dense),
                ))
            }),
        ),
    ];
    for (name, kernel, baseline) in &cases {
        // One untimed call each compiles (and autotunes) what the timed ones run.
        let time = |op: &Op| -> Result<f64> {
            let start = Instant::now();
            op();
            B::sync(&device).map_err(|e| anyhow::anyhow!("{e:?}"))?;
            Ok(start.elapsed().as_secs_f64() * 1e3)
        };
        time(kernel)?;
        time(baseline)?;
        let (mut ours, mut theirs) = (Vec::new(), Vec::new());
        for _ in 0..ROUNDS {
            ours.push(time(kernel)?);
            theirs.push(time(baseline)?);
        }
        let (ours, theirs) = (median(&mut ours), median(&mut theirs));
        println!(
            "sae-kernels {name} kernel={ours:.3}ms reference={theirs:.3}ms speedup={:.1}",
            theirs / ours
        );
    }
    Ok(())
}
