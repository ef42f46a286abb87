//! A limit on how long a collective may wait for the other ranks. A rank that died is noticed
//! by the launcher, which stops the job; a rank that hangs (stopped, deadlocked, a GPU that no
//! longer answers) would keep every other rank waiting in its collective for ever. The
//! watchdog's thread ends this process when a collective outlasts the limit; the launcher then
//! stops the others.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Watches the collectives of one process.
#[derive(Debug)]
pub struct Watchdog {
    armed: Arc<Mutex<Option<(Instant, &'static str)>>>,
}

/// A collective in progress; dropping it disarms the watchdog.
#[derive(Debug)]
pub struct Armed<'a>(&'a Watchdog);

impl Watchdog {
    /// A watchdog that ends the process (exit status 3) when a collective of rank `rank`
    /// waits longer than `timeout_s`, after saying which and for how long.
    pub fn start(rank: usize, timeout_s: f64) -> Self {
        let timeout = Duration::from_secs_f64(timeout_s.max(0.001));
        let armed: Arc<Mutex<Option<(Instant, &'static str)>>> = Arc::default();
        let watched = Arc::clone(&armed);
        let tick = (timeout / 4).min(Duration::from_millis(500));
        std::thread::Builder::new()
            .name("collective-watchdog".into())
            .spawn(move || {
                loop {
                    std::thread::sleep(tick);
                    let started = *watched.lock().unwrap_or_else(|e| e.into_inner());
                    if let Some((since, what)) = started
                        && since.elapsed() > timeout
                    {
                        eprintln!(
                            "error: rank {rank}: {what} waited more than {:.0} s for the other ranks (parallel.timeout_s): one of them died or hangs; stopping this rank so that the job ends",
                            timeout.as_secs_f64()
                        );
                        // Not `exit`: the MPI library's exit handlers could wait on the
                        // collective that hangs.
                        // SAFETY: _exit ends the process at once and touches no Rust state.
                        unsafe { libc::_exit(3) };
                    }
                }
            })
            .expect("a thread can be started");
        Watchdog { armed }
    }

    /// Starts the clock for the collective `what`.
    pub fn arm(&self, what: &'static str) -> Armed<'_> {
        *self.armed.lock().unwrap_or_else(|e| e.into_inner()) = Some((Instant::now(), what));
        Armed(self)
    }
}

impl Drop for Armed<'_> {
    fn drop(&mut self) {
        *self.0.armed.lock().unwrap_or_else(|e| e.into_inner()) = None;
    }
}
