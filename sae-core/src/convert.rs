//! Stored floats to the dtype a model computes in, in one pass: a bf16 weight computed in bf16 is
//! a copy, one computed in f32 is widened element by element, never through a whole f32 copy;
//! a linear layer's weight is transposed in the same pass.

use burn::tensor::TensorData;
use half::{bf16, f16};
use rayon::prelude::*;

use crate::tensor_file::StorageDtype;

/// A float type that values are stored or computed in.
trait Float: bytemuck::Pod + Send + Sync + burn::tensor::Element {
    fn to_f32(self) -> f32;
    fn from_f32(x: f32) -> Self;
}

impl Float for f32 {
    fn to_f32(self) -> f32 {
        self
    }
    fn from_f32(x: f32) -> Self {
        x
    }
}

impl Float for f16 {
    fn to_f32(self) -> f32 {
        f16::to_f32(self)
    }
    fn from_f32(x: f32) -> Self {
        f16::from_f32(x)
    }
}

impl Float for bf16 {
    fn to_f32(self) -> f32 {
        bf16::to_f32(self)
    }
    fn from_f32(x: f32) -> Self {
        bf16::from_f32(x)
    }
}

/// Rows of the output handled together (a block of a transpose, a task for the thread pool).
const BLOCK: usize = 64;

/// The row-major `shape` values stored little-endian as `stored` in `bytes`, as tensor data in
/// `dtype`. With `transpose`, a `[rows, ...]` tensor comes out as the `[cols, rows]` matrix of its
/// rows flattened (how a linear layer's `[out, in]` weight becomes Burn's `[in, out]`).
pub fn float_data(
    bytes: &[u8],
    stored: StorageDtype,
    shape: &[usize],
    dtype: StorageDtype,
    transpose: bool,
) -> TensorData {
    fn to<D: Float>(bytes: &[u8], stored: StorageDtype, shape: &[usize], t: bool) -> TensorData {
        let values: Vec<D> = match stored {
            StorageDtype::F32 => convert::<f32, D>(bytes, shape, t),
            StorageDtype::F16 => convert::<f16, D>(bytes, shape, t),
            StorageDtype::BF16 => convert::<bf16, D>(bytes, shape, t),
        };
        let shape = match (t, shape.split_first()) {
            (true, Some((&rows, rest))) => vec![rest.iter().product(), rows],
            _ => shape.to_vec(),
        };
        TensorData::new(values, shape)
    }
    match dtype {
        StorageDtype::F32 => to::<f32>(bytes, stored, shape, transpose),
        StorageDtype::F16 => to::<f16>(bytes, stored, shape, transpose),
        StorageDtype::BF16 => to::<bf16>(bytes, stored, shape, transpose),
    }
}

/// Reads `S` values and writes them as `D`, transposed when `transpose`, on all cores.
fn convert<S: Float, D: Float>(bytes: &[u8], shape: &[usize], transpose: bool) -> Vec<D> {
    let size = std::mem::size_of::<S>();
    let n = bytes.len() / size;
    let at = |i: usize| -> D {
        let s: S = bytemuck::pod_read_unaligned(&bytes[i * size..(i + 1) * size]);
        D::from_f32(s.to_f32())
    };
    let mut out = vec![D::zeroed(); n];
    let rows = shape.first().copied().unwrap_or(1);
    if !transpose || rows <= 1 || n == 0 {
        if std::any::TypeId::of::<S>() == std::any::TypeId::of::<D>() {
            bytemuck::cast_slice_mut::<D, u8>(&mut out).copy_from_slice(&bytes[..n * size]);
        } else {
            out.par_chunks_mut(BLOCK * 1024)
                .enumerate()
                .for_each(|(chunk, o)| {
                    let start = chunk * BLOCK * 1024;
                    o.iter_mut()
                        .enumerate()
                        .for_each(|(j, v)| *v = at(start + j));
                });
        }
        return out;
    }
    // Output row c is input column c: each task fills BLOCK output rows, walking the input's
    // rows in order and reading BLOCK neighbouring values from each.
    let cols = n / rows;
    out.par_chunks_mut(BLOCK * rows)
        .enumerate()
        .for_each(|(block, o)| {
            let c0 = block * BLOCK;
            let width = o.len() / rows;
            for r in 0..rows {
                for dc in 0..width {
                    o[dc * rows + r] = at(r * cols + c0 + dc);
                }
            }
        });
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bytes<T: bytemuck::Pod>(v: &[T]) -> Vec<u8> {
        bytemuck::cast_slice(v).to_vec()
    }

    #[test]
    fn bf16_computed_in_bf16_is_the_stored_bits() {
        // Values bf16 cannot hold in f32 form exactly would show a round trip; bits must match.
        let v: Vec<bf16> = [1.0f32, -2.5, 3.0e-5, 65504.0, f32::NAN]
            .map(bf16::from_f32)
            .to_vec();
        let data = float_data(
            &bytes(&v),
            StorageDtype::BF16,
            &[5],
            StorageDtype::BF16,
            false,
        );
        assert_eq!(data.dtype, burn::tensor::DType::BF16);
        assert_eq!(data.as_bytes(), bytes(&v));
    }

    #[test]
    fn widening_and_narrowing_match_half() {
        let x = [0.1f32, -1.0e-3, 7.25, 1.0e4];
        let h: Vec<f16> = x.map(f16::from_f32).to_vec();
        let wide = float_data(
            &bytes(&h),
            StorageDtype::F16,
            &[4],
            StorageDtype::F32,
            false,
        );
        let want: Vec<f32> = h.iter().map(|v| v.to_f32()).collect();
        assert_eq!(wide.to_vec::<f32>().unwrap(), want);
        let narrow = float_data(
            &bytes(&x),
            StorageDtype::F32,
            &[4],
            StorageDtype::BF16,
            false,
        );
        let want: Vec<bf16> = x.map(bf16::from_f32).to_vec();
        assert_eq!(narrow.to_vec::<bf16>().unwrap(), want);
    }

    #[test]
    fn transposes_flattened_rows() {
        // [3, 2, 2] -> rows flattened to [3, 4] -> transposed [4, 3]; more than one block of
        // output rows in the second case.
        let x: Vec<f32> = (0..12).map(|i| i as f32).collect();
        let t = float_data(
            &bytes(&x),
            StorageDtype::F32,
            &[3, 2, 2],
            StorageDtype::F32,
            true,
        );
        assert_eq!(t.shape.to_vec(), vec![4, 3]);
        assert_eq!(
            t.to_vec::<f32>().unwrap(),
            [0., 4., 8., 1., 5., 9., 2., 6., 10., 3., 7., 11.]
        );
        let (rows, cols) = (3, 2 * BLOCK + 5);
        let x: Vec<bf16> = (0..rows * cols).map(|i| bf16::from_f32(i as f32)).collect();
        let t = float_data(
            &bytes(&x),
            StorageDtype::BF16,
            &[rows, cols],
            StorageDtype::F32,
            true,
        );
        let got = t.to_vec::<f32>().unwrap();
        for r in 0..rows {
            for c in 0..cols {
                assert_eq!(got[c * rows + r], x[r * cols + c].to_f32());
            }
        }
    }
}
