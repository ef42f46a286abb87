//! Polite stops: SIGTERM and SIGINT (what Slurm and Kubernetes send before preemption, and
//! Ctrl-C) ask a run to finish its current step, write a checkpoint and return; a second
//! signal ends the process at once. SIGUSR1 asks the same: it is what `mpirun` forwards to the
//! ranks of a job (it kills them on SIGTERM). Only a process that calls [`install`] listens.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};

use signal_hook::consts::{SIGINT, SIGTERM, SIGUSR1};

/// The signal asked for (0: none), and whether one was.
static REQUESTED: OnceLock<(Arc<AtomicUsize>, Arc<AtomicBool>)> = OnceLock::new();

/// Makes SIGTERM, SIGINT and SIGUSR1 request a stop (see [`requested`]) instead of killing the process;
/// once one has, the next ends the process with exit status 1. Call it once, early.
pub fn install() -> std::io::Result<()> {
    if REQUESTED.get().is_some() {
        return Ok(());
    }
    let signal = Arc::new(AtomicUsize::new(0));
    let seen = Arc::new(AtomicBool::new(false));
    for sig in [SIGTERM, SIGINT, SIGUSR1] {
        // Registered first, so that it sees the flag before this signal sets it.
        signal_hook::flag::register_conditional_shutdown(sig, 1, seen.clone())?;
        signal_hook::flag::register(sig, seen.clone())?;
        signal_hook::flag::register_usize(sig, signal.clone(), sig as usize)?;
    }
    let _ = REQUESTED.set((signal, seen));
    Ok(())
}

/// The signal that asked the run to stop, if one has.
pub fn requested() -> Option<Signal> {
    let (signal, _) = REQUESTED.get()?;
    match signal.load(Ordering::SeqCst) {
        0 => None,
        n => Some(Signal(n as i32)),
    }
}

/// A stop signal received.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Signal(pub i32);

impl Signal {
    /// The exit status a shell gives a process this signal ended: 128 + its number.
    pub fn exit_code(self) -> i32 {
        128 + self.0
    }
}

impl std::fmt::Display for Signal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            SIGTERM => f.write_str("SIGTERM"),
            SIGINT => f.write_str("SIGINT"),
            SIGUSR1 => f.write_str("SIGUSR1"),
            n => write!(f, "signal {n}"),
        }
    }
}
