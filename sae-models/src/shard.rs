//! ZeRO-3's share of a frozen model's weights (Rajbhandari et al.; DeepSpeed's stage 3): each
//! rank keeps a slice of every weight matrix, a range of its rows (a view of the mapped
//! checkpoint when it is stored in the compute dtype, else converted out of it once). A
//! projection by a shared matrix runs slice by slice ([`crate::projection`]): each rank's slice
//! is broadcast in turn, multiplied and dropped. A rank then holds `1/N` of the model plus one
//! slice of the matrix that runs. A weight needed whole (a vision tower's, at load) is gathered
//! from every rank's slice. The token embedding is never gathered whole: each rank looks up,
//! for every rank's tokens, the rows it keeps, and the rows are summed to their rank.
//!
//! Every rank must run the same projections in the same order (each is a collective),
//! which the forward passes of a data-parallel job do.

use std::borrow::Cow;
use std::collections::HashMap;
use std::ops::Range;
use std::sync::{Arc, Mutex};

use burn::tensor::TensorData;
use sae_core::StorageDtype;
use sae_core::convert::float_data;

use crate::error::{ModelError, Result};

/// How the ranks of a job exchange slices: implemented over the training job's collective.
pub trait ShardExchange: Send + Sync {
    /// This process's rank, `0..ranks()`.
    fn rank(&self) -> usize;
    /// How many processes share the weights.
    fn ranks(&self) -> usize;
    /// Every rank's `send`, one after the other in rank order, into `recv` (`ranks()` times as
    /// long).
    fn all_gather_bytes(&self, send: &[u8], recv: &mut [u8]) -> std::result::Result<(), String>;
    /// Rank `root`'s `buf` to every rank.
    fn broadcast_bytes(&self, buf: &mut [u8], root: usize) -> std::result::Result<(), String>;
    /// Sums `send` over the ranks and keeps this rank's part: `recv` (of `send.len() / ranks()`
    /// elements) is part `rank()` of the sum.
    fn reduce_scatter(&self, send: &[f32], recv: &mut [f32]) -> std::result::Result<(), String>;
}

/// The ranks a model's weights are shared between, as a load asks for it
/// ([`crate::LoadScope::sharded`]).
#[derive(Clone)]
pub struct Shards(Arc<dyn ShardExchange>);

impl Shards {
    /// Weights shared by the ranks of `exchange`.
    pub fn new(exchange: Arc<dyn ShardExchange>) -> Self {
        Shards(exchange)
    }

    /// This process's rank and the number of ranks.
    pub fn ranks(&self) -> (usize, usize) {
        (self.0.rank(), self.0.ranks())
    }
}

impl std::fmt::Debug for Shards {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (rank, ranks) = self.ranks();
        write!(f, "Shards(rank {rank} of {ranks})")
    }
}

impl PartialEq for Shards {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

impl Eq for Shards {}

/// Whether a weight of `shape` is split across the ranks: every matrix is; vectors (norms,
/// biases) are small and kept whole by every rank.
pub fn is_split(shape: &[usize]) -> bool {
    shape.len() >= 2
}

/// The rows of `rows` that rank `rank` of `ranks` keeps, and the rows per rank (the last
/// ranks' slices are padded to it in the exchanges).
pub fn rows_of(rank: usize, ranks: usize, rows: usize) -> (Range<usize>, usize) {
    let per = rows.div_ceil(ranks);
    ((rank * per).min(rows)..((rank + 1) * per).min(rows), per)
}

/// This rank's slices of a model's split weights, read from the checkpoint the first time
/// each is asked for.
pub(crate) struct Slices {
    shards: Shards,
    kept: Mutex<HashMap<String, Arc<TensorData>>>,
}

impl Slices {
    pub(crate) fn new(shards: Shards) -> Self {
        Slices {
            shards,
            kept: Mutex::new(HashMap::new()),
        }
    }

    /// Reads this rank's slice of weight `name` of `shape` now (at load: a missing weight or a
    /// wrong shape is found before any pass), without any exchange.
    pub(crate) fn keep(
        &self,
        name: &str,
        shape: &[usize],
        read: impl FnOnce(Range<usize>) -> Result<TensorData>,
    ) -> Result<()> {
        let (rank, ranks) = self.shards.ranks();
        self.slice(name, rows_of(rank, ranks, shape[0]).0, read)?;
        Ok(())
    }

    /// This rank's slice of weight `name`, from `read` (its rows, in the compute dtype) the
    /// first time.
    fn slice(
        &self,
        name: &str,
        rows: Range<usize>,
        read: impl FnOnce(Range<usize>) -> Result<TensorData>,
    ) -> Result<Arc<TensorData>> {
        let mut kept = self.kept.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(slice) = kept.get(name) {
            return Ok(Arc::clone(slice));
        }
        let slice = Arc::new(read(rows)?);
        kept.insert(name.to_string(), Arc::clone(&slice));
        Ok(slice)
    }

    /// The whole weight `name` of `shape`, in `dtype`, gathered from every rank's slice.
    pub(crate) fn gather(
        &self,
        name: &str,
        shape: &[usize],
        dtype: StorageDtype,
        read: impl FnOnce(Range<usize>) -> Result<TensorData>,
    ) -> Result<TensorData> {
        let (rank, ranks) = self.shards.ranks();
        let (mine, per) = rows_of(rank, ranks, shape[0]);
        let row_bytes = shape[1..].iter().product::<usize>() * dtype.size();
        let slice = self.slice(name, mine, read)?;
        // Only the last ranks' slices need padding: the others are sent as they are.
        let mut send = Cow::Borrowed(slice.as_bytes());
        if send.len() != per * row_bytes {
            send.to_mut().resize(per * row_bytes, 0);
        }
        let mut whole = vec![0u8; ranks * per * row_bytes];
        (self.shards.0)
            .all_gather_bytes(&send, &mut whole)
            .map_err(ModelError::Shards)?;
        whole.truncate(shape[0] * row_bytes);
        Ok(TensorData::from_bytes_vec(
            whole,
            shape.to_vec(),
            dtype.into(),
        ))
    }

    /// Every rank's slice of weight `name` of `shape`, in `dtype`, one after the other in rank
    /// order, each handed to `each` and dropped before the next is exchanged: a projection by
    /// a shared matrix runs slice by slice, so a rank holds one slice of it at a time.
    pub(crate) fn each_slice(
        &self,
        name: &str,
        shape: &[usize],
        dtype: StorageDtype,
        read: impl FnOnce(Range<usize>) -> Result<TensorData>,
        mut each: impl FnMut(TensorData),
    ) -> Result<()> {
        let (rank, ranks) = self.shards.ranks();
        let row_bytes = shape[1..].iter().product::<usize>() * dtype.size();
        let slice = self.slice(name, rows_of(rank, ranks, shape[0]).0, read)?;
        for root in 0..ranks {
            let rows = rows_of(root, ranks, shape[0]).0;
            if rows.is_empty() {
                continue;
            }
            let mut bytes = match root == rank {
                true => slice.as_bytes().to_vec(),
                false => vec![0u8; rows.len() * row_bytes],
            };
            (self.shards.0)
                .broadcast_bytes(&mut bytes, root)
                .map_err(ModelError::Shards)?;
            let mut part = shape.to_vec();
            part[0] = rows.len();
            each(TensorData::from_bytes_vec(bytes, part, dtype.into()));
        }
        Ok(())
    }

    /// Rows `ids` of the `[n, d]` weight `name` (a token embedding), in `dtype`: every rank
    /// asks for its own ids, and gets their rows, `[ids.len(), d]`. Each rank looks up the ids
    /// of every rank in the rows it keeps (a row lies in exactly one slice), and the rows are
    /// summed to the ranks that asked for them; an id outside the table gets a row of zeros.
    pub(crate) fn rows(
        &self,
        name: &str,
        [n, d]: [usize; 2],
        ids: &[i64],
        dtype: StorageDtype,
        read: impl FnOnce(Range<usize>) -> Result<TensorData>,
    ) -> Result<TensorData> {
        let (rank, ranks) = self.shards.ranks();
        let exchange = &self.shards.0;
        let fail = ModelError::Shards;
        // Every rank's ids, each padded to the most any rank asks for.
        let mut counts = vec![0u8; ranks * 8];
        exchange
            .all_gather_bytes(&(ids.len() as u64).to_le_bytes(), &mut counts)
            .map_err(fail)?;
        let counts: Vec<usize> = counts
            .chunks_exact(8)
            .map(|c| u64::from_le_bytes(c.try_into().expect("8 bytes")) as usize)
            .collect();
        let most = counts.iter().copied().max().unwrap_or(0);
        let mut padded = ids.to_vec();
        padded.resize(most, -1);
        let mut all = vec![0u8; ranks * most * 8];
        exchange
            .all_gather_bytes(bytemuck::cast_slice(&padded), &mut all)
            .map_err(fail)?;
        // This rank's rows of every id, in f32 (widening and narrowing back are exact, and
        // every other rank adds zeros).
        let (mine, _) = rows_of(rank, ranks, n);
        let slice = self.slice(name, mine.clone(), read)?;
        let (bytes, row_bytes) = (slice.as_bytes(), d * dtype.size());
        let mut send = vec![0f32; ranks * most * d];
        for (k, id) in all.chunks_exact(8).enumerate() {
            let id = i64::from_le_bytes(id.try_into().expect("8 bytes"));
            if let Ok(id) = usize::try_from(id)
                && mine.contains(&id)
            {
                let at = (id - mine.start) * row_bytes;
                let row = float_data(&bytes[at..at + row_bytes], dtype, &[d], StorageDtype::F32);
                send[k * d..(k + 1) * d].copy_from_slice(bytemuck::cast_slice(row.as_bytes()));
            }
        }
        let mut recv = vec![0f32; most * d];
        exchange.reduce_scatter(&send, &mut recv).map_err(fail)?;
        recv.truncate(ids.len() * d);
        Ok(TensorData::new(recv, [ids.len(), d]).convert_dtype(dtype.into()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_row_lies_in_one_slice() {
        for (rows, ranks) in [(10, 3), (2, 4), (8, 2), (7, 1)] {
            let mut seen = Vec::new();
            for rank in 0..ranks {
                let (mine, per) = rows_of(rank, ranks, rows);
                assert!(mine.len() <= per);
                seen.extend(mine);
            }
            assert_eq!(
                seen,
                (0..rows).collect::<Vec<_>>(),
                "{rows} rows, {ranks} ranks"
            );
        }
    }
}
