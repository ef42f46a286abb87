//! `cargo xtask bench matmul-dtype`: Flex's matmul in f32, bf16 and f16 at a 7B-class
//! decoder's shapes (the attention projection and the MLP's up projection of Qwen2.5-VL-7B, 128
//! tokens), so the CPU default compute dtype rests on a measurement (docs/perf.md).

use std::time::Instant;

use anyhow::Result;
use burn::backend::Flex;
use burn::tensor::{DType, Distribution, Tensor};

use crate::bench::{ROUNDS, median};

/// Tokens per matmul.
const TOKENS: usize = 128;
/// `(d_in, d_out)` of the timed products: hidden to hidden, hidden to the MLP width.
const SHAPES: [(usize, usize); 2] = [(3584, 3584), (3584, 18944)];
/// Products timed per shape and dtype in a round (after one untimed).
const REPEATS: usize = 5;
/// The dtypes compared, f32 first (the ratios' base).
const DTYPES: [(&str, DType); 3] = [
    ("f32", DType::F32),
    ("bf16", DType::BF16),
    ("f16", DType::F16),
];

/// Times the products in each dtype in turn, `ROUNDS` times, and prints
/// `matmul-dtype f32=<GFLOP/s> bf16=<GFLOP/s> f16=<GFLOP/s> bf16/f32=<r> f16/f32=<r>`.
pub fn matmul_dtype() -> Result<()> {
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    eprintln!(
        "backend flex ({threads} threads), x [{TOKENS}, d_in] times w [d_in, d_out] for (d_in, d_out) in {SHAPES:?}"
    );
    let mut rates = vec![Vec::new(); DTYPES.len()];
    for round in 1..=ROUNDS {
        let mut line = format!("matmul-dtype round {round}:");
        for ((name, dtype), rates) in DTYPES.iter().zip(&mut rates) {
            let rate = gflops(*dtype);
            line.push_str(&format!(" {name}={rate:.1}"));
            rates.push(rate);
        }
        eprintln!("{line}");
    }
    let medians: Vec<f64> = rates.iter_mut().map(|r| median(r)).collect();
    let mut line = String::from("matmul-dtype");
    for ((name, _), m) in DTYPES.iter().zip(&medians) {
        line.push_str(&format!(" {name}={m:.1}"));
    }
    for ((name, _), m) in DTYPES.iter().zip(&medians).skip(1) {
        line.push_str(&format!(" {name}/f32={:.2}", m / medians[0]));
    }
    println!("{line}");
    Ok(())
}

/// GFLOP/s of `REPEATS` products per shape in `dtype`.
fn gflops(dtype: DType) -> f64 {
    let device = Default::default();
    let (mut flop, mut seconds) = (0.0, 0.0);
    for (d_in, d_out) in SHAPES {
        let x = Tensor::<Flex, 2>::random([TOKENS, d_in], Distribution::Normal(0.0, 1.0), &device)
            .cast(dtype);
        let w = Tensor::<Flex, 2>::random([d_in, d_out], Distribution::Normal(0.0, 0.02), &device)
            .cast(dtype);
        let _ = x.clone().matmul(w.clone()).slice([0..1, 0..1]).into_data();
        let start = Instant::now();
        for _ in 0..REPEATS {
            let _ = x.clone().matmul(w.clone()).slice([0..1, 0..1]).into_data();
        }
        seconds += start.elapsed().as_secs_f64();
        flop += (2 * TOKENS * d_in * d_out * REPEATS) as f64;
    }
    flop / seconds / 1e9
}
