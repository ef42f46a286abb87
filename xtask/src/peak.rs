//! Peak resident memory of a benchmark case: Linux's high-water mark (`VmHWM`), reset before
//! each case through `/proc/self/clear_refs`, so cases run in one process are told apart.

/// Starts a new high-water mark.
pub fn reset() {
    // Not fatal where /proc is missing or read-only: `mib` then reports the process's peak.
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

/// The peak resident memory since [`reset`], in MiB (`None` off Linux).
pub fn mib() -> Option<f64> {
    sae_core::memory::peak_resident_mib()
}

/// Prints `<case>-peak-mib ours=<MiB> [ref=<MiB>]`.
pub fn report(case: &str, reference: Option<f64>) {
    let Some(ours) = mib() else { return };
    match reference {
        Some(r) => println!("{case}-peak-mib ours={ours:.0} ref={r:.0}"),
        None => println!("{case}-peak-mib ours={ours:.0}"),
    }
}
