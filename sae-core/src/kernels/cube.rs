//! [`SaeBackend`]'s kernels in CubeCL, for every CubeCL backend (wgpu, cuda, ...). Each unit
//! of the sparse products computes one output element with a plain loop, and the top-k runs one
//! cube per row: no atomics, so sums run in a fixed order and results are the same from run to
//! run.
//! Work is `O(tokens x k x m)` for the sparse products, against `O(tokens x latents x m)` for
//! the dense fallbacks.

use burn::tensor::DType;
use burn::tensor::ops::{FloatTensor, IntTensor};
use burn_cubecl::cubecl;
use burn_cubecl::cubecl::{calculate_cube_count_elemwise, prelude::*};
use burn_cubecl::kernel::{cast, into_contiguous};
use burn_cubecl::ops::numeric::empty_device_contiguous_dtype;
use burn_cubecl::tensor::CubeTensor;
use burn_cubecl::{BoolElement, CubeBackend, CubeRuntime, FloatElement, IntElement};

use super::SaeBackend;

/// The units of a cube that selects one row's top k.
const TOP_K_UNITS: usize = 32;

/// The most bytes of per-unit lists one top-k launch uses; more rows take more launches
/// (AuxK's `k` of `d_in / 2` on many tokens would otherwise need gigabytes).
const TOP_K_SCRATCH_BYTES: usize = 64 << 20;

/// One cube of [`TOP_K_UNITS`] units per row, in two scans of the row. Each unit reads the
/// columns `unit`, `unit + units`, ... (adjacent units read adjacent values) into its sorted
/// list in `best`/`picked`, and the first unit merges the lists into the row's `merged`/
/// `indices`, each list until one of its entries no longer enters. The first scan keeps each
/// unit's `ceil(k / units)` largest: the k-th largest of those (at least `k` distinct entries)
/// bounds the row's k-th largest from below, so the second scan lists only the columns that
/// reach it. Ties go to the lower column. A launch covers the rows `first_row..end_row`, one
/// cube each, with the lists of its cube `c` at `c * units * k` in the scratch.
#[cube(launch)]
fn top_k_rows_kernel<F: Float, I: Int>(
    values: &Array<F>,
    best: &mut Array<F>,
    picked: &mut Array<I>,
    merged: &mut Array<F>,
    indices: &mut Array<I>,
    first_row: usize,
    end_row: usize,
    cols: usize,
    k: usize,
    #[comptime] units: usize,
) {
    // A large grid may hold a few cubes more than rows; they have no lists.
    let row = first_row + CUBE_POS;
    if row >= end_row {
        terminate!();
    }
    let unit = UNIT_POS as usize;
    let mut counts = SharedMemory::<u32>::new(units);
    let mut bound = SharedMemory::<F>::new(1usize);
    let list = (CUBE_POS * units + unit) * k;
    let out = row * k;
    for scan in 0..2u32 {
        let mut size = k;
        if scan == 0 {
            size = k.div_ceil(units);
        }
        // Read once a scan (in the first, before any is set, and not used).
        let floor = bound[0];
        let mut filled = 0usize;
        let mut col = unit;
        loop {
            if col >= cols {
                break;
            }
            let value = values[row * cols + col];
            // Not `value >= floor`: a NaN bound keeps every column.
            let below = value < floor;
            if scan == 0 || !below {
                let index = I::cast_from(col);
                if insert::<F, I>(value, index, best, picked, list, size, filled) && filled < size {
                    filled += 1;
                }
            }
            col += units;
        }
        counts[unit] = u32::cast_from(filled);
        // The lists are in global memory: make them visible to the cube, then wait for it.
        sync_storage();
        sync_cube();
        if unit == 0 {
            let mut total = 0usize;
            for source in 0..units {
                let from = (CUBE_POS * units + source) * k;
                let count = usize::cast_from(counts[source]);
                for j in 0..count {
                    let (value, index) = (best[from + j], picked[from + j]);
                    if !insert::<F, I>(value, index, merged, indices, out, k, total) {
                        break;
                    }
                    if total < k {
                        total += 1;
                    }
                }
            }
            bound[0] = merged[out + k - 1];
        }
        sync_cube();
    }
}

/// Inserts `(value, index)` into the list of `k` slots at `start` (`filled` of them used),
/// sorted larger first with ties to the lower index; whether it entered.
#[cube]
fn insert<F: Float, I: Int>(
    value: F,
    index: I,
    values: &mut Array<F>,
    indices: &mut Array<I>,
    start: usize,
    k: usize,
    filled: usize,
) -> bool {
    let mut enters = filled < k;
    if !enters {
        enters = before::<F, I>(value, index, values[start + k - 1], indices[start + k - 1]);
    }
    if enters {
        // The free slot: the next one while filling, else the last kept entry's.
        let mut pos = k - 1;
        if filled < k {
            pos = filled;
        }
        loop {
            if pos == 0 {
                break;
            }
            let (above, above_index) = (values[start + pos - 1], indices[start + pos - 1]);
            if !before::<F, I>(value, index, above, above_index) {
                break;
            }
            values[start + pos] = above;
            indices[start + pos] = above_index;
            pos -= 1;
        }
        values[start + pos] = value;
        indices[start + pos] = index;
    }
    enters
}

/// Whether `(v, i)` sorts before `(w, j)`: a larger value, or an equal one at a lower index.
#[cube]
fn before<F: Float, I: Int>(v: F, i: I, w: F, j: I) -> bool {
    v > w || (v == w && i < j)
}

/// `out[t, c] = sum_j values[t, j] weights[indices[t, j], c]`, one unit per `(t, c)`.
#[cube(launch)]
fn sparse_decode_kernel<F: Float, I: Int>(
    values: &Array<F>,
    indices: &Array<I>,
    weights: &Array<F>,
    out: &mut Array<F>,
    k: usize,
    m: usize,
) {
    if ABSOLUTE_POS >= out.len() {
        terminate!();
    }
    let token = ABSOLUTE_POS / m;
    let col = ABSOLUTE_POS % m;
    let mut sum = F::new(0.0);
    for j in 0..k {
        let slot = token * k + j;
        sum += values[slot] * weights[usize::cast_from(indices[slot]) * m + col];
    }
    out[ABSOLUTE_POS] = sum;
}

/// `out[t, j] = dense[t] . weights[indices[t, j]]`, one unit per slot `(t, j)`.
#[cube(launch)]
fn sparse_dot_kernel<F: Float, I: Int>(
    dense: &Array<F>,
    indices: &Array<I>,
    weights: &Array<F>,
    out: &mut Array<F>,
    k: usize,
    m: usize,
) {
    if ABSOLUTE_POS >= out.len() {
        terminate!();
    }
    let row = (ABSOLUTE_POS / k) * m;
    let latent = usize::cast_from(indices[ABSOLUTE_POS]) * m;
    let mut sum = F::new(0.0);
    for c in 0..m {
        sum += dense[row + c] * weights[latent + c];
    }
    out[ABSOLUTE_POS] = sum;
}

/// `out[l, c] = sum over latent l's slots s (in `order`) of coefs[s] dense[s / k, c]`, one
/// unit per `(l, c)`.
#[cube(launch)]
fn sparse_transpose_matmul_kernel<F: Float, I: Int>(
    coefs: &Array<F>,
    order: &Array<I>,
    offsets: &Array<I>,
    dense: &Array<F>,
    out: &mut Array<F>,
    k: usize,
    m: usize,
) {
    if ABSOLUTE_POS >= out.len() {
        terminate!();
    }
    let latent = ABSOLUTE_POS / m;
    let col = ABSOLUTE_POS % m;
    let first = usize::cast_from(offsets[latent]);
    let end = usize::cast_from(offsets[latent + 1]);
    let mut sum = F::new(0.0);
    for p in first..end {
        let slot = usize::cast_from(order[p]);
        sum += coefs[slot] * dense[(slot / k) * m + col];
    }
    out[ABSOLUTE_POS] = sum;
}

/// A kernel input: contiguous and of the element type the kernel was compiled for.
fn input<R: CubeRuntime>(tensor: CubeTensor<R>, dtype: DType) -> CubeTensor<R> {
    let tensor = if tensor.dtype == dtype {
        tensor
    } else {
        cast(tensor, dtype)
    };
    into_contiguous(tensor)
}

/// A tensor's `[rows, cols]`.
fn dims2<R: CubeRuntime>(tensor: &CubeTensor<R>) -> [usize; 2] {
    let shape = tensor.meta.shape();
    [shape[0], shape[1]]
}

/// An uninitialised contiguous output like `like`'s client and device.
fn output<R: CubeRuntime>(like: &CubeTensor<R>, shape: [usize; 2], dtype: DType) -> CubeTensor<R> {
    let (client, device) = (like.client.clone(), like.device.clone());
    empty_device_contiguous_dtype(client, device, shape.into(), dtype)
}

/// The launch grid for `units` units, one per element.
fn grid<R: CubeRuntime>(like: &CubeTensor<R>, units: usize) -> (CubeCount, CubeDim) {
    let dim = CubeDim::new(&like.client, units);
    (calculate_cube_count_elemwise(&like.client, units, dim), dim)
}

impl<R, F, I, BT> SaeBackend for CubeBackend<R, F, I, BT>
where
    R: CubeRuntime,
    F: FloatElement,
    I: IntElement,
    BT: BoolElement,
{
    const DEVICE_SELECT: bool = true;

    fn top_k_rows(values: FloatTensor<Self>, k: usize) -> IntTensor<Self> {
        let values = input(values, F::dtype());
        let [rows, cols] = dims2(&values);
        assert!(k <= cols, "top_k_rows: k = {k} exceeds the {cols} columns");
        if k == 0 || rows == 0 {
            return super::reference::top_k_rows::<Self>(values, k);
        }
        let entry = F::dtype().size() + I::dtype().size();
        let chunk = (TOP_K_SCRATCH_BYTES / (TOP_K_UNITS * k * entry)).clamp(1, rows);
        let lists = [chunk, TOP_K_UNITS * k];
        let (best, picked) = (
            output(&values, lists, F::dtype()),
            output(&values, lists, I::dtype()),
        );
        let merged = output(&values, [rows, k], F::dtype());
        let indices = output(&values, [rows, k], I::dtype());
        let dim = CubeDim::new_1d(TOP_K_UNITS as u32);
        for first_row in (0..rows).step_by(chunk) {
            let cubes = chunk.min(rows - first_row);
            let count = calculate_cube_count_elemwise(&values.client, cubes * TOP_K_UNITS, dim);
            top_k_rows_kernel::launch::<F, I, R>(
                &values.client,
                count,
                dim,
                values.clone().into_array_arg(),
                best.clone().into_array_arg(),
                picked.clone().into_array_arg(),
                merged.clone().into_array_arg(),
                indices.clone().into_array_arg(),
                first_row,
                first_row + cubes,
                cols,
                k,
                TOP_K_UNITS,
            );
        }
        indices
    }

    fn sparse_decode(
        values: FloatTensor<Self>,
        indices: IntTensor<Self>,
        weights: FloatTensor<Self>,
    ) -> FloatTensor<Self> {
        let (values, indices) = (input(values, F::dtype()), input(indices, I::dtype()));
        let weights = input(weights, F::dtype());
        let ([tokens, k], [_, m]) = (dims2(&values), dims2(&weights));
        let out = output(&values, [tokens, m], F::dtype());
        let (count, dim) = grid(&out, tokens * m);
        sparse_decode_kernel::launch::<F, I, R>(
            &out.client,
            count,
            dim,
            values.into_array_arg(),
            indices.into_array_arg(),
            weights.into_array_arg(),
            out.clone().into_array_arg(),
            k,
            m,
        );
        out
    }

    fn sparse_dot(
        dense: FloatTensor<Self>,
        indices: IntTensor<Self>,
        weights: FloatTensor<Self>,
    ) -> FloatTensor<Self> {
        let (dense, indices) = (input(dense, F::dtype()), input(indices, I::dtype()));
        let weights = input(weights, F::dtype());
        let ([tokens, k], [_, m]) = (dims2(&indices), dims2(&weights));
        let out = output(&dense, [tokens, k], F::dtype());
        let (count, dim) = grid(&out, tokens * k);
        sparse_dot_kernel::launch::<F, I, R>(
            &out.client,
            count,
            dim,
            dense.into_array_arg(),
            indices.into_array_arg(),
            weights.into_array_arg(),
            out.clone().into_array_arg(),
            k,
            m,
        );
        out
    }

    fn sparse_transpose_matmul(
        coefs: FloatTensor<Self>,
        _indices: IntTensor<Self>,
        order: IntTensor<Self>,
        offsets: IntTensor<Self>,
        dense: FloatTensor<Self>,
    ) -> FloatTensor<Self> {
        let (coefs, dense) = (input(coefs, F::dtype()), input(dense, F::dtype()));
        let (order, offsets) = (input(order, I::dtype()), input(offsets, I::dtype()));
        let ([_, k], [_, m]) = (dims2(&coefs), dims2(&dense));
        let latents = offsets.meta.shape()[0] - 1;
        let out = output(&dense, [latents, m], F::dtype());
        let (count, dim) = grid(&out, latents * m);
        sparse_transpose_matmul_kernel::launch::<F, I, R>(
            &out.client,
            count,
            dim,
            coefs.into_array_arg(),
            order.into_array_arg(),
            offsets.into_array_arg(),
            dense.into_array_arg(),
            out.clone().into_array_arg(),
            k,
            m,
        );
        out
    }
}
