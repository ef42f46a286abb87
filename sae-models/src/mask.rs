//! Additive attention masks: 0 where a query may attend, a large negative value where it may
//! not, added to the scores before the softmax.
//!
//! The value for hidden positions depends on where it is used:
//! - It must stay finite in the compute dtype wherever a whole row can be hidden (a padding
//!   query after left padding): transformers uses the dtype's lowest finite value there, which
//!   makes that row's softmax uniform. `f32::MIN` itself would round to `-inf` in bf16 and f16,
//!   and a row of `-inf` gives NaN, which the next layer's values spread to every token.
//! - Elsewhere any value gives a weight of exactly 0. On the CPU backends `-inf` is the fast
//!   one: libm's `exp(-inf)` returns 0 at once, while `exp` of a large finite negative number
//!   takes its underflow path (5 % of a SmolLM2-135M forward pass's samples). GPU backends
//!   get the lowest finite value: WGSL lets compilers assume no infinities.

use burn::tensor::backend::Backend;
use burn::tensor::{DType, Tensor, TensorData, bf16, f16};

/// The lowest finite value of the compute dtype `dtype`, as an f32 that converts to it exactly.
pub(crate) fn lowest_finite(dtype: DType) -> f32 {
    match dtype {
        DType::F16 => f16::MIN.to_f32(),
        DType::BF16 => bf16::MIN.to_f32(),
        _ => f32::MIN,
    }
}

/// The value of hidden positions in rows that keep at least one visible position: `-inf` on
/// the CPU backends (flex, ndarray, also under autodiff), [`lowest_finite`] elsewhere.
pub(crate) fn hidden<B: Backend>(device: &B::Device, dtype: DType) -> f32 {
    let name = B::name(device);
    if name.contains("flex") || name.contains("ndarray") {
        f32::NEG_INFINITY
    } else {
        lowest_finite(dtype)
    }
}

/// The causal and padding mask `[batch, 1, new, past + new]` for `new` queries after `past`
/// cached positions, in the compute dtype `dtype`: query `q` sees the positions up to its own
/// that `full` (`[batch, past + new]`, 1 = token, 0 = padding) keeps. A row that sees nothing
/// holds [`lowest_finite`] throughout, as transformers' mask does.
pub(crate) fn causal<B: Backend>(
    full: &[i64],
    (b, new, past): (usize, usize, usize),
    dtype: DType,
    device: &B::Device,
) -> Tensor<B, 4> {
    let total = past + new;
    let hidden = hidden::<B>(device, dtype);
    let mut mask = vec![0f32; b * new * total];
    for (r, row) in mask.chunks_mut(total).enumerate() {
        let (batch, q) = (r / new, r % new);
        let keeps = &full[batch * total..(batch + 1) * total];
        let seen = |k: usize| k <= past + q && keeps[k] != 0;
        let fill = if (0..total).any(seen) {
            hidden
        } else {
            lowest_finite(dtype)
        };
        for (k, value) in row.iter_mut().enumerate() {
            if !seen(k) {
                *value = fill;
            }
        }
    }
    Tensor::<B, 4>::from_data(TensorData::new(mask, [b, 1, new, total]), device).cast(dtype)
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::Flex;

    #[test]
    fn lowest_finite_values_are_finite_in_their_dtype() {
        assert_eq!(lowest_finite(DType::F16), -65504.0);
        assert_eq!(bf16::from_f32(lowest_finite(DType::BF16)), bf16::MIN);
        // f32::MIN is what half precision must not be given: it rounds to -inf there.
        assert!(bf16::from_f32(f32::MIN).to_f32().is_infinite());
        assert!(f16::from_f32(f32::MIN).to_f32().is_infinite());
    }

    // One row of 2 left-padding positions then 2 tokens, 1 cached position: the padding queries
    // see nothing (lowest finite value throughout), the tokens see themselves, earlier tokens
    // and not the padding (-inf on flex).
    #[test]
    fn causal_mask_hides_the_future_and_padding() {
        let device = Default::default();
        let full = [0, 0, 1, 1];
        let mask = causal::<Flex>(&full, (1, 3, 1), DType::F32, &device);
        let values = mask.into_data().to_vec::<f32>().unwrap();
        let (n, m) = (f32::NEG_INFINITY, f32::MIN);
        #[rustfmt::skip]
        let expected = [
            m, m, m, m,
            n, n, 0.0, n,
            n, n, 0.0, 0.0,
        ];
        assert_eq!(values, expected);
    }
}
