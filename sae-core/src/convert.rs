//! Stored floats to the dtype a model computes in, in one pass: a bf16 weight computed in bf16 is
//! a copy, one computed in f32 is widened element by element, never through a whole f32 copy.

use burn::tensor::TensorData;
use half::{bf16, f16};
use rayon::prelude::*;
use std::ops::Range;

use crate::tensor_file::StorageDtype;

/// A float type that values are stored or computed in.
trait Float: bytemuck::Pod + Send + Sync + burn::tensor::Element + 'static {
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

/// Values one task converts.
const TASK: usize = 64 * 1024;

/// Source bytes converted per chunk: the pages of a chunk are released before the next is read,
/// so a 1 GB embedding never sits in memory twice.
const CHUNK_BYTES: usize = 32 << 20;

/// A stored tensor being converted, a chunk of rows at a time, into the dtype a model computes
/// in.
pub struct Conversion {
    stored: StorageDtype,
    shape: Vec<usize>,
    rows: usize,
    cols: usize,
    out: Output,
}

/// The converted values.
enum Output {
    F32(Vec<f32>),
    F16(Vec<f16>),
    BF16(Vec<bf16>),
}

impl Conversion {
    /// A conversion of a row-major `shape` tensor stored as `stored` into `dtype`.
    pub fn new(stored: StorageDtype, shape: &[usize], dtype: StorageDtype) -> Self {
        let n: usize = shape.iter().product();
        let rows = shape.first().copied().unwrap_or(1).max(1);
        let out = match dtype {
            StorageDtype::F32 => Output::F32(vec![0.0; n]),
            StorageDtype::F16 => Output::F16(vec![f16::ZERO; n]),
            StorageDtype::BF16 => Output::BF16(vec![bf16::ZERO; n]),
        };
        Conversion {
            stored,
            shape: shape.to_vec(),
            rows,
            cols: n / rows,
            out,
        }
    }

    /// The row ranges to read and [`fill`](Self::fill) in turn, each at most about 32 MiB.
    pub fn chunks(&self) -> Vec<Range<usize>> {
        let row_bytes = (self.cols * self.stored.size()).max(1);
        let per = (CHUNK_BYTES / row_bytes).max(1);
        (0..self.rows)
            .step_by(per)
            .map(|r| r..(r + per).min(self.rows))
            .collect()
    }

    /// Where the stored bytes of `rows` lie, from the start of the tensor's bytes.
    pub fn byte_range(&self, rows: &Range<usize>) -> Range<usize> {
        let row_bytes = self.cols * self.stored.size();
        rows.start * row_bytes..rows.end * row_bytes
    }

    /// Converts the source rows `rows`, whose stored bytes are `bytes`.
    pub fn fill(&mut self, rows: Range<usize>, bytes: &[u8]) {
        fn to<D: Float>(c: &Conversion, out: &mut [D], rows: Range<usize>, bytes: &[u8]) {
            match c.stored {
                StorageDtype::F32 => fill::<f32, D>(c, out, rows, bytes),
                StorageDtype::F16 => fill::<f16, D>(c, out, rows, bytes),
                StorageDtype::BF16 => fill::<bf16, D>(c, out, rows, bytes),
            }
        }
        let mut out = std::mem::replace(&mut self.out, Output::F32(Vec::new()));
        match &mut out {
            Output::F32(v) => to(self, v, rows, bytes),
            Output::F16(v) => to(self, v, rows, bytes),
            Output::BF16(v) => to(self, v, rows, bytes),
        }
        self.out = out;
    }

    /// The converted tensor.
    pub fn finish(self) -> TensorData {
        let shape = self.shape;
        match self.out {
            Output::F32(v) => TensorData::new(v, shape),
            Output::F16(v) => TensorData::new(v, shape),
            Output::BF16(v) => TensorData::new(v, shape),
        }
    }
}

/// The row-major `shape` values stored little-endian as `stored` in `bytes`, as tensor data in
/// `dtype` (see [`Conversion`]), in one go.
pub fn float_data(
    bytes: &[u8],
    stored: StorageDtype,
    shape: &[usize],
    dtype: StorageDtype,
) -> TensorData {
    let mut conversion = Conversion::new(stored, shape, dtype);
    let rows = conversion.rows;
    conversion.fill(0..rows, bytes);
    conversion.finish()
}

/// One stored value as `D`: its own bits when the types are the same, else through f32.
#[inline(always)]
fn convert<S: Float, D: Float>(s: S) -> D {
    if std::any::TypeId::of::<S>() == std::any::TypeId::of::<D>() {
        bytemuck::try_cast(s).expect("the same type")
    } else {
        D::from_f32(s.to_f32())
    }
}

/// Writes the source rows `rows` (their bytes `bytes`) into `out`, on all cores.
fn fill<S: Float, D: Float>(c: &Conversion, out: &mut [D], rows: Range<usize>, bytes: &[u8]) {
    let size = std::mem::size_of::<S>();
    let at = |i: usize| -> D {
        convert(bytemuck::pod_read_unaligned::<S>(
            &bytes[i * size..(i + 1) * size],
        ))
    };
    let cols = c.cols;
    let out = &mut out[rows.start * cols..rows.end * cols];
    if std::any::TypeId::of::<S>() == std::any::TypeId::of::<D>() {
        let n = out.len() * size;
        bytemuck::cast_slice_mut::<D, u8>(out).copy_from_slice(&bytes[..n]);
    } else {
        out.par_chunks_mut(TASK).enumerate().for_each(|(chunk, o)| {
            let start = chunk * TASK;
            o.iter_mut()
                .enumerate()
                .for_each(|(j, v)| *v = at(start + j));
        });
    }
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
        let data = float_data(&bytes(&v), StorageDtype::BF16, &[5], StorageDtype::BF16);
        assert_eq!(data.dtype, burn::tensor::DType::BF16);
        assert_eq!(data.as_bytes(), bytes(&v));
    }

    #[test]
    fn widening_and_narrowing_match_half() {
        let x = [0.1f32, -1.0e-3, 7.25, 1.0e4];
        let h: Vec<f16> = x.map(f16::from_f32).to_vec();
        let wide = float_data(&bytes(&h), StorageDtype::F16, &[4], StorageDtype::F32);
        let want: Vec<f32> = h.iter().map(|v| v.to_f32()).collect();
        assert_eq!(wide.to_vec::<f32>().unwrap(), want);
        let narrow = float_data(&bytes(&x), StorageDtype::F32, &[4], StorageDtype::BF16);
        let want: Vec<bf16> = x.map(bf16::from_f32).to_vec();
        assert_eq!(narrow.to_vec::<bf16>().unwrap(), want);
    }

    #[test]
    fn rows_converted_in_chunks_give_the_same_tensor() {
        let (rows, cols) = (5, 67);
        let x: Vec<bf16> = (0..rows * cols)
            .map(|i| bf16::from_f32(i as f32 * 0.5))
            .collect();
        let raw = bytes(&x);
        for dtype in [StorageDtype::BF16, StorageDtype::F32, StorageDtype::F16] {
            let whole = float_data(&raw, StorageDtype::BF16, &[rows, cols], dtype);
            let mut chunked = Conversion::new(StorageDtype::BF16, &[rows, cols], dtype);
            for part in [0..1, 1..4, 4..5] {
                let range = chunked.byte_range(&part);
                chunked.fill(part, &raw[range]);
            }
            let chunked = chunked.finish();
            assert_eq!(chunked.shape, whole.shape);
            assert_eq!(chunked.as_bytes(), whole.as_bytes(), "{dtype:?}");
        }
    }
}
