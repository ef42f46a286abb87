//! The process's own memory, as Linux reports it: what runs and benchmarks print per process
//! (and per rank of a data-parallel job).

/// The peak resident memory of this process (Linux's high-water mark `VmHWM`), in MiB; `None`
/// off Linux.
pub fn peak_resident_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}
