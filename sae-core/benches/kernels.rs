//! Micro-benchmarks of the SAE step's kernels at the `sae-step` shape (d = 576, 9216 latents,
//! k = 32, 2048 tokens, f32, the CPU backend): top-k selection over the pre-activations, and
//! the whole host loss-and-gradients pass. Run with `cargo xtask bench micro` (or
//! `cargo bench -p sae-core --bench kernels`).

use burn::backend::Flex;
use burn::tensor::backend::Backend;
use burn::tensor::{Distribution, Tensor};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use sae_core::select::top_k;
use sae_core::{Sae, SaeConfig};

const D: usize = 576;
const LATENTS: usize = 9216;
const K: usize = 32;
const TOKENS: usize = 2048;

fn kernels(c: &mut Criterion) {
    let device = Default::default();
    Flex::seed(&device, 0);
    let sae = Sae::<Flex>::new(D, SaeConfig::sparsify_topk(K, LATENTS), &device).unwrap();
    let x = Tensor::<Flex, 2>::random([TOKENS, D], Distribution::Normal(0.0, 1.0), &device);
    // Pre-activations of the right scale: the encoder applied to the input.
    let pre = sae_core::host::to_host(x.clone().matmul(sae.w_enc.val().transpose()));

    let mut group = c.benchmark_group("sae-step kernels");
    group.throughput(Throughput::Elements(TOKENS as u64));
    group.sample_size(10);
    group.bench_function("top_k [2048 x 9216], k 32", |b| {
        b.iter(|| top_k(&pre, LATENTS, K))
    });
    group.bench_function("loss_and_grads (host gradients)", |b| {
        b.iter(|| sae.loss_and_grads(x.clone(), None, 1.0).unwrap())
    });
    group.finish();
}

criterion_group!(benches, kernels);
criterion_main!(benches);
