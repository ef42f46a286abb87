//! The collectives over MPI (feature `mpi`): OpenMPI, MPICH or any MPI 3 library, in processes
//! started by `mpirun` or `srun`. MPI's own errors end the job (its default handler).

use std::cell::Cell;
use std::time::Instant;

use mpi::collective::SystemOperation;
use mpi::environment::Universe;
use mpi::topology::SimpleCommunicator;
use mpi::traits::{Communicator, CommunicatorCollectives, Root};

use super::{Collective, Watchdog};
use crate::error::{Result, TrainError};

/// The most bytes one rank sends in one collective (MPI counts are 32-bit).
const MAX_MESSAGE: usize = 1 << 30;

/// The MPI world of this job.
pub struct Mpi {
    world: SimpleCommunicator,
    watchdog: Watchdog,
    /// Seconds spent in collectives so far.
    seconds: Cell<f64>,
    /// Ends MPI when dropped; kept last so that the world is dropped first.
    _universe: Universe,
}

impl std::fmt::Debug for Mpi {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Mpi(rank {} of {})", self.rank(), self.ranks())
    }
}

impl Mpi {
    /// Joins the job's MPI world; each collective waits at most `timeout_s` for the others.
    pub fn init(timeout_s: f64) -> Result<Self> {
        let (universe, _) = mpi::initialize_with_threading(mpi::Threading::Funneled)
            .ok_or_else(|| TrainError::Unsupported("MPI was already started".into()))?;
        let world = universe.world();
        let watchdog = Watchdog::start(world.rank() as usize, timeout_s);
        Ok(Mpi {
            world,
            watchdog,
            seconds: Cell::new(0.0),
            _universe: universe,
        })
    }

    /// Runs the collective `what`, watched and timed.
    fn run(&self, what: &'static str, collective: impl FnOnce()) -> Result<()> {
        let start = Instant::now();
        let _armed = self.watchdog.arm(what);
        collective();
        self.seconds
            .set(self.seconds.get() + start.elapsed().as_secs_f64());
        Ok(())
    }

    fn check_parts(&self, whole: usize, part: usize, what: &str) -> Result<()> {
        if whole != part * self.ranks() {
            return Err(TrainError::Invalid(format!(
                "{what}: {whole} elements are not {} parts of {part}",
                self.ranks()
            )));
        }
        Ok(())
    }
}

impl Collective for Mpi {
    fn rank(&self) -> usize {
        self.world.rank() as usize
    }

    fn ranks(&self) -> usize {
        self.world.size() as usize
    }

    fn all_reduce(&self, buf: &mut [f32]) -> Result<()> {
        let send = buf.to_vec();
        self.run("an all-reduce", || {
            (self.world).all_reduce_into(&send[..], buf, SystemOperation::sum())
        })
    }

    fn all_reduce_f64(&self, buf: &mut [f64]) -> Result<()> {
        let send = buf.to_vec();
        self.run("an all-reduce", || {
            (self.world).all_reduce_into(&send[..], buf, SystemOperation::sum())
        })
    }

    fn reduce_scatter(&self, send: &[f32], recv: &mut [f32]) -> Result<()> {
        self.check_parts(send.len(), recv.len(), "reduce-scatter")?;
        self.run("a reduce-scatter", || {
            (self.world).reduce_scatter_block_into(send, recv, SystemOperation::sum())
        })
    }

    fn all_gather(&self, send: &[f32], recv: &mut [f32]) -> Result<()> {
        self.check_parts(recv.len(), send.len(), "all-gather")?;
        self.run("an all-gather", || self.world.all_gather_into(send, recv))
    }

    fn all_gather_bytes(&self, send: &[u8], recv: &mut [u8]) -> Result<()> {
        self.check_parts(recv.len(), send.len(), "all-gather")?;
        if send.len() <= MAX_MESSAGE {
            return self.run("an all-gather", || self.world.all_gather_into(send, recv));
        }
        // MPI counts are 32-bit: a larger slice goes in pieces, each gathered and put in place.
        let ranks = self.ranks();
        for start in (0..send.len()).step_by(MAX_MESSAGE) {
            let piece = &send[start..(start + MAX_MESSAGE).min(send.len())];
            let mut gathered = vec![0u8; ranks * piece.len()];
            self.run("an all-gather", || {
                self.world.all_gather_into(piece, &mut gathered[..])
            })?;
            for (rank, part) in gathered.chunks_exact(piece.len()).enumerate() {
                let at = rank * send.len() + start;
                recv[at..at + piece.len()].copy_from_slice(part);
            }
        }
        Ok(())
    }

    fn gather(&self, send: &[f32], recv: &mut [f32], root: usize) -> Result<()> {
        let at = self.world.process_at_rank(root as i32);
        if self.rank() == root {
            self.check_parts(recv.len(), send.len(), "gather")?;
            self.run("a gather", || at.gather_into_root(send, recv))
        } else {
            self.run("a gather", || at.gather_into(send))
        }
    }

    fn broadcast(&self, buf: &mut [u8], root: usize) -> Result<()> {
        // MPI counts are 32-bit: a larger buffer goes in pieces.
        let at = self.world.process_at_rank(root as i32);
        for piece in buf.chunks_mut(MAX_MESSAGE) {
            self.run("a broadcast", || at.broadcast_into(piece))?;
        }
        Ok(())
    }

    fn barrier(&self) -> Result<()> {
        self.run("a barrier", || self.world.barrier())
    }

    fn seconds(&self) -> f64 {
        self.seconds.get()
    }
}
