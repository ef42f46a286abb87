//! Starting the ranks of a one-machine job the way the `deepspeed` launcher does: `sae train
//! --devices N` runs itself again under `mpirun -np N`. Jobs on several machines are started by
//! the user's own `mpirun -H a:8,b:8 ...` or Slurm's `srun`.

use std::ffi::OsString;
use std::os::unix::process::CommandExt;
use std::process::{Command, ExitStatus};
use std::time::Duration;

use signal_hook::consts::{SIGINT, SIGTERM, SIGUSR1};
use signal_hook::iterator::Signals;

use crate::interrupt::Signal;

/// The command that runs `program args` as `ranks` ranks on this machine: `mpirun` with
/// oversubscription allowed (more ranks than cores) and no binding to cores (each rank's
/// threads share the machine; `RAYON_NUM_THREADS` divides the cores among the ranks unless
/// it is set). As root, mpirun must be told that this is wanted.
pub fn mpirun(
    ranks: usize,
    program: OsString,
    args: impl IntoIterator<Item = OsString>,
) -> Command {
    let mut command = Command::new("mpirun");
    command.args([
        "-np",
        &ranks.to_string(),
        "--oversubscribe",
        "--bind-to",
        "none",
    ]);
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        command.arg("--allow-run-as-root");
    }
    if std::env::var_os("RAYON_NUM_THREADS").is_none() {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let per_rank = (cores / ranks).max(1).to_string();
        command.args(["-x", &format!("RAYON_NUM_THREADS={per_rank}")]);
    }
    command.arg(program).args(args);
    command
}

/// Whether this build carries the collectives over MPI (feature `mpi`).
pub const HAS_MPI: bool = cfg!(feature = "mpi");

/// How the ranks started by [`run`] ended.
#[derive(Debug, Clone, Copy)]
pub enum Ended {
    /// As `mpirun` exited.
    Exited(ExitStatus),
    /// Stopped politely after this signal to this process (each rank wrote its checkpoint).
    Stopped(Signal),
}

/// Runs `mpirun` (from [`mpirun`]) in a process group of its own and waits for it. SIGTERM or
/// SIGINT to this process (a scheduler's preemption, Ctrl-C) is passed to the ranks as
/// SIGUSR1, which mpirun forwards and which stops them after their step with a checkpoint (a
/// SIGTERM to mpirun would kill them); a second one ends them at once.
pub fn run(mut mpirun: Command) -> std::io::Result<Ended> {
    mpirun.process_group(0);
    let mut signals = Signals::new([SIGTERM, SIGINT])?;
    let mut child = mpirun.spawn()?;
    let pid = child.id() as libc::pid_t;
    let mut stopped = None;
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok(match stopped {
                Some(signal) => Ended::Stopped(Signal(signal)),
                None => Ended::Exited(status),
            });
        }
        for signal in signals.pending() {
            let forward = if stopped.is_none() { SIGUSR1 } else { SIGTERM };
            stopped.get_or_insert(signal);
            // SAFETY: kill has no memory-safety preconditions; `pid` is our child's.
            unsafe { libc::kill(pid, forward) };
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mpirun_runs_the_program_with_its_arguments_last() {
        let command = mpirun(
            4,
            "sae".into(),
            ["train".into(), "--devices".into(), "4".into()],
        );
        let args: Vec<String> = command
            .get_args()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        assert_eq!(command.get_program(), "mpirun");
        assert_eq!(args[..3], ["-np", "4", "--oversubscribe"]);
        assert_eq!(args[args.len() - 4..], ["sae", "train", "--devices", "4"]);
    }
}
