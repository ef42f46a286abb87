//! The double-buffered CubeCL matmul kernels (the patched cubek-matmul, patches/README.md) on
//! the wgpu or cuda backend against flex's matmul. Their k-loop runs an even number of stages, so
//! for k an odd multiple of one stage (1176 = 147 x 8: the Qwen2-VL patch embedding) the last
//! stage lies past k; unpatched, the kernel skipped the bounds check there and read the next
//! batch's rows (or the next column of a transposed operand). Each kernel must now either refuse
//! the shape (autotune then leaves it out) or compute it within 1e-5 relative. Run with
//! `cargo test -p sae-core --features wgpu --test cubecl_matmul`.
#![cfg(any(feature = "wgpu", feature = "cuda"))]

mod common;

use burn::tensor::{DType, Distribution, Tensor, TensorPrimitive};
use burn_cubecl::CubeBackend;
use burn_cubecl::kernel::matmul::init_matmul_output;
use common::{B as Cpu, values};
use cubek_matmul::definition::{MatmulElems, MatmulGlobalElems};
use cubek_matmul::launch::{Strategy, launch_ref};
use cubek_matmul::routines::double_unit::DoubleUnitSelectionArgs;
use cubek_matmul::routines::{BlueprintStrategy, TileSizeSelection};
use cubek_std::InputBinding;
use sae_core::parity::max_rel_diff;

/// The device runtime under test: cuda where enabled, else wgpu.
#[cfg(feature = "cuda")]
type Runtime = burn_cubecl::cubecl::cuda::CudaRuntime;
#[cfg(not(feature = "cuda"))]
type Runtime = burn_cubecl::cubecl::wgpu::WgpuRuntime;

/// The CubeCL backend without fusion, whose tensors are the kernels' inputs.
type Cube = CubeBackend<Runtime, f32, i32, u32>;

/// `lhs x rhs` on the device by `strategy` alone (no autotune), or the kernel's refusal.
fn launch(
    strategy: &Strategy,
    lhs: Tensor<Cube, 3>,
    rhs: Tensor<Cube, 3>,
) -> Option<Tensor<Cube, 3>> {
    let (lhs, rhs) = (lhs.into_primitive().tensor(), rhs.into_primitive().tensor());
    let out = init_matmul_output(&lhs, &rhs, DType::F32);
    let mut dtypes = MatmulElems::from_globals(&MatmulGlobalElems {
        lhs: DType::F32.into(),
        rhs: DType::F32.into(),
        out: DType::F32.into(),
    });
    let client = out.client.clone();
    let (lhs, rhs) = (
        InputBinding::new(lhs.binding(), DType::F32.into()),
        InputBinding::new(rhs.binding(), DType::F32.into()),
    );
    launch_ref(
        strategy,
        &client,
        lhs,
        rhs,
        out.clone().binding(),
        &mut dtypes,
    )
    .ok()?;
    Some(Tensor::from_primitive(TensorPrimitive::Float(out)))
}

#[test]
fn double_buffered_matmuls_respect_k_or_refuse_it() {
    let device = Default::default();
    let mut ran_past_one_stage = 0;
    for tile_size in [
        TileSizeSelection::MaxTileSize,
        TileSizeSelection::MinTileSize,
    ] {
        let strategy = Strategy::DoubleUnit(BlueprintStrategy::Inferred(DoubleUnitSelectionArgs {
            tile_size,
        }));
        // Odd multiples of 8 (the ones that went wrong), multiples of 16, and neither.
        for k in [1176, 1160, 1032, 520, 1168, 1184, 1040, 1100] {
            let a = Tensor::<Cpu, 3>::random([2, 32, k], Distribution::Normal(0.0, 1.0), &device);
            let b = Tensor::<Cpu, 3>::random([2, k, 64], Distribution::Normal(0.0, 1.0), &device);
            let want = a.clone().matmul(b.clone());
            let on_device =
                |t: &Tensor<Cpu, 3>| Tensor::<Cube, 3>::from_data(t.to_data(), &Default::default());
            // Contiguous operands, and the right one as a transposed view (a linear layer's x^T).
            let b_t = b.clone().swap_dims(1, 2);
            let cases = [
                ("contiguous", on_device(&a), on_device(&b)),
                (
                    "transposed rhs",
                    on_device(&a),
                    on_device(&b_t).swap_dims(1, 2),
                ),
            ];
            for (layout, lhs, rhs) in cases {
                let Some(got) = launch(&strategy, lhs, rhs) else {
                    continue;
                };
                let diff = max_rel_diff(&values(got), &values(want.clone()));
                assert!(
                    diff < 1e-5,
                    "{strategy} on {layout} operands, k = {k}: off by {diff} relative"
                );
                ran_past_one_stage += usize::from(k % 16 == 0);
            }
        }
    }
    // The kernels ran where k fills whole stage pairs: the test compared something.
    assert!(
        ran_past_one_stage > 0,
        "no double-buffered kernel ran on this device"
    );
}
