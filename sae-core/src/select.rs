//! Host-side latent selection on detached pre-activations: per-token top-k, batch top-k and
//! thresholds. Selection has no gradient; the selected activations are recomputed on the
//! differentiable path (see `sae.rs`), so only O(tokens x k x d) work is differentiated.

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
fn by_value_desc(row: &[f32]) -> impl Fn(&u32, &u32) -> std::cmp::Ordering + '_ {
    move |&a, &b| row[b as usize].total_cmp(&row[a as usize]).then(a.cmp(&b))
}

/// The `k` largest entries of one row among `candidates`, largest first.
fn row_top_k<'a>(row: &[f32], candidates: &'a mut Vec<u32>, k: usize) -> &'a [u32] {
    let cmp = by_value_desc(row);
    if k < candidates.len() {
        candidates.select_nth_unstable_by(k - 1, &cmp);
    }
    candidates.truncate(k);
    candidates.sort_unstable_by(&cmp);
    candidates
}

/// The `k` largest latents of each row of `values` (`[rows, cols]`, row-major).
pub fn top_k(values: &[f32], cols: usize, k: usize) -> Selection {
    top_k_among(values, cols, k, None)
}

/// Like [`top_k`], restricted to the latents where `allowed` is true (AuxK's dead latents).
/// `k` must not exceed the number of allowed latents.
pub fn top_k_among(values: &[f32], cols: usize, k: usize, allowed: Option<&[bool]>) -> Selection {
    let rows = values.len() / cols;
    let base: Vec<u32> = match allowed {
        Some(mask) => (0..cols as u32).filter(|&i| mask[i as usize]).collect(),
        None => (0..cols as u32).collect(),
    };
    assert!(k <= base.len(), "top_k_among: k exceeds the candidates");
    let mut indices = vec![0i64; rows * k];
    indices
        .par_chunks_mut(k.max(1))
        .zip(values.par_chunks(cols))
        .for_each_init(
            || base.clone(),
            |candidates, (out, row)| {
                candidates.clear();
                candidates.extend_from_slice(&base);
                for (o, &i) in out.iter_mut().zip(row_top_k(row, candidates, k)) {
                    *o = i as i64;
                }
            },
        );
    Selection {
        rows,
        width: k,
        indices,
        valid: None,
    }
}

/// The `total` largest entries of the whole `[rows, cols]` matrix, grouped by row.
pub fn batch_top_k(values: &[f32], cols: usize, total: usize) -> Selection {
    let rows = values.len() / cols;
    let total = total.min(values.len());
    if total == 0 {
        return from_row_lists(rows, vec![Vec::new(); rows], values, cols);
    }
    let mut flat: Vec<u32> = (0..values.len() as u32).collect();
    let cmp = by_value_desc(values);
    flat.select_nth_unstable_by(total - 1, &cmp);
    flat.truncate(total);
    let mut per_row = vec![Vec::new(); rows];
    for i in flat {
        per_row[i as usize / cols].push(i % cols as u32);
    }
    from_row_lists(rows, per_row, values, cols)
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
    from_row_lists(per_row.len(), per_row, values, cols)
}

/// Packs per-row latent lists into a padded [`Selection`], each row sorted largest first.
fn from_row_lists(
    rows: usize,
    mut per_row: Vec<Vec<u32>>,
    values: &[f32],
    cols: usize,
) -> Selection {
    let width = per_row.iter().map(Vec::len).max().unwrap_or(0).max(1);
    let mut indices = vec![0i64; rows * width];
    let mut valid = vec![false; rows * width];
    for (r, list) in per_row.iter_mut().enumerate() {
        list.sort_unstable_by(by_value_desc(&values[r * cols..(r + 1) * cols]));
        for (slot, &i) in list.iter().enumerate() {
            indices[r * width + slot] = i as i64;
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
    fn batch_top_k_pads_short_rows() {
        // The 3 largest of the matrix: 5 (row 0), 4 and 4 (row 1).
        let s = batch_top_k(&V, 4, 3);
        assert_eq!(s.width, 2);
        assert_eq!(s.indices, vec![3, 0, 1, 2]);
        assert_eq!(s.valid, Some(vec![true, false, true, true]));
    }

    #[test]
    fn threshold_keeps_strictly_greater() {
        let s = above_threshold(&V, 4, &[3.0, 0.5, 2.0, 0.0]);
        // Row 0: 1 > 0.5, 5 > 0 (3 is not > 3, 2 is not > 2); row 1: 4 > 0.5, 4 > 2.
        assert_eq!(s.indices, vec![3, 1, 1, 2]);
        assert_eq!(s.valid, None);
    }
}
