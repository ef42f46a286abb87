//! Host-side latent selection on detached pre-activations: per-token top-k, batch top-k and
//! thresholds. Selection has no gradient; the selected activations are recomputed on the
//! differentiable path (see `sae.rs`), so only O(tokens x k x d) work is differentiated.

use std::cmp::Reverse;
use std::collections::BinaryHeap;

use rayon::prelude::*;

/// The latents kept for each of `rows` tokens: `width` slots per token, row-major.
///
/// Slots past a token's own count (batch top-k and thresholds give tokens different counts) are
/// padding: they point at latent 0 and are marked `false` in `valid`.
#[derive(Debug, Clone, PartialEq)]
pub struct Selection {
    /// Tokens.
    pub rows: usize,
    /// Slots per token.
    pub width: usize,
    /// Latent index of each slot, `[rows, width]`, each row sorted by activation, largest first.
    pub indices: Vec<i64>,
    /// `None` when every slot is used, otherwise which slots are real.
    pub valid: Option<Vec<bool>>,
}

/// Orders latents by value, largest first; ties go to the lower index (deterministic).
fn by_value_desc<I: Copy + Into<u64>>(row: &[f32]) -> impl Fn(&I, &I) -> std::cmp::Ordering + '_ {
    move |&a, &b| {
        let (a, b) = (a.into() as usize, b.into() as usize);
        row[b].total_cmp(&row[a]).then(a.cmp(&b))
    }
}

/// A key that orders (value, index) pairs like [`by_value_desc`] in reverse: a larger key is a
/// larger value, or an equal value at a lower index. `f32` bits are mapped so that integer
/// order is `total_cmp` order.
fn rank_key(value: f32, index: u32) -> u64 {
    let bits = value.to_bits();
    let ordered = if bits >> 31 == 1 {
        !bits
    } else {
        bits | (1 << 31)
    };
    (u64::from(ordered) << 32) | u64::from(u32::MAX - index)
}

/// The latent index packed in a [`rank_key`].
fn key_index(key: u64) -> i64 {
    i64::from(u32::MAX - key as u32)
}

/// Writes the `k` largest entries of `row` (among `candidates`, or all) to `out`, largest
/// first, with one pass over the row and a size-`k` min-heap (few pushes on typical data).
fn row_top_k(
    row: &[f32],
    candidates: Option<&[u32]>,
    out: &mut [i64],
    heap: &mut BinaryHeap<Reverse<u64>>,
) {
    let k = out.len();
    heap.clear();
    let offer = |heap: &mut BinaryHeap<Reverse<u64>>, i: u32| {
        let key = rank_key(row[i as usize], i);
        if heap.len() < k {
            heap.push(Reverse(key));
        } else if let Some(mut min) = heap.peek_mut()
            && key > min.0
        {
            *min = Reverse(key);
        }
    };
    match candidates {
        Some(list) => list.iter().for_each(|&i| offer(heap, i)),
        None => {
            // Once the heap is full, a block whose values are all below its smallest cannot
            // change it: one branch-free (vectorised) comparison per value skips it.
            const BLOCK: usize = 64;
            for (b, block) in row.chunks(BLOCK).enumerate() {
                let start = (b * BLOCK) as u32;
                if k > 0 && heap.len() == k {
                    let floor = row[key_index(heap.peek().expect("full").0) as usize];
                    if !block.iter().fold(false, |any, &v| any | (v >= floor)) {
                        continue;
                    }
                }
                (start..start + block.len() as u32).for_each(|i| offer(heap, i));
            }
        }
    }
    // Popping a min-heap yields ascending keys: fill from the back.
    for slot in out.iter_mut().rev() {
        *slot = key_index(heap.pop().expect("the heap holds k keys").0);
    }
}

/// The `k` largest latents of each row of `values` (`[rows, cols]`, row-major).
pub fn top_k(values: &[f32], cols: usize, k: usize) -> Selection {
    top_k_among(values, cols, k, None)
}

/// Like [`top_k`], restricted to the latents where `allowed` is true (AuxK's dead latents).
/// `k` must not exceed the number of allowed latents.
pub fn top_k_among(values: &[f32], cols: usize, k: usize, allowed: Option<&[bool]>) -> Selection {
    let rows = values.len() / cols;
    let candidates: Option<Vec<u32>> =
        allowed.map(|mask| (0..cols as u32).filter(|&i| mask[i as usize]).collect());
    let available = candidates.as_ref().map_or(cols, Vec::len);
    assert!(k <= available, "top_k_among: k exceeds the candidates");
    let mut indices = vec![0i64; rows * k];
    if k > 0 {
        indices
            .par_chunks_mut(k)
            .zip(values.par_chunks(cols))
            .for_each_init(
                || BinaryHeap::with_capacity(k + 1),
                |heap, (out, row)| row_top_k(row, candidates.as_deref(), out, heap),
            );
    }
    Selection {
        rows,
        width: k,
        indices,
        valid: None,
    }
}

/// [`top_k`] of rows that `prepare` first finishes in place (the encoder bias and ReLU), each
/// while it is in cache; `None` when `prepare` reports a row it cannot take (not finite).
pub fn top_k_prepared(
    values: &mut [f32],
    cols: usize,
    k: usize,
    prepare: impl Fn(&mut [f32]) -> bool + Sync,
) -> Option<Selection> {
    let rows = values.len() / cols;
    let mut indices = vec![0i64; rows * k];
    let all_ok = indices
        .par_chunks_mut(k.max(1))
        .zip(values.par_chunks_mut(cols))
        .map_init(
            || BinaryHeap::with_capacity(k + 1),
            |heap, (out, row)| {
                let ok = prepare(row);
                if k > 0 {
                    row_top_k(row, None, out, heap);
                }
                ok
            },
        )
        .reduce(|| true, |a, b| a && b);
    all_ok.then_some(Selection {
        rows,
        width: k,
        indices,
        valid: None,
    })
}

/// The `total` largest entries of the whole `[rows, cols]` matrix, grouped by row.
pub fn batch_top_k(values: &[f32], cols: usize, total: usize) -> Selection {
    let rows = values.len() / cols;
    let total = total.min(values.len());
    if total == 0 {
        return from_row_lists(vec![Vec::new(); rows], values, cols);
    }
    // Positions as u32 where they fit (half the memory of the usual case).
    let per_row = match u32::try_from(values.len()) {
        Ok(_) => largest_by_row::<u32>(values, cols, total),
        Err(_) => largest_by_row::<u64>(values, cols, total),
    };
    from_row_lists(per_row, values, cols)
}

/// The columns of the `total` largest entries of `[rows, cols]` `values`, per row; `I` holds a
/// flat position.
fn largest_by_row<I>(values: &[f32], cols: usize, total: usize) -> Vec<Vec<u32>>
where
    I: Copy + TryFrom<usize> + Into<u64>,
{
    let mut flat: Vec<I> = (0..values.len())
        .filter_map(|p| I::try_from(p).ok())
        .collect();
    flat.select_nth_unstable_by(total - 1, by_value_desc(values));
    flat.truncate(total);
    let mut per_row = vec![Vec::new(); values.len() / cols];
    for p in flat.into_iter().map(|p| p.into() as usize) {
        per_row[p / cols].push((p % cols) as u32);
    }
    per_row
}

/// [`batch_top_k`] from each row's `cap` largest entries only: `[rows, cap]` `values` and
/// their column `indices` out of `cols`, each row ordered as [`top_k`] orders it. The same
/// selection as [`batch_top_k`] on the whole matrix, or `None` where that cannot be told: a row
/// with all `cap` of its entries selected may have more (fewer than `cols`).
pub fn batch_top_k_of_candidates(
    values: &[f32],
    indices: &[i64],
    cap: usize,
    cols: usize,
    total: usize,
) -> Option<Selection> {
    if cap == 0 {
        return None;
    }
    let rows = values.len() / cap;
    let total = total.min(rows * cols);
    // Beyond u32 positions, the caller selects on the whole matrix instead.
    if total > values.len() || u32::try_from(values.len()).is_err() {
        return None;
    }
    // Global order: value, then the flat position `row * cols + col` (as `batch_top_k`).
    let mut flat: Vec<u32> = (0..values.len() as u32).collect();
    let flat_index = |p: u32| (p as usize / cap * cols) as i64 + indices[p as usize];
    let cmp = |&a: &u32, &b: &u32| {
        values[b as usize]
            .total_cmp(&values[a as usize])
            .then(flat_index(a).cmp(&flat_index(b)))
    };
    let mut counts = vec![0usize; rows];
    if total > 0 {
        flat.select_nth_unstable_by(total - 1, cmp);
        for &p in &flat[..total] {
            counts[p as usize / cap] += 1;
        }
    }
    if cap < cols && counts.contains(&cap) {
        return None;
    }
    // A row's selected entries lead its candidate list, which is already in order.
    let per_row: Vec<&[i64]> = (counts.iter().enumerate())
        .map(|(r, &count)| &indices[r * cap..r * cap + count])
        .collect();
    Some(pack(&per_row))
}

/// The latents of each row whose value is strictly above that latent's threshold.
pub fn above_threshold(values: &[f32], cols: usize, thresholds: &[f32]) -> Selection {
    let per_row: Vec<Vec<u32>> = values
        .par_chunks(cols)
        .map(|row| {
            (0..cols as u32)
                .filter(|&i| row[i as usize] > thresholds[i as usize])
                .collect()
        })
        .collect();
    from_row_lists(per_row, values, cols)
}

/// Packs per-row latent lists into a padded [`Selection`], each row sorted largest first.
fn from_row_lists(mut per_row: Vec<Vec<u32>>, values: &[f32], cols: usize) -> Selection {
    for (r, list) in per_row.iter_mut().enumerate() {
        list.sort_unstable_by(by_value_desc(&values[r * cols..(r + 1) * cols]));
    }
    pack(&per_row)
}

/// Packs per-row latent lists, each already in order, into a padded [`Selection`].
fn pack<T: Copy + Into<i64>, L: AsRef<[T]>>(per_row: &[L]) -> Selection {
    let rows = per_row.len();
    let width = per_row
        .iter()
        .map(|l| l.as_ref().len())
        .max()
        .unwrap_or(0)
        .max(1);
    let mut indices = vec![0i64; rows * width];
    let mut valid = vec![false; rows * width];
    for (r, list) in per_row.iter().enumerate() {
        for (slot, &i) in list.as_ref().iter().enumerate() {
            indices[r * width + slot] = i.into();
            valid[r * width + slot] = true;
        }
    }
    let valid = if valid.iter().all(|&v| v) {
        None
    } else {
        Some(valid)
    };
    Selection {
        rows,
        width,
        indices,
        valid,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Hand-derived: rows [3,1,2,5] and [0,4,4,-1].
    const V: [f32; 8] = [3.0, 1.0, 2.0, 5.0, 0.0, 4.0, 4.0, -1.0];

    #[test]
    fn top_k_picks_largest_sorted_with_low_index_on_ties() {
        let s = top_k(&V, 4, 2);
        assert_eq!(s.indices, vec![3, 0, 1, 2]);
        assert_eq!(s.valid, None);
    }

    #[test]
    fn top_k_among_respects_the_mask() {
        let s = top_k_among(&V, 4, 1, Some(&[true, true, false, false]));
        assert_eq!(s.indices, vec![0, 1]);
    }

    #[test]
    fn rank_keys_order_like_total_cmp_then_low_index() {
        let vals = [-f32::INFINITY, -2.5, -0.0, 0.0, 1e-30, 3.0, f32::INFINITY];
        for w in vals.windows(2) {
            assert!(rank_key(w[0], 0) < rank_key(w[1], 0), "{w:?}");
        }
        assert!(rank_key(1.0, 3) > rank_key(1.0, 4));
        assert_eq!(key_index(rank_key(-7.0, 12345)), 12345);
    }

    #[test]
    fn top_k_agrees_with_a_full_sort() {
        // Pseudo-random rows with repeated values (ties across the skipped blocks too),
        // checked against sorting every row.
        for cols in [97, 1000] {
            let values: Vec<f32> = (0..cols * 13)
                .map(|i| ((i * 7919 % 101) as f32 - 50.0) / 7.0)
                .collect();
            for k in [1, 5, 31, cols] {
                let s = top_k(&values, cols, k);
                for (r, row) in values.chunks(cols).enumerate() {
                    let mut order: Vec<u32> = (0..cols as u32).collect();
                    order.sort_by(by_value_desc(row));
                    let expected: Vec<i64> = order[..k].iter().map(|&i| i as i64).collect();
                    assert_eq!(
                        s.indices[r * k..(r + 1) * k],
                        expected[..],
                        "row {r}, k {k}, cols {cols}"
                    );
                }
            }
        }
    }

    // Finishing rows inside the selection gives the selection of the finished matrix; a row
    // the preparation refuses gives None.
    #[test]
    fn top_k_prepared_equals_top_k_after_preparing() {
        let cols = 300;
        let raw: Vec<f32> = (0..cols * 5)
            .map(|i| ((i * 7919 % 211) as f32 - 100.0) / 9.0)
            .collect();
        let shift = |row: &mut [f32]| {
            row.iter_mut().for_each(|v| *v = (*v + 1.5).max(0.0));
            true
        };
        let mut finished = raw.clone();
        finished.chunks_mut(cols).for_each(|row| {
            shift(row);
        });
        let mut prepared = raw.clone();
        let s = top_k_prepared(&mut prepared, cols, 7, shift).unwrap();
        assert_eq!(prepared, finished);
        assert_eq!(s, top_k(&finished, cols, 7));
        let mut bad = raw;
        assert!(
            top_k_prepared(&mut bad, cols, 7, |row| row[0] < 1000.0 && row[1] > -1.0).is_none()
        );
    }

    #[test]
    fn batch_top_k_pads_short_rows() {
        // The 3 largest of the matrix: 5 (row 0), 4 and 4 (row 1).
        let s = batch_top_k(&V, 4, 3);
        assert_eq!(s.width, 2);
        assert_eq!(s.indices, vec![3, 0, 1, 2]);
        assert_eq!(s.valid, Some(vec![true, false, true, true]));
    }

    #[test]
    fn wide_positions_select_as_narrow_ones() {
        // Matrices of 2^32 entries or more use u64 positions: the same selection.
        let values: Vec<f32> = (0..96).map(|i| ((i * 37 % 17) as f32) - 8.0).collect();
        for total in [1, 7, 30, 96] {
            assert_eq!(
                largest_by_row::<u64>(&values, 12, total),
                largest_by_row::<u32>(&values, 12, total)
            );
        }
    }

    #[test]
    fn batch_top_k_from_candidates_is_exact_or_declines() {
        // Each row's 2 largest cannot settle V's batch top 3: row 1 has both selected.
        let (values, indices) = ([5.0, 3.0, 4.0, 4.0], [3, 0, 1, 2]);
        assert_eq!(batch_top_k_of_candidates(&values, &indices, 2, 4, 3), None);
        assert_eq!(batch_top_k_of_candidates(&[], &[], 0, 4, 3), None);
        let three = top_k(&V, 4, 3);
        let values = gather_rows(&V, 4, &three.indices, 3);
        let got = batch_top_k_of_candidates(&values, &three.indices, 3, 4, 3);
        assert_eq!(got, Some(batch_top_k(&V, 4, 3)));

        // Pseudo-random rows with repeated values: every answer given equals the full one.
        let cols = 16;
        let big: Vec<f32> = (0..8 * cols)
            .map(|i| ((i * 29 % 13) as f32) * ((i % 5) as f32))
            .collect();
        let mut answered = 0;
        for cap in [2, 4, 8, 16] {
            for total in [0, 5, 16, 40] {
                let candidates = top_k(&big, cols, cap);
                let values = gather_rows(&big, cols, &candidates.indices, cap);
                if let Some(s) =
                    batch_top_k_of_candidates(&values, &candidates.indices, cap, cols, total)
                {
                    assert_eq!(
                        s,
                        batch_top_k(&big, cols, total),
                        "cap {cap}, total {total}"
                    );
                    answered += 1;
                }
            }
        }
        assert!(answered >= 8, "{answered}");
    }

    /// The values at each row's `width` column indices.
    fn gather_rows(values: &[f32], cols: usize, indices: &[i64], width: usize) -> Vec<f32> {
        let at = |slot: usize| values[slot / width * cols + indices[slot] as usize];
        (0..indices.len()).map(at).collect()
    }

    #[test]
    fn threshold_keeps_strictly_greater() {
        let s = above_threshold(&V, 4, &[3.0, 0.5, 2.0, 0.0]);
        // Row 0: 1 > 0.5, 5 > 0 (3 is not > 3, 2 is not > 2); row 1: 4 > 0.5, 4 > 2.
        assert_eq!(s.indices, vec![3, 1, 1, 2]);
        assert_eq!(s.valid, None);
    }
}
