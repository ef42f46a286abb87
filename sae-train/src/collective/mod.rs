//! The communication between the processes of a data-parallel run, one process (rank) per
//! device: the few collectives that DDP and ZeRO need, behind one interface with an
//! implementation per engine. [`Single`] is the one-process run (every collective is the
//! identity); [`Mpi`] (feature `mpi`) carries them over MPI, which also starts the processes
//! (`mpirun`, Slurm's `srun`). The trainer is written once against [`Collective`], so a run on
//! one CPU and a run on many GPU nodes take the same steps.
//!
//! Every collective is a sum where it reduces, and every rank must call the same collectives in
//! the same order with the same lengths.

pub mod launch;
mod model_shards;
#[cfg(feature = "mpi")]
mod mpi;
mod watchdog;

use std::rc::Rc;

pub use self::model_shards::model_shards;
#[cfg(feature = "mpi")]
pub use self::mpi::Mpi;
pub use self::watchdog::Watchdog;
use crate::error::Result;

/// The collectives of a data-parallel run.
pub trait Collective: std::fmt::Debug {
    /// This process's rank, `0..ranks()`.
    fn rank(&self) -> usize;
    /// How many processes take part.
    fn ranks(&self) -> usize;
    /// Replaces `buf` with its sum over the ranks.
    fn all_reduce(&self, buf: &mut [f32]) -> Result<()>;
    /// Replaces `buf` with its sum over the ranks, in f64 (metrics, statistics).
    fn all_reduce_f64(&self, buf: &mut [f64]) -> Result<()>;
    /// Sums `send` over the ranks and keeps this rank's part: `recv` (of `send.len() /
    /// ranks()` elements) is part `rank()` of the sum.
    fn reduce_scatter(&self, send: &[f32], recv: &mut [f32]) -> Result<()>;
    /// Every rank's `send`, one after the other in rank order, into `recv` (`ranks()` times
    /// as long).
    fn all_gather(&self, send: &[f32], recv: &mut [f32]) -> Result<()>;
    /// The same for bytes (the frozen model's weight slices under ZeRO-3, in whatever dtype
    /// it computes in).
    fn all_gather_bytes(&self, send: &[u8], recv: &mut [u8]) -> Result<()>;
    /// Every rank's `send`, one after the other in rank order, into `recv` on rank `root`
    /// (`ranks()` times as long there; empty and untouched on the other ranks).
    fn gather(&self, send: &[f32], recv: &mut [f32], root: usize) -> Result<()>;
    /// `root`'s `buf` to every rank (bytes: parameters, or the frozen model's weight slices
    /// under ZeRO-3).
    fn broadcast(&self, buf: &mut [u8], root: usize) -> Result<()>;
    /// Returns when every rank has called it.
    fn barrier(&self) -> Result<()>;
    /// Seconds spent in collectives so far: communication and waiting for the other ranks.
    fn seconds(&self) -> f64;
}

/// The one-process run: every collective leaves its data as it is.
#[derive(Debug, Default, Clone, Copy)]
pub struct Single;

impl Single {
    /// A shared handle, as the trainer holds one.
    pub fn shared() -> Rc<dyn Collective> {
        Rc::new(Single)
    }
}

impl Collective for Single {
    fn rank(&self) -> usize {
        0
    }

    fn ranks(&self) -> usize {
        1
    }

    fn all_reduce(&self, _buf: &mut [f32]) -> Result<()> {
        Ok(())
    }

    fn all_reduce_f64(&self, _buf: &mut [f64]) -> Result<()> {
        Ok(())
    }

    fn reduce_scatter(&self, send: &[f32], recv: &mut [f32]) -> Result<()> {
        recv.copy_from_slice(send);
        Ok(())
    }

    fn all_gather(&self, send: &[f32], recv: &mut [f32]) -> Result<()> {
        recv.copy_from_slice(send);
        Ok(())
    }

    fn all_gather_bytes(&self, send: &[u8], recv: &mut [u8]) -> Result<()> {
        recv.copy_from_slice(send);
        Ok(())
    }

    fn gather(&self, send: &[f32], recv: &mut [f32], _root: usize) -> Result<()> {
        recv.copy_from_slice(send);
        Ok(())
    }

    fn broadcast(&self, _buf: &mut [u8], _root: usize) -> Result<()> {
        Ok(())
    }

    fn barrier(&self) -> Result<()> {
        Ok(())
    }

    fn seconds(&self) -> f64 {
        0.0
    }
}

/// Every rank's `value`, in rank order (each rank's number in its slot, summed).
pub fn per_rank(collective: &dyn Collective, value: f64) -> Result<Vec<f64>> {
    let mut all = vec![0.0; collective.ranks()];
    all[collective.rank()] = value;
    collective.all_reduce_f64(&mut all)?;
    Ok(all)
}

/// Every rank's rows of width `d` (their counts may differ), in rank order: the first batch,
/// from which the decoder bias and the activation scale are set.
pub fn gather_rows(collective: &dyn Collective, rows: &[f32], d: usize) -> Result<Vec<f32>> {
    let ranks = collective.ranks();
    if ranks == 1 {
        return Ok(rows.to_vec());
    }
    let counts = per_rank(collective, (rows.len() / d) as f64)?;
    let most = counts.iter().fold(0f64, |a, &b| a.max(b)) as usize;
    let mut padded = rows.to_vec();
    padded.resize(most * d, 0.0);
    let mut all = vec![0f32; ranks * most * d];
    collective.all_gather(&padded, &mut all)?;
    Ok(all
        .chunks_exact(most * d)
        .zip(&counts)
        .flat_map(|(part, &n)| &part[..n as usize * d])
        .copied()
        .collect())
}

/// The ranks of a job started by a launcher (`mpirun`, `srun`), read from its environment:
/// `Some((rank, ranks))`, or `None` outside one.
pub fn launched_ranks() -> Option<(usize, usize)> {
    let var = |names: &[&str]| {
        names
            .iter()
            .find_map(|name| std::env::var(name).ok()?.parse::<usize>().ok())
    };
    let ranks = var(&[
        "OMPI_COMM_WORLD_SIZE",
        "PMI_SIZE",
        "PMIX_SIZE",
        "SLURM_NTASKS",
    ])?;
    let rank = var(&[
        "OMPI_COMM_WORLD_RANK",
        "PMI_RANK",
        "PMIX_RANK",
        "SLURM_PROCID",
    ])?;
    Some((rank, ranks))
}

/// This process's rank among those on its machine (which GPU it drives), from the launcher's
/// environment; 0 outside one.
pub fn local_rank() -> usize {
    [
        "OMPI_COMM_WORLD_LOCAL_RANK",
        "MPI_LOCALRANKID",
        "SLURM_LOCALID",
        "LOCAL_RANK",
    ]
    .iter()
    .find_map(|name| std::env::var(name).ok()?.parse().ok())
    .unwrap_or(0)
}

/// The collective of this process: over MPI when a launcher started more than one rank, else
/// [`Single`]. Each collective waits at most `timeout_s` for the other ranks.
pub fn from_environment(timeout_s: f64) -> Result<Rc<dyn Collective>> {
    match launched_ranks() {
        Some((_, ranks)) if ranks > 1 => connect(timeout_s),
        _ => Ok(Single::shared()),
    }
}

#[cfg(feature = "mpi")]
fn connect(timeout_s: f64) -> Result<Rc<dyn Collective>> {
    Ok(Rc::new(Mpi::init(timeout_s)?))
}

#[cfg(not(feature = "mpi"))]
fn connect(_timeout_s: f64) -> Result<Rc<dyn Collective>> {
    Err(crate::error::TrainError::Unsupported(without_mpi()))
}

/// What to do when this build cannot train on several devices.
pub fn without_mpi() -> String {
    "training on several devices needs a build with the `mpi` feature: install OpenMPI (Debian: apt-get install openmpi-bin libopenmpi-dev libclang-dev) and build with --features mpi".into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_rank_gathers_its_own_rows() {
        let rows = [1.0, 2.0, 3.0, 4.0];
        assert_eq!(gather_rows(&Single, &rows, 2).unwrap(), rows);
        let mut part = [0.0; 2];
        Single.reduce_scatter(&rows[..2], &mut part).unwrap();
        assert_eq!(part, [1.0, 2.0]);
    }
}
